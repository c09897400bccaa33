"""Same seed, same numbers: twice in a row, and after a SIGKILL and a resume."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, FAST, cli_env, compose_train, run_cli
from trimlab.pipeline import train

HEADLINE = ["test/acc", "test/precision_macro", "test/recall_macro", "test/f1_macro", "test/auroc_macro", "test/loss"]


def test_same_command_twice_gives_identical_metrics(tmp_path):
    results = []
    for attempt in ("a", "b"):
        cfg = compose_train("logger=csv", "callbacks.progress_bar=null", output_dir=tmp_path / attempt)
        results.append(train(cfg, tmp_path / attempt, f"run{attempt}0000"))
    first, second = (r["metrics"] for r in results)
    assert {k: first[k] for k in HEADLINE} == {k: second[k] for k in HEADLINE}
    assert results[0]["env"]["data_fingerprint"] == results[1]["env"]["data_fingerprint"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    args = [*FAST, "trainer.max_epochs=5", "data.batch_size=8", "callbacks.early_stopping=null", "logger=wandb"]
    env = cli_env(tmp_path)
    process = subprocess.Popen(
        [str(BIN / "trimlab-train"), *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if list((tmp_path / "outputs").glob("train/*/checkpoints/last.ckpt")):
            time.sleep(0.3)  # let the first write finish; epochs take seconds
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_dir = next((tmp_path / "outputs").glob("train/*"))
    assert json.loads((killed_dir / "summary.json").read_text())["status"] == "running"

    resumed = run_cli("ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert Path(resumed.stdout.strip().splitlines()[-1]) == killed_dir.absolute()
    resumed_summary = json.loads((killed_dir / "summary.json").read_text())
    assert resumed_summary["status"] == "completed"
    assert resumed_summary["run_id"] == killed_dir.name[-8:]
    wandb_runs = sorted((killed_dir / "wandb").glob("offline-run-*"))  # killed, then resumed: the same W&B run id
    assert len(wandb_runs) == 2 and all(d.name.endswith(f"-{resumed_summary['run_id']}") for d in wandb_runs)

    whole = run_cli(*args, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    whole_summary = json.loads((Path(whole.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    for key in HEADLINE:
        assert resumed_summary["metrics"][key] == whole_summary["metrics"][key], key
    assert resumed_summary["cost"]["train_samples"] == whole_summary["cost"]["train_samples"]


def test_monitoring_a_score_keeps_the_highest(tmp_path):
    cfg = compose_train(
        "task.monitor=val/f1_macro", "task.monitor_mode=max", "callbacks.progress_bar=null", output_dir=tmp_path
    )
    summary = train(cfg, tmp_path, "f1000000")
    assert summary["status"] == "completed" and summary["checkpoint"] == "checkpoints/best.ckpt"


def test_checkpoint_record_is_relative_inside_the_run_dir(tmp_path):
    from trimlab.pipeline import checkpoint_record

    assert checkpoint_record(str(tmp_path / "run" / "checkpoints" / "best.ckpt"), tmp_path / "run") == (
        "checkpoints/best.ckpt"
    )
    assert checkpoint_record("/elsewhere/x.ckpt", tmp_path / "run") == "/elsewhere/x.ckpt"
    assert checkpoint_record(None, tmp_path) is None
