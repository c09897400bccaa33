"""docs/extending.md, "Add a compression stage", followed from outside the package: the stage's class in a user
module on PYTHONPATH, its option file in a user config dir added with `hydra.searchpath`, runs through
`trimlab-train`, and no edit under src/trimlab. What the option file declares drives the checks, as for the
stages trimlab ships."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, assert_clear_error, run_cli

ONE_EPOCH = ["trainer.max_epochs=1", *FAST[1:]]

STAGES_MODULE = '''
import torch
from trimlab.compression.base import Stage


class RoundWeights(Stage):
    """Every weight rounded to `decimals` decimal places: a model that stores in fewer distinct values."""

    def __init__(self, decimals: int = 2) -> None:
        self.decimals = decimals
        self.rounded = 0

    def apply(self, model, context):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.round(decimals=self.decimals))
                self.rounded += 1
        return model

    def facts(self):
        return {"decimals": self.decimals, "rounded_tensors": self.rounded}


class ToGraph(Stage):
    """The model as an exported graph, as the int8 stages return it: no later stage can change it."""

    def apply(self, model, context):
        return torch.export.export(model.eval(), (context.sample,)).module()
'''

OPTION_FILES = {
    "round_weights": """# Weights rounded to a few decimals.
round_weights:
  _target_: my_stages.RoundWeights
  _stage_: {ranges: {decimals: [0, 8]}}
  decimals: 2
""",
    "to_graph": """# The model as an exported graph.
to_graph:
  _target_: my_stages.ToGraph
  _stage_: {exports: true}
""",
}


@pytest.fixture
def user_dir(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The user's module and config dir; the overrides and environment that put them in reach of trimlab-train."""
    (tmp_path / "my_stages.py").write_text(STAGES_MODULE)
    options = tmp_path / "conf" / "compression"
    options.mkdir(parents=True)
    for name, text in OPTION_FILES.items():
        (options / f"{name}.yaml").write_text(text)
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    return [*ONE_EPOCH, searchpath], {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO / "src")])}


@pytest.mark.slow
def test_a_stage_from_outside_the_package_runs_and_is_in_the_ledger(user_dir, tmp_path):
    args, env = user_dir
    result = run_cli(*args, "compression=[prune,round_weights]", "compression.prune.epochs=0",
                     "compression.round_weights.decimals=1", "cost.compile=false", cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["compression"]["stages"] == ["prune", "round_weights"]
    assert summary["compression"]["artifact"]["format"] == "state_dict"  # not declared `exports`
    after, cost = summary["metrics"]["after"], summary["cost"]["after"]
    assert list(after) == list(cost) == ["prune", "round_weights"]
    facts = after["round_weights"]["facts"]
    assert facts["decimals"] == 1 and facts["rounded_tensors"] > 0
    assert "acc_delta_pt" in after["round_weights"] and cost["round_weights"]["precision"] == "32-true"
    weights = torch.load(run_dir / summary["compression"]["artifact"]["path"], weights_only=True)
    rounded = [tensor for key, tensor in weights.items() if key.endswith(("weight", "bias"))]  # its parameters
    assert rounded and all(torch.equal(tensor, tensor.round(decimals=1)) for tensor in rounded)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["compression=[to_graph,prune]"], ["to_graph turns the model into an exported", "last"]),
        (
            ["compression=[round_weights]", "compression.round_weights.decimals=9"],
            ["compression.round_weights.decimals=9 is outside [0, 8)"],
        ),
    ],
    ids=["exporting-stage-not-last", "knob-out-of-range"],
)
def test_what_a_user_stage_declares_is_checked_before_any_run_dir(user_dir, overrides, fragments, tmp_path):
    args, env = user_dir
    result = run_cli(*args, *overrides, cwd=tmp_path, env=env)
    assert_clear_error(result, *fragments)
    assert not (tmp_path / "outputs").exists()
