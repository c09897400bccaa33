"""One run, top to bottom, in phases: build → fit → test → measure → compress → report.

`train` is what `trimlab-train` runs inside its Hydra job; tests call it directly with a composed config.
Compression stages (see `compression`) may change the fit and transform the tested model into the deployed one.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from trimlab import guards, report, rundir, semi, speedup, transfer
from trimlab import loggers as run_loggers
from trimlab.batches import first_test_inputs
from trimlab.checkpoints import RNGState, check_matches, read_checkpoint
from trimlab.checks import smoke_test_stand_ins, validate_config
from trimlab.compression.registry import build_stages
from trimlab.cost import RunClock, measure, peak_memory_mb
from trimlab.csv_logger import CSVLogger
from trimlab.data.base import ClassificationDataModule
from trimlab.errors import ConfigError, Interrupted
from trimlab.evaluation import evaluate_model, val_metrics
from trimlab.factory import build, make, make_backbone
from trimlab.resume import source_run_dir
from trimlab.schema import parse_target
from trimlab.speedup.compile_check import CompileCheck
from trimlab.summary import RunRecord, Trained, completed, new_summary
from trimlab.task import ClassificationTask

log = logging.getLogger(__name__)
# `import lightning` adds its own console handler; under Hydra the root handlers already print and file-log.
if logging.getLogger().hasHandlers():
    logging.getLogger("lightning").handlers.clear()
# In-memory tensors: loader workers would only add start-up time.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


@dataclass
class Run:
    """What the build phase makes and every later phase uses."""

    cfg: DictConfig
    run_dir: Path
    datamodule: ClassificationDataModule | None = None
    task: ClassificationTask | None = None
    stages: list = field(default_factory=list)
    methods: list = field(default_factory=list)  # the speedup methods, callbacks of the fit
    loggers: list = field(default_factory=list)
    trainer: pl.Trainer | None = None
    clock: RunClock = field(default_factory=lambda: RunClock("val/acc"))


def train(cfg: DictConfig, run_dir: Path, run_id: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run it with SIGTERM/SIGINT caught: a stopped run is recorded `interrupted`, never left `running`."""
    with guards.catch_signals():
        return _train(cfg, Path(run_dir), run_id, overrides)


def _train(cfg: DictConfig, run_dir: Path, run_id: str, overrides: list[str] | None) -> dict[str, Any]:
    rundir.set_run_id(run_id)  # `${run_id:}` in the config (W&B id, run name) resolves to this run's id
    record, run = RunRecord(cfg, run_dir, run_id), Run(cfg, run_dir)
    try:
        stand_ins = smoke_test_stand_ins(cfg)  # before anything reads the config: it fills in what is missing
        for note in stand_ins:
            log.warning(note)
        record.summary = new_summary(cfg, run_dir, run_id, overrides or [], stand_ins)
        resumed = build_run(run, record.summary)
        record.start(writer=run.trainer.is_global_zero)
        if record.writer:
            run.datamodule.save_artifacts(run_dir)  # before fit: a resume must find the tokenizer it trained with
        fit(run, record.summary, resumed)
        trained = test(run)
        if run.methods:
            record.summary["speedup"] = speedup.facts(run.methods)
        if not record.writer:
            return record.summary
        deployable, cost = measure_cost(run, trained)
        compressed = compress(run, deployable) if run.stages else None
        record.summary.update(completed(run, trained, cost, compressed))
        deploy_targets(run, record.summary, deployable, compressed)
        report_run(run, record.summary, compressed.final if compressed else trained.record)
    except BaseException as err:
        raised = guards.recorded_failure(err, record.summary, run.trainer, run_dir)
        if raised is err:
            raise
        raise raised from (None if isinstance(raised, Interrupted) else err)
    finally:
        record.save()
        run_loggers.finish(run.loggers, record.summary["status"])
        leave_process_group()
    report.print_table(record.summary)
    print(record.summary["run_dir"], flush=True)
    return record.summary


def build_run(run: Run, summary: dict) -> dict | None:
    """Data, task, stages, loggers and trainer; a stage that cannot apply fails now, not after the fit.
    Returns the checkpoint a resumed run continues from."""
    cfg = run.cfg
    validate_config(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run.methods = speedup.build(cfg)  # before the data and task: a method may scale their batch size and rate
    # A resumed run reads its data as the interrupted one did (a text run's tokenizer from its run dir).
    run.datamodule, run.task = build(cfg, compile=True, artifacts_from=source_run_dir(cfg, run.run_dir))
    run.stages = build_stages(cfg)
    for stage in run.stages:
        stage.check(run.datamodule, run.task.backbone)
    speedup.check(run.methods, cfg, run.datamodule, run.task.backbone)
    resumed = starting_point(cfg, summary, run.task, run.datamodule)
    run.loggers = build_loggers(cfg, resumed)
    target = (cfg.get("cost") or {}).get("target")
    run.clock = RunClock(parse_target(target)[0] if target else "val/acc")
    callbacks = [run.clock, RNGState(), *finetune_callbacks(cfg), *run.methods]
    if cfg.model.get("compile"):
        callbacks.append(CompileCheck())
    run.trainer = build_trainer(cfg, callbacks, run.loggers)
    return resumed


def fit(run: Run, summary: dict, resumed: dict | None) -> None:
    """Pseudo-labelling's first round when asked, the stages' hooks into the fit, then the fit itself."""
    cfg, datamodule, task = run.cfg, run.datamodule, run.task
    if semi.enabled(cfg):  # round 1 on the labelled part; the fit below is round 2
        summary["semi_supervised"] = semi.first_round(
            cfg, datamodule, task, run.run_dir, lambda extra: build_trainer(cfg, [*extra, *finetune_callbacks(cfg)], [])
        )
    for stage in run.stages:
        stage.wrap(task, datamodule)
    run.trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)


def test(run: Run) -> Trained:
    """Test the chosen checkpoint on every rank; each reports its peak memory (a collective: all ranks get here)."""
    trainer = run.trainer
    device = trainer.strategy.root_device  # before test: teardown moves the module back to CPU
    tested = test_checkpoint(trainer, run.cfg.get("test_ckpt", "best"))
    fit_clock = run.clock.state_dict()
    trainer.test(run.task, datamodule=run.datamodule, ckpt_path=tested, verbose=False, weights_only=True)
    run.clock.load_state_dict(fit_clock)  # testing a checkpoint restores callbacks: the clock as of that epoch
    local_peak = torch.tensor([peak_memory_mb(device)], device=device)
    return Trained(tested, run.task.test_record, device, trainer.strategy.all_gather(local_peak).flatten().tolist())


def measure_cost(run: Run, trained: Trained) -> tuple[torch.nn.Module, dict]:
    """The deployable model (the tested weights, unwrapped) and the cost block; with stages, the fit's part only
    (the ledger measures the serving cost of each model)."""
    cfg, datamodule, trainer = run.cfg, run.datamodule, run.trainer
    deployable = deployable_backbone(cfg, datamodule, trained.checkpoint) if trained.checkpoint else run.task.backbone
    if trained.record is None:  # ddp_spawn: the test ran in worker processes, only its logged metrics came back
        trained.record = evaluate_model(deployable, datamodule, trainer.precision_plugin)
    # In the dtype the run tested in (bf16-true converts the module in place, as `measure` does next; mixed
    # precision converts only the compute).
    deployable = trainer.precision_plugin.convert_module(deployable)
    trained.record.metrics.update(val_metrics(deployable, datamodule, trainer.precision_plugin))
    sample = first_test_inputs(datamodule)
    precision = trainer.precision_plugin
    cost = measure(deployable, sample, run.clock, cfg.cost, trained.device, precision, trained.peaks, not run.stages)
    checked = [c.speedup for c in trainer.callbacks if isinstance(c, CompileCheck) and c.speedup is not None]
    if checked:
        cost["compile_speedup"] = checked[0]
    return deployable, cost


def compress(run: Run, deployable: torch.nn.Module):
    """The stages applied to the tested model, each measured: a `compression.chain.Compressed`."""
    from trimlab.compression.chain import compress as run_stages

    # A copy: stages such as structured pruning change a model in place, and the tested one stays the baseline.
    return run_stages(run.cfg, run.stages, copy.deepcopy(deployable).cpu(), run.datamodule, run.run_dir, run.task)


def deploy_targets(run: Run, summary: dict, deployable: torch.nn.Module, compressed) -> None:
    """With deploy targets beyond inductor: the final model measured in every runtime beside the trained one,
    `cost.deploy`, and the choice in `summary["deploy"]` (its artifact in `deployed/`)."""
    from trimlab.deploy import run as deploy

    if deploy.wanted(run.cfg):
        trained_acc = summary["metrics"].get("trained", summary["metrics"])["test/acc"]
        ledger, picked = deploy.deploy(run.cfg, deployable.cpu().eval(), compressed, run.datamodule, run.run_dir,
                                       trained_acc)  # fmt: skip
        summary["cost"]["deploy"], summary["deploy"] = ledger, picked


def report_run(run: Run, summary: dict, tested) -> None:
    """Plots and per-example predictions of the deployed model; the same final keys and images to every logger."""
    run_dir, class_names = run.run_dir, run.datamodule.class_names
    report.save_plots(run_dir, tested.probs, tested.targets, class_names)
    report.save_predictions(run_dir, tested.probs, tested.targets)
    hparams = {"run_id": summary["run_id"], "overrides": " ".join(summary["overrides"]), **summary["config"]}
    run_loggers.log_final(run.loggers, report.flat_scores(summary), hparams, run.trainer.global_step)
    run_loggers.log_images(run.loggers, {name: run_dir / f"{name}.png" for name in ("confusion_matrix", "roc")})


def build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    configured = (cfg.get("callbacks") or {}).items()
    callbacks = [make(c, f"callbacks.{name}") for name, c in configured if c is not None and "_target_" in c]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [guards.AtomicCheckpointIO()]}
    return make(cfg.trainer, "trainer", callbacks=callbacks + extra_callbacks, logger=loggers or False, **plugins)


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


def finetune_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    freeze_epochs = int((cfg.get("finetune") or {}).get("freeze_epochs") or 0)
    if freeze_epochs < 0:
        raise ConfigError(f"finetune.freeze_epochs={freeze_epochs} must be >= 0")
    return [transfer.FreezeBackbone(freeze_epochs)] if freeze_epochs else []


def deployable_backbone(cfg: DictConfig, datamodule: ClassificationDataModule, checkpoint: str):
    """The tested weights in a fresh, unwrapped backbone: what a user deploys and trimlab-eval loads.

    Measuring the trained module itself would time a DDP/FSDP-wrapped model (and hang: a sharded forward on one
    rank waits for the others)."""
    backbone = make_backbone(cfg, datamodule)
    state = read_checkpoint(checkpoint)["state_dict"]
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
    return backbone


def test_checkpoint(trainer: pl.Trainer, which: str | None) -> str | None:
    """The checkpoint whose weights are tested and deployed: the best by the monitored metric, last, or a path."""
    callback = trainer.checkpoint_callback
    if which in (None, "current"):
        return None
    if which in ("best", "last"):
        path = getattr(callback, "best_model_path" if which == "best" else "last_model_path", "") if callback else ""
        return path or None
    return str(which)


def leave_process_group() -> None:
    """Each rank leaves the process group itself: left to interpreter exit, a rank can abort in gloo's teardown
    ("terminate called without an active exception"), and Lightning then kills the rank still writing the run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
