"""The same metric and cost keys reach every logger; W&B goes offline at once without an API key."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from conftest import FAST, compose_train, run_cli
from trimlab.errors import TrimlabError
from trimlab.pipeline import train


@pytest.mark.slow
def test_many_loggers_receive_the_summary_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "unset-after-test")  # restored on teardown, whatever the run sets
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no key anywhere
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    cfg = compose_train("logger=many", "trainer.max_epochs=1", "callbacks.progress_bar=null", output_dir=run_dir)
    summary = train(cfg, run_dir, "abcd1234")
    assert os.environ["WANDB_MODE"] == "offline"
    expected = {"test/acc", "test/f1_macro", "cost/params", "cost/latency_ms_p50", "cost/price_usd"}

    with (run_dir / "csv" / "metrics.csv").open() as handle:
        assert expected <= set(csv.DictReader(handle).fieldnames)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert expected <= set(events.Tags()["scalars"])

    offline_runs = list((run_dir / "wandb").glob("offline-run-*-abcd1234"))
    assert len(offline_runs) == 1  # the run id is the W&B id
    assert list(offline_runs[0].glob("*.wandb"))
    records = next(offline_runs[0].glob("*.wandb")).read_bytes()  # offline: the history records, unsynced
    assert all(key.encode() in records for key in expected)

    metric_dirs = list((run_dir / "mlruns").glob("*/*/metrics"))
    assert len(metric_dirs) == 1
    assert {"test/acc", "cost/params"} <= {
        str(p.relative_to(metric_dirs[0])) for p in metric_dirs[0].rglob("*") if p.is_file()
    }
    assert summary["status"] == "completed"


@pytest.mark.slow
def test_mlflow_and_many_run_through_the_command(tmp_path):
    """The checks before a run read `logger.mlflow.tracking_uri`, whose default names the run dir, a value Hydra
    sets only when the job starts; in-process runs set paths.output_dir themselves and never saw it fail."""
    limits = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=2"]
    result = run_cli("-m", "logger=mlflow,many", *FAST, "trainer.max_epochs=1", *limits, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = json.loads(next((tmp_path / "outputs").rglob("sweep_summary.json")).read_text())
    assert [(row["overrides"].split()[0], row["status"]) for row in sweep["rows"]] == [
        ("logger=mlflow", "completed"),
        ("logger=many", "completed"),
    ]
    mlflow_dir, many_dir = (Path(row["run_dir"]) for row in sweep["rows"])
    for run_dir in (mlflow_dir, many_dir):  # a file store in each run's own dir
        assert list((run_dir / "mlruns").glob("*/*/metrics/test/acc")), run_dir
    assert (many_dir / "csv" / "metrics.csv").is_file() and list((many_dir / "wandb").glob("offline-run-*"))
    assert list((many_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not (mlflow_dir / "csv").exists()  # logger=mlflow alone


def test_secrets_never_reach_the_saved_config(tmp_path):
    from trimlab.redaction import redact

    config = {"logger": {"wandb": {"api_key": "sk-123", "project": "p"}}, "token": "t", "empty_token": None}
    clean = redact(config)
    assert clean["logger"]["wandb"] == {"api_key": "***", "project": "p"}
    assert clean["token"] == "***" and clean["empty_token"] is None
    assert "sk-123" not in str(clean)


def test_wandb_key_detection(tmp_path, monkeypatch):
    from trimlab.loggers import wandb_key_configured

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert not wandb_key_configured()
    Path(tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    assert wandb_key_configured()


@pytest.mark.slow
def test_api_key_never_lands_in_the_run_dir(tmp_path, monkeypatch):
    secret = "sk-test-0123456789abcdef-not-real"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    cfg = compose_train("logger=wandb", "trainer.max_epochs=1", "callbacks.progress_bar=null", output_dir=run_dir)
    assert train(cfg, run_dir, "key00000")["status"] == "completed"
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []


def test_a_wandb_run_id_still_held_by_a_killed_process_is_waited_for(monkeypatch):
    from trimlab import loggers

    monkeypatch.setattr(loggers.time, "sleep", lambda s: None)

    class Logger:
        version, calls = "abcd1234", 0

        @property
        def experiment(self):
            self.calls += 1
            if self.calls < 3:
                raise RuntimeError("run ID abcd1234 is in use")
            return "run"

    held = Logger()
    loggers.start_wandb(held)
    assert held.calls == 3
    with pytest.raises(TrimlabError, match="W&B run id abcd1234 is still held"):
        loggers.start_wandb(Logger(), wait_s=1)  # still held after the wait: a clear error, not a hang
