"""A run stopped by a signal: SIGKILL leaves `running` and resumes bit-equal; SIGTERM and SIGINT are recorded
`interrupted`, exit 143/130 with one line naming the resume command, and resume to the uninterrupted metrics with
the CSV rows already logged kept."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, FAST, cli_env, run_cli

HEADLINE = ["test/acc", "test/precision_macro", "test/recall_macro", "test/f1_macro", "test/auroc_macro", "test/loss"]
ARGS = [*FAST, "trainer.max_epochs=3", "data.batch_size=16", "callbacks.early_stopping=null"]
# The logger does not change the numbers; W&B's own lines on stderr would hide the one-line check.
WITH_WANDB = "logger=[csv,wandb]"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("whole")
    whole = run_cli(*ARGS, WITH_WANDB, cwd=cwd)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run_dir = Path(whole.stdout.strip().splitlines()[-1])
    return {"summary": json.loads((run_dir / "summary.json").read_text()), "csv": epoch_rows(run_dir)}


def epoch_rows(run_dir: Path) -> list[dict]:
    """The per-epoch validation rows of metrics.csv (what a resume must neither lose nor repeat)."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [{k: row[k] for k in ("epoch", "step", "val/acc", "val/loss")} for row in csv.DictReader(handle)
                if row.get("val/acc")]  # fmt: skip


def signal_after_first_checkpoint(cwd: Path, run_dir: Path, signum: int, *extra: str) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        [str(BIN / "trimlab-train"), *ARGS, *extra, f"hydra.run.dir={run_dir}"],
        cwd=cwd, env=cli_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not (run_dir / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch; epochs take seconds
    assert process.poll() is None, "training ended before the signal"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_resumes_to_the_uninterrupted_run(cwd: Path, run_dir: Path, uninterrupted: dict) -> dict:
    resumed = run_cli("ckpt_path=last", f"hydra.run.dir={run_dir}", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in HEADLINE:
        assert summary["metrics"][key] == uninterrupted["summary"]["metrics"][key], key
    assert summary["cost"]["train_samples"] == uninterrupted["summary"]["cost"]["train_samples"]
    assert epoch_rows(run_dir) == uninterrupted["csv"]  # every epoch once, as logged before and after the stop
    return summary


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    killed = signal_after_first_checkpoint(tmp_path, run_dir, signal.SIGKILL, WITH_WANDB)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    summary = assert_resumes_to_the_uninterrupted_run(tmp_path, run_dir, uninterrupted)
    assert summary["run_id"] == run_id
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))  # killed, then resumed: the same W&B run id
    assert len(wandb_runs) == 2 and all(d.name.endswith(f"-{run_id}") for d in wandb_runs)


def test_sigterm_is_recorded_interrupted_and_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    stopped = signal_after_first_checkpoint(tmp_path, run_dir, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1, stopped.stderr[-3000:]
    assert lines[0].startswith("trimlab: error: interrupted by SIGTERM at epoch ")
    assert lines[0].endswith(f"; resume with ckpt_path=last hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert_resumes_to_the_uninterrupted_run(tmp_path, run_dir, uninterrupted)


def test_sigint_exits_130_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    stopped = signal_after_first_checkpoint(tmp_path, run_dir, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trimlab: error: interrupted by SIGINT at epoch "), lines
    assert "Detected KeyboardInterrupt" not in stopped.stdout + stopped.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
