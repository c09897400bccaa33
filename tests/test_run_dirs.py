"""A finished run is never overwritten: a dir holding a run is refused, another run's checkpoint starts a new run
where the user says, and a full disk leaves the last good checkpoint and a `failed` summary."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import assert_clear_error, compose_train, run_cli
from trimlab import guards
from trimlab.errors import TrimlabError
from trimlab.launch import preflight
from trimlab.pipeline import train

TINY = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "cost.latency_warmup=1",
        "cost.latency_repeats=2", "cost.throughput_repeats=1", "cost.compile=false"]  # fmt: skip


def fake_run(run_dir: Path, status: str) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"run_id": "abcd1234", "status": status}))
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run_dir


@pytest.mark.parametrize("status", ["completed", "interrupted", "running"])
def test_a_dir_holding_a_run_is_refused(capsys, tmp_path, status):
    run_dir = fake_run(tmp_path / "run", status)
    with pytest.raises(SystemExit):
        preflight([f"hydra.run.dir={run_dir}"])
    assert capsys.readouterr().err.strip() == (
        f"trimlab: error: {run_dir} already holds run abcd1234 ({status}); choose another dir, or resume it with "
        "ckpt_path=last"
    )


@pytest.mark.parametrize("rank", ["LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"])
def test_other_ranks_share_the_run_dir_rank_zero_wrote(tmp_path, monkeypatch, rank):
    run_dir = fake_run(tmp_path / "run", "running")
    monkeypatch.setenv(rank, "1")
    assert preflight([f"hydra.run.dir={run_dir}"]) == [f"hydra.run.dir={run_dir}"]


def test_ckpt_last_of_a_completed_run_is_refused(capsys, tmp_path):
    run_dir = fake_run(tmp_path / "run", "completed")
    with pytest.raises(SystemExit):
        preflight(["ckpt_path=last", f"hydra.run.dir={run_dir}"])
    assert "holds a completed run, nothing to resume" in capsys.readouterr().err


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_another_runs_checkpoint_starts_a_new_run_in_the_named_dir(tmp_path):
    source = tmp_path / "source"
    first = run_cli(*TINY, f"hydra.run.dir={source}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = tree_digest(source)
    forked = tmp_path / "forked"
    ckpt = source / "checkpoints" / "last.ckpt"
    second = run_cli(f"ckpt_path={ckpt}", f"hydra.run.dir={forked}", "trainer.max_epochs=3", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert tree_digest(source) == before  # the other run's dir is only read
    summary = json.loads((forked / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] == str(ckpt)
    assert summary["run_id"] != json.loads((source / "summary.json").read_text())["run_id"]
    assert (forked / "checkpoints" / "last.ckpt").is_file() and (forked / "csv" / "metrics.csv").is_file()

    again = run_cli(*TINY, f"hydra.run.dir={forked}", cwd=tmp_path)  # a new run in a dir that holds one
    assert_clear_error(again, f"{forked} already holds run {summary['run_id']} (completed)")
    assert json.loads((forked / "summary.json").read_text()) == summary


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # best and last of epoch 0 are written; epoch 1's first write hits a full disk
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(guards.torch, "save", save_until_the_disk_fills)
    cfg = compose_train("callbacks.progress_bar=null", "callbacks.early_stopping=null", output_dir=tmp_path)
    with pytest.raises(TrimlabError, match="no space left on device while writing"):
        train(cfg, tmp_path, "full0000")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "no space left on device" in summary["error"]
    assert f"resume with ckpt_path=last hydra.run.dir={tmp_path}" in summary["error"]
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert checkpoint["epoch"] == 0
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # no half-written file left beside them


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    guards.AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(guards.torch, "save", lambda obj, handle: (handle.write(b"half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        guards.AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
