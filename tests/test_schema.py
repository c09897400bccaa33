"""The summary schema holds the summary's key set: a tiny run's summary.json keys against the golden lists below
(the review aid: a change to what a run records shows up here first), every key declared in trimlab.schema, and
the lists that used to be kept by hand derived from it unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST, run_cli
from trimlab import schema
from trimlab.errors import ConfigError

TOP = ["checkpoint", "config", "cost", "data", "env", "finished_at", "metrics", "overrides", "run_dir", "run_id",
       "started_at", "status", "task_name"]  # fmt: skip
METRICS = ["confusion_matrix", "per_class", "sklearn", "test/acc", "test/auroc_macro", "test/f1_macro", "test/loss",
           "test/precision_macro", "test/recall_macro", "test_samples", "train/loss_final", "val/acc",
           "val/loss"]  # fmt: skip
COST = ["first_step_s", "first_step_unix", "flops_per_sample", "latency_batch_size", "latency_ms_p50",
        "latency_ms_p50_eager", "latency_ms_p95", "latency_repeats", "nonzero_params", "params", "peak_mem_mb",
        "peak_mem_mb_total", "price_per_hour", "price_usd", "processes", "size_bytes", "step_time_ms_median",
        "target", "threads", "throughput_batch_size", "throughput_samples_per_s", "throughput_samples_per_s_eager",
        "time_to_target_s", "train_samples", "train_samples_per_s", "train_time_s", "trainable_params",
        "val_curve"]  # fmt: skip
ENV = [
    "accelerator",
    "cpu",
    "cpu_capability",
    "data_fingerprint",
    "device",
    "devices_per_node",
    "git_commit",
    "host",
    "hydra",
    "lightning",
    "num_nodes",
    "precision",
    "python",
    "seed",
    "strategy",
    "threads",
    "torch",
    "trimlab",
    "world_size",
]  # fmt: skip  (cpu and cpu_capability: new with the schema)
# A compressed run (compression=[prune]) adds these to the plain run's keys.
COMPRESSED_TOP = ["compression"]
COMPRESSED_METRICS = ["after", "baseline", "trained"]
COMPRESSED_COST = ["after", "baseline", "compile_s", "compiled", "compression_time_s", "precision",
                   "sparse_size_bytes", "stage_time_s", "weights_bytes"]  # fmt: skip
STAGE_METRICS = ["acc_delta_pt", "facts", "test/acc", "test/auroc_macro", "test/f1_macro"]  # metrics.after.prune
BASELINE_COST = ["compile_s", "compiled", "flops_per_sample", "latency_batch_size", "latency_ms_p50",
                 "latency_ms_p50_eager", "latency_ms_p95", "latency_repeats", "nonzero_params", "params", "precision",
                 "size_bytes", "threads", "throughput_batch_size", "throughput_samples_per_s",
                 "throughput_samples_per_s_eager", "trainable_params", "weights_bytes"]  # fmt: skip
STAGE_COST = sorted([*BASELINE_COST, "sparse_size_bytes", "stage_time_s"])  # cost.after.prune


def key_sets(summary: dict) -> dict[str, list[str]]:
    return {block: sorted(summary if block == "top" else summary[block]) for block in ("top", "metrics", "cost", "env")}


def assert_declared(summary: dict) -> None:
    """Every metric and cost key a run records is a figure of the schema, or one of its records."""
    for block in ("metrics", "cost"):
        known = set(schema.names(where=block)) | set(schema.RECORDS[block])
        assert set(summary[block]) <= known, sorted(set(summary[block]) - known)


def run_summary(cwd: Path, *overrides: str) -> dict:
    result = run_cli(*FAST, "trainer.max_epochs=1", *overrides, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((Path(result.stdout.strip().splitlines()[-1]) / "summary.json").read_text())


@pytest.mark.slow
def test_a_compressed_run_records_the_golden_key_set(tmp_path):
    summary = run_summary(tmp_path, "compression=[prune]", "compression.prune.epochs=0")
    assert key_sets(summary) == {"top": sorted(TOP + COMPRESSED_TOP), "metrics": sorted(METRICS + COMPRESSED_METRICS),
                                 "cost": sorted(COST + COMPRESSED_COST), "env": ENV}  # fmt: skip
    assert sorted(summary["metrics"]["after"]["prune"]) == STAGE_METRICS
    assert sorted(summary["metrics"]["baseline"]) == STAGE_METRICS[2:]
    assert (
        sorted(summary["cost"]["baseline"]) == BASELINE_COST and sorted(summary["cost"]["after"]["prune"]) == STAGE_COST
    )
    assert_declared(summary)


def test_the_lists_derived_from_the_schema_are_those_kept_by_hand_before():
    from trimlab import compare, evaluate, semi, sweep
    from trimlab.compression import chain

    scores = ("test/acc", "test/precision_macro", "test/recall_macro", "test/f1_macro", "test/auroc_macro")
    assert scores == evaluate.HEADLINE and (*scores, "test/loss", "val/acc") == sweep.METRICS
    assert chain.HEADLINE == ("test/acc", "test/f1_macro", "test/auroc_macro") == semi.HEADLINE[:3]
    assert semi.HEADLINE[3:] == ("test/loss",)
    assert schema.names(carried=True) == ("params", "trainable_params", "nonzero_params", "flops_per_sample")
    old_costs = {
        "params",
        "nonzero_params",
        "size_bytes",
        "latency_ms_p50",
        "latency_ms_p50_eager",
        "throughput_samples_per_s",
        "train_time_s",
        "time_to_target_s",
        "train_samples_per_s",
        "peak_mem_mb",
        "price_usd",
        "flops_per_sample",
    }  # fmt: skip  (the sweep's; trimlab-compare's were a subset)
    assert set(sweep.COSTS) == old_costs
    assert compare.columns([{k: 1 for k in old_costs}])[3:-1] == list(sweep.COSTS)
    everything = {k: 1 for k in (*sweep.METRICS, *sweep.COSTS)}  # the terminal table keeps its narrow set
    assert compare.columns([everything], console=True)[3:-1] == ["test/acc", "test/f1_macro", "test/auroc_macro",
        "params", "size_bytes", "latency_ms_p50", "throughput_samples_per_s", "train_time_s", "time_to_target_s",
        "price_usd"]  # fmt: skip
    fit_prefixes = ("train", "time_to", "first_step", "step_", "peak_mem", "processes", "price", "target", "val_curve")
    training = schema.names(where="cost", phase="training")
    # trainable_params matched the prefix by accident: a compressed run's trained cost never holds serving figures
    assert {k for k in COST if k.startswith(fit_prefixes)} - {"trainable_params"} == {k for k in COST if k in training}
    assert set(schema.names(where="cost", better="higher")) == {
        "throughput_samples_per_s",
        "throughput_samples_per_s_eager",
        "train_samples_per_s",
        "compile_speedup",
    }


def test_added_figures_extend_the_derived_lists_and_bad_ones_are_refused():
    entries = [{"_target_": "trimlab.schema.Figure", "name": "energy_j", "unit": "J", "better": "lower",
                "phase": "training", "compared": True, "measure": "mod.energy"}]  # fmt: skip
    assert schema.names(entries, where="cost", phase="training")[-1] == "energy_j"
    assert schema.names(entries, compared=True)[-1] == "energy_j"
    assert "energy_j" not in schema.names(entries, carried=True)
    with pytest.raises(ConfigError, match="cost.figures\\[0\\] has no name"):
        schema.added([{"unit": "J"}])
    with pytest.raises(ConfigError, match="'params' is a built-in cost key; pick another name"):
        schema.added([{"name": "params"}])
    with pytest.raises(ConfigError, match="is not a valid declaration"):
        schema.added([{"name": "x", "better": "smaller"}])
