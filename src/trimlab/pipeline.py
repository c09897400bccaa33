"""One run, top to bottom: build → fit → test → measure cost → report.

`train` is what `trimlab-train` runs inside its Hydra job; tests call it directly with a composed config.
Compression stages (see `compression`) may change the fit and transform the tested model into the deployed one.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trimlab import compression, guards, report, rundir, schema, semi, transfer
from trimlab import loggers as run_loggers
from trimlab.batches import first_test_inputs
from trimlab.checkpoints import RNGState, check_matches, read_checkpoint
from trimlab.checks import smoke_test_stand_ins, validate_config
from trimlab.cost import RunClock, measure, peak_memory_mb
from trimlab.csv_logger import CSVLogger
from trimlab.data.base import ClassificationDataModule
from trimlab.errors import ConfigError, Interrupted
from trimlab.factory import build, make, make_backbone
from trimlab.redaction import redact, redact_overrides
from trimlab.resume import source_run_dir
from trimlab.task import ClassificationTask

log = logging.getLogger(__name__)
# `import lightning` adds its own console handler; under Hydra the root handlers already print and file-log.
if logging.getLogger().hasHandlers():
    logging.getLogger("lightning").handlers.clear()
# In-memory tensors: loader workers would only add start-up time.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    configured = (cfg.get("callbacks") or {}).items()
    callbacks = [make(c, f"callbacks.{name}") for name, c in configured if c is not None and "_target_" in c]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [guards.AtomicCheckpointIO()]}
    return make(cfg.trainer, "trainer", callbacks=callbacks + extra_callbacks, logger=loggers or False, **plugins)


def new_summary(cfg: DictConfig, run_dir: Path, run_id: str, overrides: list[str]) -> dict[str, Any]:
    """The run's first record; a fast_dev_run's stand-ins for another run's output are set here, and listed."""
    stand_ins = smoke_test_stand_ins(cfg)
    for note in stand_ins:
        log.warning(note)
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


def train(cfg: DictConfig, run_dir: Path, run_id: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run it with SIGTERM/SIGINT caught: a stopped run is recorded `interrupted`, never left `running`."""
    with guards.catch_signals():
        return _train(cfg, Path(run_dir), run_id, overrides)


def _train(cfg: DictConfig, run_dir: Path, run_id: str, overrides: list[str] | None) -> dict[str, Any]:
    rundir.set_run_id(run_id)  # `${run_id:}` in the config (W&B id, run name) resolves to this run's id
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = {"status": "failed", "run_id": run_id, "run_dir": str(run_dir.absolute())}
    # A resume that fails before training starts (e.g. a checkpoint of another model) leaves the run's record as is.
    started, writer, loggers, trainer = False, True, [], None
    try:
        summary = new_summary(cfg, run_dir, run_id, overrides or [])
        validate_config(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, task, stages = build_run(cfg, run_dir)
        resumed = starting_point(cfg, summary, task, datamodule)
        loggers = build_loggers(cfg, resumed)
        clock = RunClock("val/acc")
        trainer = build_trainer(cfg, [clock, RNGState(), *finetune_callbacks(cfg)], loggers)
        writer = trainer.is_global_zero
        started = True
        if writer:
            report.write_json(summary_path, summary)
            datamodule.save_artifacts(run_dir)  # before fit: a resume must find the tokenizer it trained with
        if semi.enabled(cfg):  # round 1 on the labelled part; the fit below is round 2
            summary["semi_supervised"] = semi.first_round(
                cfg, datamodule, task, run_dir, lambda extra: build_trainer(cfg, [*extra, *finetune_callbacks(cfg)], [])
            )
        for stage in stages:
            stage.wrap(task, datamodule)
        fitted = fit_and_test(cfg, trainer, task, datamodule, clock)
        if not writer:
            return summary
        deployable = record_completed(summary, cfg, trainer, task, datamodule, clock, stages, fitted, run_dir)
        probs, targets = task.test_probs, task.test_targets
        if stages:
            probs, targets = apply_compression(summary, cfg, stages, deployable, datamodule, run_dir, task)
        report_to(loggers, summary, run_dir, probs, targets, datamodule.class_names, trainer.global_step)
    except BaseException as err:
        raised = guards.recorded_failure(err, summary, trainer, run_dir)
        if raised is err:
            raise
        raise raised from (None if isinstance(raised, Interrupted) else err)
    finally:
        resumed_before_start = not started and summary_path.exists() and cfg.get("ckpt_path")
        if writer and not resumed_before_start:
            report.write_json(summary_path, summary)
        run_loggers.finish(loggers, summary["status"])
        leave_process_group()
    report.print_table(summary)
    print(summary["run_dir"], flush=True)
    return summary


def build_run(cfg: DictConfig, run_dir: Path) -> tuple[ClassificationDataModule, ClassificationTask, list]:
    """Data, task and compression stages; a stage that cannot apply fails now, not after the fit."""
    # A resumed run reads its data as the interrupted one did (a text run's tokenizer from its run dir).
    datamodule, task = build(cfg, compile=True, artifacts_from=source_run_dir(cfg, run_dir))
    stages = compression.build_stages(cfg)
    for stage in stages:
        stage.check(datamodule, task.backbone)
    return datamodule, task, stages


def record_completed(
    summary: dict,
    cfg: DictConfig,
    trainer: pl.Trainer,
    task: ClassificationTask,
    datamodule,
    clock: RunClock,
    stages: list,
    fitted: tuple,
    run_dir: Path,
) -> torch.nn.Module:
    """The summary of a finished fit: test metrics, cost, environment; returns the deployable (tested) model."""
    tested, device, peaks = fitted
    deployable = deployable_backbone(cfg, datamodule, tested) if tested else task.backbone
    if not task.test_report:  # ddp_spawn: the test ran in worker processes, only its logged metrics came back
        task.collect_test_outputs(deployable, datamodule.test_dataloader(), trainer.precision_plugin)
    sample = first_test_inputs(datamodule)
    summary.update(
        status="completed",
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        checkpoint=checkpoint_record(tested, run_dir),
        data=datamodule.facts(),
        metrics=test_metrics(trainer, task, clock),
        cost=measure(deployable, sample, clock, cfg.cost, device, trainer.precision_plugin, peaks, not stages),
        env={**report.environment(cfg.seed, datamodule.data_fingerprint, device), **execution(trainer)},
    )
    return deployable


def report_to(loggers: list, summary: dict, run_dir: Path, probs, targets, class_names: list, step: int) -> None:
    """Plots and per-example predictions in the run dir; the same final keys and images to every logger."""
    report.save_plots(run_dir, probs, targets, class_names)
    report.save_predictions(run_dir, probs, targets)
    hparams = {"run_id": summary["run_id"], "overrides": " ".join(summary["overrides"]), **summary["config"]}
    run_loggers.log_final(loggers, report.flat_scores(summary), hparams, step)
    run_loggers.log_images(loggers, {name: run_dir / f"{name}.png" for name in ("confusion_matrix", "roc")})


def starting_point(cfg: DictConfig, summary: dict, task: ClassificationTask, datamodule) -> dict | None:
    """The checkpoint a resumed run continues from (checked against the model), or pretrained weights loaded."""
    if not cfg.get("ckpt_path"):
        if cfg.model.get("pretrained"):
            summary["transfer"] = transfer.load_pretrained(task.backbone, cfg.model.pretrained, datamodule.facts())
        return None
    resumed = read_checkpoint(cfg.ckpt_path)
    summary["resumed_from"] = str(Path(cfg.ckpt_path).absolute())
    check_matches(task, resumed.get("state_dict", {}), str(cfg.ckpt_path))
    return resumed


def build_loggers(cfg: DictConfig, resumed: dict | None) -> list[Any]:
    loggers = run_loggers.build_loggers(cfg.get("logger"))
    for logger in loggers:  # a resumed run keeps the CSV rows logged up to its checkpoint
        if resumed is not None and isinstance(logger, CSVLogger):
            logger.keep_through_epoch = int(resumed.get("epoch", 0))
    return loggers


def fit_and_test(cfg: DictConfig, trainer: pl.Trainer, task: ClassificationTask, datamodule, clock: RunClock):
    """Fit, test the chosen checkpoint; returns it, the device, and every rank's peak memory."""
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    device = trainer.strategy.root_device  # before test: teardown moves the module back to CPU
    tested = test_checkpoint(trainer, cfg.get("test_ckpt", "best"))
    fit_clock = clock.state_dict()
    trainer.test(task, datamodule=datamodule, ckpt_path=tested, verbose=False, weights_only=True)
    clock.load_state_dict(fit_clock)  # testing a checkpoint restores callbacks: the clock as of that epoch
    # Every rank reports its peak memory (a collective: all ranks must get here).
    local_peak = torch.tensor([peak_memory_mb(device)], device=device)
    return tested, device, trainer.strategy.all_gather(local_peak).flatten().tolist()


def leave_process_group() -> None:
    """Each rank leaves the process group itself: left to interpreter exit, a rank can abort in gloo's teardown
    ("terminate called without an active exception"), and Lightning then kills the rank still writing the run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def apply_compression(summary: dict, cfg: DictConfig, stages: list, model, datamodule, run_dir: Path, task) -> tuple:
    """Compress the tested model; its final metrics and cost replace the trained model's in the summary."""
    from trimlab.compression.chain import compress

    result = compress(cfg, stages, model.cpu(), datamodule, run_dir, task)
    fit_keys = schema.names(schema.declared(summary), where="cost", phase="training")
    training = {k: v for k, v in summary["cost"].items() if k in fit_keys}
    stage_seconds = sum(cost["stage_time_s"] for cost in result["cost_after"].values())
    summary["compression"] = result["record"]
    trained = summary["metrics"]
    summary["metrics"] = {
        **result["final"]["metrics"],
        **{k: v for k, v in trained.items() if k.startswith("train/")},
        # The trained (uncompressed) model's test metrics: what trimlab-eval ckpt=best reproduces.
        "trained": {k: v for k, v in trained.items() if k.startswith("test/")},
        "baseline": result["baseline_metrics"],
        "after": result["metrics_after"],
    }
    summary["cost"] = {
        **result["final_cost"], **training, "compression_time_s": round(stage_seconds, 3),
        "baseline": result["baseline_cost"], "after": result["cost_after"],
    }  # fmt: skip
    return result["final"]["probs"], result["final"]["targets"]


def finetune_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    freeze_epochs = int((cfg.get("finetune") or {}).get("freeze_epochs") or 0)
    if freeze_epochs < 0:
        raise ConfigError(f"finetune.freeze_epochs={freeze_epochs} must be >= 0")
    return [transfer.FreezeBackbone(freeze_epochs)] if freeze_epochs else []


def checkpoint_record(tested: str | None, run_dir: Path) -> str | None:
    """Relative to the run dir when it lies inside (run dirs move); absolute for a checkpoint from elsewhere."""
    if not tested:
        return None
    path = Path(tested).absolute()
    return str(path.relative_to(run_dir.absolute())) if path.is_relative_to(run_dir.absolute()) else str(path)


def deployable_backbone(cfg: DictConfig, datamodule: ClassificationDataModule, checkpoint: str):
    """The tested weights in a fresh, unwrapped backbone: what a user deploys and trimlab-eval loads.

    Measuring the trained module itself would time a DDP/FSDP-wrapped model (and hang: a sharded forward on one
    rank waits for the others)."""
    backbone = make_backbone(cfg, datamodule)
    state = read_checkpoint(checkpoint)["state_dict"]
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
    return backbone


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


def test_checkpoint(trainer: pl.Trainer, which: str | None) -> str | None:
    """The checkpoint whose weights are tested and deployed: the best by the monitored metric, last, or a path."""
    callback = trainer.checkpoint_callback
    if which in (None, "current"):
        return None
    if which in ("best", "last"):
        path = getattr(callback, "best_model_path" if which == "best" else "last_model_path", "") if callback else ""
        return path or None
    return str(which)


def test_metrics(trainer: pl.Trainer, task: ClassificationTask, clock: RunClock) -> dict[str, Any]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    sk = task.test_report
    metrics["sklearn"] = {k: sk[k] for k in ("acc", "precision_macro", "recall_macro", "f1_macro", "auroc_macro")}
    metrics["per_class"] = sk["per_class"]
    metrics["confusion_matrix"] = sk["confusion_matrix"]
    metrics["test_samples"] = int(len(task.test_targets))
    if clock.last_loss is not None:
        metrics["train/loss_final"] = float(clock.last_loss)
    return metrics
