"""One ledger across runtimes: every variant of every deploy target built from the run's final model, timed with
`cost.py`'s protocol (the same inputs from `batches.take`, warm-up, repeats and threads) and scored on the whole
test set in its own runtime (accuracy is never assumed from the torch model); ratios against inductor fp32,
measured in the same process."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trimlab.batches import first_test_inputs, forward, take
from trimlab.cost import ms, percentile, time_forward
from trimlab.deploy.base import Built, Target, unsupported
from trimlab.evaluation import predict_logits, test_record

log = logging.getLogger(__name__)
BASELINE = ("inductor", "fp32")


def timings(runner: Any, sample: Any, cfg: Any) -> dict[str, Any]:
    """Latency at `cfg.latency_batch_size` and throughput at `cfg.throughput_batch_size`, as `inference_cost`."""
    one, many = take(sample, cfg.latency_batch_size), take(sample, cfg.throughput_batch_size)
    latency = time_forward(runner, one, cfg.latency_warmup, cfg.latency_repeats)
    throughput = time_forward(runner, many, 3, cfg.throughput_repeats)
    per_second = cfg.throughput_batch_size / statistics.median(throughput)
    return {
        "latency_ms_p50": ms(statistics.median(latency)),
        "latency_ms_p95": ms(percentile(latency, 0.95)),
        "throughput_samples_per_s": round(per_second, 1),
        # What a million predictions cost at full throughput on a device of the run's price per hour.
        "usd_per_million": round(cfg.price_per_hour / 3600 / per_second * 1e6, 6),
    }


def entry(built: Built, datamodule: Any, sample: Any, cfg: Any) -> dict[str, Any]:
    """One variant's ledger entry: load (to the first prediction), timings, size and test metrics."""
    start = time.perf_counter()
    with torch.inference_mode():
        forward(built.runner, take(sample, cfg.latency_batch_size))
    load_time_s = built.load_time_s + time.perf_counter() - start
    measured = timings(built.runner, sample, cfg)
    logits, targets = predict_logits(built.runner, datamodule.test_dataloader())
    scores = test_record(logits, targets, datamodule.class_names).scores()
    return {
        "status": "ok",
        "runtime": built.runtime,
        "version": built.version,
        **measured,
        "size_bytes": sum(path.stat().st_size for path in built.files),
        "load_time_s": round(load_time_s, 4),
        **scores,
        "settings": built.settings,
    }


def measure_all(
    targets: list[Target], model: nn.Module, datamodule: Any, cfg: Any, scratch: Path, context: dict
) -> tuple[dict[str, dict], dict[tuple[str, str], Built]]:
    """`cost.deploy`: {target: {variant: entry}}; a variant that fails is recorded `unsupported`, never raised.
    Also returns what was built, so the chosen variant's files can be deployed without building it again."""
    sample = first_test_inputs(datamodule)
    wanted = max((getattr(target, "calibration_batches", 0) for target in targets), default=0)  # an int8 knob
    calibration = [batch[0] for _, batch in zip(range(wanted), datamodule.train_dataloader(), strict=False)]
    context = {**context, "scratch": scratch / "export", "calibration": calibration}
    if not isinstance(model, torch.fx.GraphModule):  # an exported program refuses .eval()
        model.eval()
    ledger: dict[str, dict] = {}
    built: dict[tuple[str, str], Built] = {}
    for target in targets:
        ledger[target.name] = {}
        for variant in target.variants(model, context):
            try:
                made = target.build(model, variant, sample, scratch / target.name / variant, context)
                ledger[target.name][variant] = entry(made, datamodule, sample, cfg)
                built[target.name, variant] = made
            except Exception as err:  # noqa: BLE001 - a runtime that cannot take the model is a finding, not a crash
                ledger[target.name][variant] = unsupported(err)
                log.warning(
                    "deploy %s/%s unsupported: %s", target.name, variant, ledger[target.name][variant]["reason"]
                )
    add_ratios(ledger)
    return ledger, built


def add_ratios(ledger: dict[str, dict]) -> None:
    """Speed-ups over inductor fp32 (> 1: better), from timings taken in this process."""
    base = ledger.get(BASELINE[0], {}).get(BASELINE[1], {})
    if base.get("status") != "ok":
        return
    for variants in ledger.values():
        for found in variants.values():
            if found.get("status") != "ok":
                continue
            found["vs_inductor"] = {
                "latency": round(base["latency_ms_p50"] / found["latency_ms_p50"], 3),
                "throughput": round(found["throughput_samples_per_s"] / base["throughput_samples_per_s"], 3),
                "size": round(base["size_bytes"] / found["size_bytes"], 3),
            }
