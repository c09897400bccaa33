"""Secrets never reach a run's files: secret-looking overrides are refused before anything is written, and a key
in the environment appears in no file of a run or sweep dir, whatever the logger."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_clear_error, run_cli
from trimlab.launch import preflight
from trimlab.redaction import is_secret_key

PLANTED = "planted-secret-4f1c9e2a7b"
TINY = ["trainer.max_epochs=1", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false", "cost.latency_warmup=1", "cost.latency_repeats=2",
        "cost.throughput_repeats=1", "cost.compile=false"]  # fmt: skip


@pytest.mark.parametrize(
    "key, secret",
    [("+wandb_api_key", True), ("logger.wandb.api_key", True), ("+HF_TOKEN", True), ("+apiKey", True),
     ("+db.password", True), ("+aws_credentials", True), ("+client_secret", True), ("+passwd", True),
     ("data.tokenizer", False), ("data.token_dropout", False), ("data.tokenizer_path", False),
     ("task.monitor", False), ("+monkey", False)],
)  # fmt: skip
def test_which_keys_look_secret(key, secret):
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(
    "override, variable",
    [("+wandb_api_key=x", "WANDB_API_KEY"), ("logger.mlflow.password=x", "MLFLOW_TRACKING_PASSWORD"),
     ("+hf_token=x", "HF_TOKEN"), ("+my_service_token=x", "MY_SERVICE_TOKEN")],
)  # fmt: skip
def test_secret_override_is_refused_naming_the_variable(capsys, override, variable):
    with pytest.raises(SystemExit) as exit_info:
        preflight([override])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "looks like a secret, and overrides are saved in plain text in the run dir" in line
    assert f"export {variable}=..." in line and "=x" not in line


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.slow
def test_secrets_reach_no_file_of_runs_and_sweeps(tmp_path):
    env = {"WANDB_API_KEY": PLANTED, "MLFLOW_TRACKING_TOKEN": PLANTED}
    refused = run_cli(f"+wandb_api_key={PLANTED}", "logger=wandb", *TINY, cwd=tmp_path, env=env)
    assert_clear_error(refused, "looks like a secret")
    assert PLANTED not in refused.stderr and not (tmp_path / "outputs").exists()

    sweep = run_cli("-m", "logger=many,[csv,wandb]", "seed=1", *TINY, cwd=tmp_path, env=env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    outputs = tmp_path / "outputs"
    assert len(list(outputs.rglob("summary.json"))) == 2
    assert {p.name for p in outputs.rglob("*") if p.is_dir()} >= {"wandb", "mlruns", "tensorboard", "csv"}
    assert files_holding(outputs, PLANTED) == []
    assert PLANTED not in sweep.stdout + sweep.stderr
