"""summary.json: the run's record, built here for plain and compressed runs alike, and written by rank zero.

A run's record goes `running` → `completed` | `failed` | `interrupted`; it is written when the run starts (so a
crash leaves a record) and again however it ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trimlab import report
from trimlab.errors import ConfigError
from trimlab.evaluation import TestRecord
from trimlab.redaction import redact, redact_overrides


class RunRecord:
    """The summary and where it goes. A resume that fails before its trainer starts (a checkpoint of another model)
    leaves the run's existing record as it is; ranks other than zero never write."""

    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str) -> None:
        self.path = run_dir / "summary.json"
        self.summary: dict[str, Any] = {"status": "failed", "run_id": run_id, "run_dir": str(run_dir.absolute())}
        self.resuming, self.started, self.writer = bool(cfg.get("ckpt_path")), False, True

    def start(self, writer: bool) -> None:
        self.started, self.writer = True, writer
        self.save()

    def save(self) -> None:
        keep_existing = self.resuming and not self.started and self.path.exists()
        if self.writer and not keep_existing:
            report.write_json(self.path, self.summary)


def new_summary(
    cfg: DictConfig, run_dir: Path, run_id: str, overrides: list[str], stand_ins: list[str]
) -> dict[str, Any]:
    """The run's first record; `stand_ins`: what a fast_dev_run put in place of another run's output."""
    try:
        config = redact(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config does not resolve: {' '.join(str(err).split())}") from err
    return {
        "status": "running",
        "run_id": run_id,
        "run_dir": str(run_dir.absolute()),
        "task_name": cfg.task_name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "overrides": redact_overrides(overrides),
        "config": config,
        **({"stand_ins": stand_ins} if stand_ins else {}),
    }


@dataclass
class Trained:
    """The tested model: its checkpoint, its test record, where it ran, every rank's peak memory."""

    checkpoint: str | None
    record: TestRecord | None
    device: Any
    peaks: list[float]


def completed(run: Any, trained: Trained, cost: dict, compressed: Any) -> dict[str, Any]:
    """The keys a completed run adds to its first record. With compression, the deployed (compressed) model's
    metrics and serving cost lead; the trained model's test metrics stay under `metrics.trained`."""
    metrics = dict(trained.record.metrics)
    if run.clock.last_loss is not None:
        metrics["train/loss_final"] = float(run.clock.last_loss)
    done = {
        "status": "completed",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": checkpoint_record(trained.checkpoint, run.run_dir),
        "data": run.datamodule.facts(),
        "metrics": metrics,
        "cost": cost,
        "env": {**report.environment(run.cfg.seed, run.datamodule.data_fingerprint, trained.device),
                **execution(run.trainer)},
    }  # fmt: skip
    if compressed is None:
        return done
    done["compression"] = compressed.record()
    done["metrics"] = {
        **compressed.final.metrics,
        **{k: v for k, v in metrics.items() if k.startswith("train/")},
        # The trained (uncompressed) model's test metrics: what trimlab-eval ckpt=best reproduces.
        "trained": {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))},
        "baseline": compressed.baseline_metrics,
        "after": compressed.metrics_after,
    }
    # `cost` holds the fit's figures only here (the serving cost is the ledger's, measured per stage).
    done["cost"] = {**compressed.final_cost, **cost, "compression_time_s": compressed.stage_seconds(),
                    "baseline": compressed.baseline_cost, "after": compressed.cost_after}  # fmt: skip
    return done


def checkpoint_record(tested: str | None, run_dir: Path) -> str | None:
    """Relative to the run dir when it lies inside (run dirs move); absolute for a checkpoint from elsewhere."""
    if not tested:
        return None
    path = Path(tested).absolute()
    return str(path.relative_to(run_dir.absolute())) if path.is_relative_to(run_dir.absolute()) else str(path)


def execution(trainer: pl.Trainer) -> dict[str, Any]:
    """How the run actually executed: Lightning may change what was asked (16-mixed becomes bf16 on CPU)."""
    return {
        "precision": trainer.precision,
        "strategy": type(trainer.strategy).__name__,
        "accelerator": type(trainer.accelerator).__name__,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "devices_per_node": trainer.num_devices,
    }
