"""Compressed runs through the CLI: the summary's ledger per stage, eval reproducing the compressed model's
metrics, predict using it, distillation from a teacher run, and bad input failing before any training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, assert_clear_error, preflight_error, run_cli

ONE_EPOCH = ["trainer.max_epochs=1", *FAST[1:]]


@pytest.fixture(scope="module")
def chained_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("chain")
    result = run_cli(
        *ONE_EPOCH, "compression=[prune,prune_structured,quantize_static]", "compression.prune.epochs=1",
        "compression.prune_structured.epochs=1", "compression.quantize_static.calibration_batches=4",
        "cost.compile=false", cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("teacher")
    result = run_cli(*ONE_EPOCH, "model.widths=[16,32]", "task_name=teacher", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_each_stage_is_in_the_ledger_and_the_final_model_is_the_compressed_one(chained_run):
    summary = json.loads((chained_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["compression"]["stages"] == ["prune", "prune_structured", "quantize_static"]
    cost, metrics = summary["cost"], summary["metrics"]
    assert list(cost["after"]) == list(metrics["after"]) == ["prune", "prune_structured", "quantize_static"]
    for ledger in [cost["baseline"], *cost["after"].values()]:
        for key in ("latency_ms_p50", "latency_ms_p50_eager", "throughput_samples_per_s", "size_bytes"):
            assert ledger[key] > 0, key
        assert "compile_s" not in ledger  # cost.compile=false: eager timings only (compiled ones: test_compression)
    after = metrics["after"]
    assert after["prune"]["facts"]["sparsity"] == 0.5
    assert cost["after"]["prune"]["nonzero_params"] < 0.55 * cost["after"]["prune"]["params"]
    assert cost["after"]["prune"]["sparse_size_bytes"] < cost["after"]["prune"]["size_bytes"]
    assert cost["after"]["prune_structured"]["params"] < cost["baseline"]["params"] / 2  # channels removed
    assert after["quantize_static"]["facts"]["int8_ops"]["int8_tensors"] > 0
    assert all("acc_delta_pt" in stage for stage in after.values())
    # The final figures are the compressed model's, and its artifact is what the size counts.
    assert metrics["test/acc"] == pytest.approx(after["quantize_static"]["test/acc"])
    assert cost["size_bytes"] == (chained_run / "compressed" / "model.pt2").stat().st_size
    assert cost["size_bytes"] < cost["baseline"]["size_bytes"]
    assert cost["weights_bytes"] < cost["baseline"]["weights_bytes"] / 10  # a quarter of the weights, in int8
    assert summary["compression"]["improvement"]["size"] > 1


@pytest.mark.slow
def test_eval_reproduces_the_compressed_metrics_and_predict_uses_them(chained_run, tmp_path):
    result = run_cli(f"run_dir={chained_run}", cwd=tmp_path, script="trimlab-eval")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((chained_run / "eval.json").read_text())
    assert evaluation["reproduces"] is True and evaluation["max_abs_diff"] == 0.0
    assert evaluation["checkpoint"].endswith("compressed/model.pt2")
    # The trained model is still there, and reproduces the test metrics it had before compression.
    result = run_cli(f"run_dir={chained_run}", "ckpt=best", cwd=tmp_path, script="trimlab-eval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((chained_run / "eval.json").read_text())["reproduces"] is True
    images = np.random.default_rng(0).uniform(0, 16, (3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "digits.npy", images)
    result = run_cli(
        f"run_dir={chained_run}", f"inputs={tmp_path / 'digits.npy'}", cwd=tmp_path, script="trimlab-predict"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (chained_run / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("input,class_index")


@pytest.mark.slow
def test_distillation_from_a_teacher_run(teacher_run, tmp_path):
    result = run_cli(
        *ONE_EPOCH, "model.widths=[4,8]", "compression=[distill]", f"compression.distill.teacher={teacher_run}",
        f"paths.cache_dir={tmp_path / 'cache'}", "cost.compile=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["compression"]["baseline"] == "teacher"
    teacher = json.loads((teacher_run / "summary.json").read_text())
    assert summary["cost"]["baseline"]["params"] == teacher["cost"]["params"] > summary["cost"]["params"]
    assert summary["metrics"]["after"]["distill"]["facts"]["teacher"] == str(teacher_run)
    assert len(list((tmp_path / "cache" / "teacher_logits").glob("*.pt"))) == 1  # one pass of the teacher, cached
    # The student's checkpoint holds the student only.
    state = torch.load(run_dir / summary["checkpoint"], weights_only=True)["state_dict"]
    assert state["backbone.features.0.0.weight"].shape[0] == 4
    assert sum(v.numel() for v in state.values() if v.is_floating_point()) < teacher["cost"]["params"] / 3


def test_a_fast_dev_run_without_a_teacher_distills_from_an_untrained_copy(tmp_path):
    """The smoke test of every preset (`-m 'experiment=glob(*)' ++trainer.fast_dev_run=true`) needs no teacher run;
    the same command without fast_dev_run is refused (test_bad_compression_config_fails_before_any_run_dir)."""
    result = run_cli("compression=[distill]", "++trainer.fast_dev_run=true", "cost.compile=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((Path(result.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["metrics"]["after"]["distill"]["facts"]["teacher"] == "untrained copy (fast_dev_run)"
    assert [note.split(":")[0] for note in summary["stand_ins"]] == ["fast_dev_run without compression.distill.teacher"]
    assert "WARNING] - fast_dev_run without compression.distill.teacher" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_teacher_with_other_classes_is_refused_before_training(teacher_run, tmp_path):
    other = tmp_path / "other_teacher"
    shutil.copytree(teacher_run, other)
    summary = json.loads((other / "summary.json").read_text())
    summary["data"]["class_names"] = ["a", "b", "c"]
    (other / "summary.json").write_text(json.dumps(summary))
    result = run_cli(*ONE_EPOCH, "compression=[distill]", f"compression.distill.teacher={other}", cwd=tmp_path)
    assert_clear_error(result, "predicts 3 classes, this data has 10")
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["compression=[prune,quantize_static,prune]"], ["prune is listed twice"]),
        (["compression=[prune,squeeze]"], ["unknown option 'squeeze'", "prune_structured", "quantize_dynamic"]),
        (
            ["compression=[prune]", "compression.prune.sparsity=1.0"],
            ["compression.prune.sparsity=1.0 is outside [0, 1)"],
        ),
        (["compression=[distill]", "compression.distill.teacher=/nonexistent/run"], ["no finished run there"]),
        (["compression=[distill]"], ["compression.distill.teacher=None: no finished run there"]),
        (["compression=[prune_structured]", "compression.prune_structured.channel_ratio=-0.5"], ["outside [0, 1)"]),
        (["compression=[quantize_static,prune]"], ["quantize_static turns the model into an exported", "last"]),
        (["compression=[prune,distill]"], ["distill trains the model, list it first"]),
        (["compression=[prune]", "strategy=ddp", "trainer.devices=2"], ["compression runs in one process"]),
    ],
)
def test_bad_compression_config_fails_before_any_run_dir(overrides, fragments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = preflight_error(capsys, *ONE_EPOCH, *overrides)
    assert all(fragment in line for fragment in fragments), line
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_ratio_that_empties_a_layer_fails_before_training(tmp_path):
    result = run_cli(*ONE_EPOCH, "model.widths=[2,4]", "compression=[prune_structured]",
                     "compression.prune_structured.channel_ratio=0.6", cwd=tmp_path)  # fmt: skip
    assert_clear_error(result, "would remove every channel of Conv2d (2 channels)")
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))


@pytest.mark.slow
def test_quantizing_a_model_that_cannot_be_exported_names_the_module(tmp_path):
    (tmp_path / "odd_models.py").write_text(
        "import torch\n"
        "class DataDependent(torch.nn.Module):\n"
        "    def __init__(self, input_shape, num_classes):\n"
        "        super().__init__()\n"
        "        self.head = torch.nn.Linear(64, num_classes)\n"
        "    def forward(self, x):\n"
        "        x = x.flatten(1)\n"
        "        if x.sum() > 0:\n"
        "            return self.head(x)\n"
        "        return -self.head(x)\n"
    )
    result = run_cli(*ONE_EPOCH, "~model", "+model._target_=odd_models.DataDependent", "compression=[quantize_static]",
                     cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})  # fmt: skip
    assert_clear_error(result, "cannot export DataDependent", "odd_models.forward")
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))
