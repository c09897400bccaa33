"""Tracking for real: a local `mlflow server` receives params, metrics, cost and plots, and trimlab-compare reads
them back; an offline W&B run holds what wandb's own reader (`wandb leet inspect`) and `wandb sync` accept."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from types import SimpleNamespace

import pytest

from conftest import BIN, assert_clear_error, compose_train, run_cli
from trimlab import compare, rundir
from trimlab.pipeline import train


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on loopback with a sqlite backend, stopped (its whole process group) after the module."""
    if not (BIN / "mlflow").exists():
        pytest.skip("the full mlflow package (the dev extra) is not installed: no `mlflow server`")
    root, port = tmp_path_factory.mktemp("mlflow"), free_port()
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
        else:
            pytest.fail("mlflow server did not answer within 60 s:\n" + (root / "server.log").read_text()[-3000:])
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_a_run_reaches_a_real_mlflow_server_and_compare_reads_it_back(tmp_path, mlflow_server, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    cfg = compose_train(
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={mlflow_server}",
        "task_name=served",
        "trainer.max_epochs=1",
        output_dir=run_dir,
    )
    long = "+note=" + "x" * 300  # past MLflow params' 250 characters: overrides travel as a tag
    summary = train(cfg, run_dir, "mlf00001", overrides=["trainer.max_epochs=1", long])
    assert summary["status"] == "completed"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "mlf00001" and run.info.status == "FINISHED"
    assert run.data.params["task_name"] == "served"  # the resolved config, as params
    assert run.data.params["model/_target_"] == "trimlab.models.vision.SmallCNN"
    assert run.data.tags["overrides"] == f"trainer.max_epochs=1 {long}"
    assert run.data.metrics["test/acc"] == pytest.approx(summary["metrics"]["test/acc"])
    assert run.data.metrics["cost/latency_ms_p50"] == pytest.approx(summary["cost"]["latency_ms_p50"])
    assert {"confusion_matrix.png", "roc.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    compare.main(["--mlflow", mlflow_server, "served", "--csv", "runs.csv", "--pareto", "test/acc:size_bytes"])
    assert "mlf00001" in capsys.readouterr().out
    (row,) = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert row["status"] == "completed" and row["run_dir"].endswith(run.info.run_id)
    assert row["overrides"] == f"trainer.max_epochs=1 {long}"
    assert float(row["test/acc"]) == pytest.approx(summary["metrics"]["test/acc"])
    assert float(row["size_bytes"]) == summary["cost"]["size_bytes"]
    assert (tmp_path / "pareto.png").stat().st_size > 0

    with pytest.raises(SystemExit):
        compare.main(["--mlflow", mlflow_server, "no-such-experiment"])
    assert "has no experiment 'no-such-experiment'; it has: " in capsys.readouterr().err


@pytest.mark.slow
def test_an_unreachable_mlflow_uri_is_one_clear_error(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli("logger=mlflow", f"logger.mlflow.tracking_uri={uri}", cwd=tmp_path)
    assert_clear_error(result, f"logger.mlflow.tracking_uri={uri}: no MLflow server answers there")
    assert not (tmp_path / "outputs").exists()  # refused before any run dir

    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--mlflow", uri, "train"])
    assert exit_info.value.code != 0
    assert f"--mlflow={uri}: no MLflow server answers there" in capsys.readouterr().err


@pytest.mark.slow
def test_an_offline_wandb_run_reads_back_with_wandbs_own_reader(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "sk-not-real-0123456789")
    run_dir = tmp_path / "run"
    cfg = compose_train("logger=wandb", "trainer.max_epochs=1", output_dir=run_dir)
    rundir.set_sweep_name("mysweep")  # as a sweep job: the W&B group is the sweep's name
    try:
        summary = train(cfg, run_dir, "wb000001")
    finally:
        rundir.set_sweep_name(None)
    (offline,) = (run_dir / "wandb").glob("offline-run-*-wb000001")

    def inspect(*flags: str) -> str:
        result = subprocess.run([str(BIN / "wandb"), "leet", "inspect", *flags, str(offline)],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    recorded = json.loads(inspect("--summary", "--json"))
    assert recorded["state"] == "finished" and recorded["run_id"] == "wb000001"
    assert recorded["config"]["task_name"] == summary["task_name"]
    assert recorded["config"]["model"]["_target_"] == "trimlab.models.vision.SmallCNN"
    assert recorded["summary"]["test/acc"] == pytest.approx(summary["metrics"]["test/acc"])
    assert recorded["summary"]["cost/size_bytes"] == summary["cost"]["size_bytes"]
    assert recorded["summary"]["confusion_matrix"]["_type"] == "images/separated"
    (run_record,) = [r["run"] for r in map(json.loads, inspect("--json").splitlines()) if r["type"] == "run"]
    assert run_record["run_group"] == "mysweep" and run_record["job_type"] == "train"
    assert summary["task_name"] in run_record["tags"]
    assert "sk-not-real" not in inspect("--json")

    synced = subprocess.run([str(BIN / "wandb"), "sync", "--dry-run", str(offline)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert synced.returncode == 0 and "Would sync 1 run" in synced.stdout + synced.stderr


def test_wandb_rows_match_local_rows():
    run = SimpleNamespace(
        name="mnist-1", id="abc", state="finished", group="sweep1",
        config={"task_name": "mnist", "overrides": "model=cnn"},
        summary_metrics={"test/acc": 0.98, "cost/latency_ms_p50": 0.4, "cost/after/prune/size_bytes": 9,
                         "train/loss": 0.1, "confusion_matrix": {"_type": "images/separated"}},
    )  # fmt: skip
    from trimlab.remote_runs import wandb_row

    row = wandb_row(run, "team/proj")
    assert row == {"run": "mnist-1", "task": "mnist", "status": "completed", "overrides": "model=cnn",
                   "test/acc": 0.98, "latency_ms_p50": 0.4, "run_dir": "wandb:team/proj/abc"}  # fmt: skip


def test_reading_wandb_without_a_key_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--wandb", "team/proj"])
    assert exit_info.value.code != 0
    assert "needs an API key: set WANDB_API_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--wandb", "just-a-project"])
    assert "give ENTITY/PROJECT" in capsys.readouterr().err


def test_any_http_answer_counts_as_a_server():
    """An auth proxy's 401 or a host without /health still answers: only silence is refused."""
    import http.server
    import threading

    from trimlab.errors import ConfigError
    from trimlab.loggers import check_mlflow_server

    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook's name
            self.send_error(401)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_mlflow_server(f"http://127.0.0.1:{server.server_port}")  # no error
    finally:
        server.shutdown()
    with pytest.raises(ConfigError, match="no MLflow server answers there"):
        check_mlflow_server(f"http://127.0.0.1:{free_port()}")
