"""docs/extending.md, "Add a cost figure", followed from outside the package: a user module on PYTHONPATH, a
config dir added with hydra.searchpath, a run through trimlab-train; nothing under src/trimlab is edited."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import FAST, run_cli

pytestmark = pytest.mark.slow
MODULE = """
import time

import torch

from trimlab.batches import forward, take


@torch.inference_mode()
def latency_ms_max(model, inputs) -> float:
    one = take(inputs, 1)
    forward(model, one)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        forward(model, one)
        times.append(time.perf_counter() - start)
    return round(max(times) * 1e3, 4)


def weight_norm(model, inputs) -> float:
    return float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in model.parameters())))
"""
CONFIG = """# @package _global_
cost:
  figures:
    - _target_: trimlab.schema.Figure
      name: latency_ms_max
      unit: ms
      better: lower
      phase: serving
      carried: false
      report: true
      compared: true
      measure: mycost.latency_ms_max
    - _target_: trimlab.schema.Figure
      name: weight_norm
      better: none
      phase: training
      report: true
      measure: mycost.weight_norm
"""


def test_a_cost_figure_added_from_outside_the_package(tmp_path):
    from trimlab import compare, sweep

    user = tmp_path / "user"
    (user / "conf" / "experiment").mkdir(parents=True)
    (user / "mycost.py").write_text(MODULE)
    (user / "conf" / "experiment" / "my_costs.yaml").write_text(CONFIG)
    path = os.pathsep.join(p for p in (str(user), os.environ.get("PYTHONPATH")) if p)
    compressed = ["compression=[prune]", "compression.prune.epochs=0", "cost.compile=false"]  # through a stage too
    searchpath = f"hydra.searchpath=[file://{user / 'conf'}]"
    result = run_cli(searchpath, "experiment=my_costs", *FAST, "trainer.max_epochs=1", *compressed,
                     cwd=tmp_path, env={"PYTHONPATH": path})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    cost = json.loads((run_dir / "summary.json").read_text())["cost"]
    assert cost["latency_ms_max"] > 0 and cost["weight_norm"] > 0  # the trained model's, kept by its phase
    assert cost["baseline"]["latency_ms_max"] > 0 and cost["after"]["prune"]["latency_ms_max"] > 0
    assert "weight_norm" not in cost["after"]["prune"]  # a training figure is measured once, on the fit
    assert re.search(r"│ latency_ms_max +│ +[\d.,]+ ms │", result.stdout), result.stdout[-3000:]  # the table
    assert re.search(r"│ weight_norm +│ +[\d.,]+ │", result.stdout)
    compare.main([str(run_dir), "--markdown", str(tmp_path / "runs.md")])  # the terminal table clips headers
    assert "| latency_ms_max |" in (tmp_path / "runs.md").read_text()
    assert "latency_ms_max" in compare.columns(compare.load_runs([run_dir]), console=True)
    assert sweep.job_row(run_dir)["cost.latency_ms_max"] == cost["latency_ms_max"]
