"""Same seed, same numbers: twice in a row, and after a SIGKILL and a resume."""

from __future__ import annotations

from conftest import compose_train
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


def test_monitoring_a_score_keeps_the_highest(tmp_path):
    cfg = compose_train(
        "task.monitor=val/f1_macro", "task.monitor_mode=max", "callbacks.progress_bar=null", output_dir=tmp_path
    )
    summary = train(cfg, tmp_path, "f1000000")
    assert summary["status"] == "completed" and summary["checkpoint"] == "checkpoints/best.ckpt"


def test_checkpoint_record_is_relative_inside_the_run_dir(tmp_path):
    from trimlab.summary import checkpoint_record

    assert checkpoint_record(str(tmp_path / "run" / "checkpoints" / "best.ckpt"), tmp_path / "run") == (
        "checkpoints/best.ckpt"
    )
    assert checkpoint_record("/elsewhere/x.ckpt", tmp_path / "run") == "/elsewhere/x.ckpt"
    assert checkpoint_record(None, tmp_path) is None
