"""Whole runs through the CLI on digits (tiny, seconds each): run dir, summary, eval, predict, sweeps."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, assert_clear_error, run_cli

pytestmark = pytest.mark.slow
COST_KEYS = {
    "params",
    "trainable_params",
    "size_bytes",
    "train_time_s",
    "train_samples_per_s",
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput_samples_per_s",
    "peak_mem_mb",
    "price_usd",
}
METRIC_KEYS = {"test/acc", "test/precision_macro", "test/recall_macro", "test/f1_macro", "test/auroc_macro"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, object]:
    cwd = tmp_path_factory.mktemp("single")
    result = run_cli(*FAST, "cost.price_per_hour=3.6", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    return run_dir, result


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory) -> list[Path]:
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_cli("-m", "model=cnn,resnet", "trainer.max_epochs=1", *FAST[1:], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted(p.parent for p in (cwd / "outputs").rglob("summary.json"))


def test_a_plain_run_records_the_golden_key_set(digits_run):
    """The key set test_schema holds (a compressed run's is there): this module's run is the plain one."""
    from test_schema import COST, ENV, METRICS, TOP, assert_declared, key_sets

    summary = json.loads((digits_run[0] / "summary.json").read_text())
    assert key_sets(summary) == {"top": TOP, "metrics": METRICS, "cost": COST, "env": ENV}
    assert_declared(summary)
    assert summary["env"]["cpu"] and summary["env"]["cpu_capability"]


def test_run_dir_layout_and_last_line(digits_run):
    run_dir, _ = digits_run
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_[0-9a-f]{8}", run_dir.name)
    assert run_dir.parent.name == "train"
    for relative in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
        "train.log",
        "confusion_matrix.png",
        "roc.png",
    ):
        assert (run_dir / relative).is_file(), relative
    assert not list(run_dir.glob(".*.tmp"))


def test_summary_has_metrics_cost_and_env(digits_run):
    run_dir, _ = digits_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["run_id"] == run_dir.name[-8:]
    assert summary["run_dir"] == str(run_dir)
    assert set(summary["metrics"]) >= METRIC_KEYS
    assert all(0.0 <= summary["metrics"][k] <= 1.0 for k in METRIC_KEYS)
    assert summary["metrics"]["test/acc"] > 0.5  # two epochs on digits: far above chance (0.1)
    # The whole fit's cost, even when the tested (best) checkpoint is from an earlier epoch.
    assert summary["cost"]["train_samples"] == 2 * 1257
    for key in ("acc", "f1_macro", "auroc_macro"):  # torchmetrics and scikit-learn on the same predictions
        assert summary["metrics"][f"test/{key}"] == pytest.approx(summary["metrics"]["sklearn"][key], abs=1e-6)
    assert "macro avg" in summary["metrics"]["per_class"]
    cost = summary["cost"]
    assert set(cost) >= COST_KEYS
    assert cost["params"] == cost["trainable_params"] > 1000
    assert cost["latency_ms_p95"] >= cost["latency_ms_p50"] > 0
    assert cost["price_usd"] == pytest.approx(cost["train_time_s"] / 3600 * 3.6, rel=1e-3)
    env = summary["env"]
    assert {
        "python",
        "torch",
        "lightning",
        "hydra",
        "trimlab",
        "git_commit",
        "data_fingerprint",
        "device",
        "threads",
        "seed",
    } <= set(env)
    assert summary["overrides"] and summary["config"]["cost"]["price_per_hour"] == 3.6


def test_table_printed_before_the_run_dir(digits_run):
    run_dir, result = digits_run
    lines = result.stdout.strip().splitlines()
    table = next(i for i, line in enumerate(lines) if "test/acc" in line)
    assert any("latency_ms_p50" in line for line in lines[table:])
    assert lines[-1] == str(run_dir) and table < len(lines) - 1


def test_eval_reproduces_the_summary(digits_run):
    run_dir, _ = digits_run
    result = run_cli(f"run_dir={run_dir}", cwd=run_dir.parent, script="trimlab-eval")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in METRIC_KEYS:
        assert evaluation["metrics"][key] == summary["metrics"][key], key
    assert evaluation["reproduces"] is True
    assert result.stdout.strip().splitlines()[-1] == str(run_dir / "eval.json")
    assert summary["checkpoint"] == "checkpoints/best.ckpt"  # relative: the run dir can move


def test_eval_of_a_moved_run_dir(digits_run, tmp_path):
    import shutil

    run_dir, _ = digits_run
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    result = run_cli(f"run_dir={moved}", "ckpt=last", cwd=tmp_path, script="trimlab-eval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((moved / "eval.json").read_text())["checkpoint"] == str(moved / "checkpoints" / "last.ckpt")


def test_predict_npy_and_images(digits_run, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    run_dir, _ = digits_run
    digits = load_digits()
    np.save(tmp_path / "five.npy", (digits.images[:5] / 16.0).astype(np.float32))
    result = run_cli(
        f"run_dir={run_dir}",
        f"inputs={tmp_path / 'five.npy'}",
        f"output={tmp_path / 'p.csv'}",
        cwd=tmp_path,
        script="trimlab-predict",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["input"] for r in rows] == [f"five.npy[{i}]" for i in range(5)]
    assert all(0.0 < float(r["probability"]) <= 1.0 for r in rows)
    assert sum(int(r["class_index"]) == t for r, t in zip(rows, digits.target[:5], strict=True)) >= 3

    folder = tmp_path / "pngs"
    folder.mkdir()
    for index in range(3):
        Image.fromarray((digits.images[index] * 15).astype(np.uint8)).resize((32, 32)).save(folder / f"{index}.png")
    result = run_cli(f"run_dir={run_dir}", f"inputs={folder}", cwd=tmp_path, script="trimlab-predict")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    assert [Path(r["input"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    assert sum(int(r["class_index"]) == t for r, t in zip(rows, digits.target[:3], strict=True)) >= 2


def test_sweep_gives_one_completed_run_per_job(sweep_runs):
    assert len(sweep_runs) == 2
    models = set()
    for run_dir in sweep_runs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed"
        models.add(summary["config"]["model"]["_target_"].rsplit(".", 1)[1])
        assert summary["run_id"] in run_dir.name
    assert models == {"SmallCNN", "ResNet"}
    assert len({json.loads((d / "summary.json").read_text())["run_id"] for d in sweep_runs}) == 2


def test_checkpoint_of_another_model_is_refused(sweep_runs):
    cnn, resnet = sorted(sweep_runs, key=lambda d: "ResNet" in (d / ".hydra" / "config.yaml").read_text())
    other = resnet / "checkpoints" / "best.ckpt"
    result = run_cli(f"run_dir={cnn}", f"ckpt={other}", cwd=cnn, script="trimlab-eval")
    assert_clear_error(result, "does not match the model", "backbone.")


def test_resume_with_a_checkpoint_of_another_model(sweep_runs, tmp_path):
    cnn, resnet = sorted(sweep_runs, key=lambda d: "ResNet" in (d / ".hydra" / "config.yaml").read_text())
    before = {name: (resnet / name).read_bytes() for name in ("summary.json", ".hydra/config.yaml")}
    result = run_cli(f"ckpt_path={resnet / 'checkpoints' / 'last.ckpt'}", "model=cnn", cwd=tmp_path)
    assert_clear_error(result, "does not match the model")
    assert {name: (resnet / name).read_bytes() for name in before} == before


def test_corrupt_checkpoint_is_refused(sweep_runs, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((sweep_runs[0] / "checkpoints" / "best.ckpt").read_bytes()[:500])
    result = run_cli(f"run_dir={sweep_runs[0]}", f"ckpt={broken}", cwd=tmp_path, script="trimlab-eval")
    assert_clear_error(result, "broken.ckpt", "cannot be read")


def test_cost_covers_the_whole_fit_when_an_earlier_epoch_is_tested(tmp_path):
    # mode=max on val/loss keeps the worst epoch, the first: testing it must not rewind the run's clock.
    result = run_cli(*FAST, "task.monitor_mode=max", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((Path(result.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    assert summary["cost"]["train_samples"] == 2 * 1257
    assert summary["cost"]["train_time_s"] >= summary["cost"]["time_to_target_s"]


def test_the_plain_pytorch_reference_trains_the_same_model(digits_run, tmp_path):
    """make bench-train times trimlab against experiments/training/plain.py: a hand-written loop over the same
    data, model, optimizer and schedule. It is a fair reference only while both train the identical model."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "experiments" / "training" / "plain.py"
    spec = importlib.util.spec_from_file_location("plain_reference", script)
    plain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain)
    result = plain.fit(plain.compose_cfg(FAST, str(tmp_path)), "val/acc:0.5")
    summary = json.loads((digits_run[0] / "summary.json").read_text())
    assert [acc for _, acc in result["val_curve"]] == [acc for _, acc in summary["cost"]["val_curve"]]
    assert result["test_acc"] == pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)
    assert result["time_to_target_s"] == result["val_curve"][0][0] and len(result["val_curve"]) == 2
