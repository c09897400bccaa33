"""Config values checked before a job starts, so bad input fails in a second with one clear line.

Only OmegaConf is imported at module level: torch loads only for the checks that need to know about GPUs.
`validate_config` runs in the preflight of `trimlab-train` and again inside the job (tests call the pipeline
directly).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from trimlab import rundir, speedup
from trimlab.compression_checks import check_compression
from trimlab.deploy_checks import check_deploy
from trimlab.errors import ConfigError
from trimlab.loggers import check_tracking
from trimlab.processes import distributed_strategy, strategy_name
from trimlab.sweep import objective_keys

INTEGER_KEYS = ("seed", "trainer.max_epochs", "trainer.min_epochs", "trainer.max_steps", "data.batch_size",
                "data.eval_batch_size", "trainer.accumulate_grad_batches")  # fmt: skip


def _number(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key}={value!r} is not a number; set {key}=<number>")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number; set {key}=<number>")
    return value


def _integer(cfg: DictConfig, key: str) -> int | None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r} is not a whole number; set {key}=<integer>")
    return value


STAND_INS = {
    "model.pretrained": "the backbone starts from random weights",
    "compression.distill.teacher": "the teacher is an untrained copy of the model",
}


def smoke_test_stand_ins(cfg: DictConfig) -> list[str]:
    """Under `trainer.fast_dev_run`, stand in for another run's output, so `-m 'experiment=glob(*)'
    ++trainer.fast_dev_run=true` checks every preset's code path; a real run still needs the source."""
    if not OmegaConf.select(cfg, "trainer.fast_dev_run", default=False):
        return []
    unset = [key for key in (cfg.get("requires") or {}) if key in STAND_INS and not OmegaConf.select(cfg, key)]
    distill = OmegaConf.select(cfg, "compression.distill", default=None)
    if isinstance(distill, DictConfig) and "_target_" in distill and not distill.get("teacher"):
        with open_dict(distill):
            distill.untrained_teacher = True
        unset = sorted({*unset, "compression.distill.teacher"})
    return [f"fast_dev_run without {key}: {STAND_INS[key]} (a smoke test of the code path only)" for key in unset]


def check_requires(cfg: DictConfig) -> None:
    """A preset names what it needs under `requires` (a `???` cannot: a merge keeps the value below it)."""
    smoke_test = bool(OmegaConf.select(cfg, "trainer.fast_dev_run", default=False))
    for key, what in (cfg.get("requires") or {}).items():
        if OmegaConf.select(cfg, str(key)) in (None, "") and not (smoke_test and key in STAND_INS):
            raise ConfigError(f"{cfg.get('task_name')} needs {key}=<{what}>; pass it on the command line")


def validate_config(cfg: DictConfig) -> None:
    """Out-of-range values that would otherwise fail (or silently misbehave) deep inside training."""
    for key in INTEGER_KEYS:
        _integer(cfg, key)
    epochs, max_steps = _number(cfg, "trainer.max_epochs"), _number(cfg, "trainer.max_steps")
    if epochs is not None and epochs < 1 and not (epochs == -1 and (max_steps or 0) > 0):
        raise ConfigError(f"trainer.max_epochs={epochs} must be >= 1; set trainer.max_epochs=<n>")
    lr = _number(cfg, "task.optimizer.lr")
    if lr is not None and lr <= 0:
        raise ConfigError(f"task.optimizer.lr={lr} must be > 0; set task.optimizer.lr=<positive float>")
    smoothing = _number(cfg, "task.label_smoothing")
    if smoothing is not None and not 0 <= smoothing < 1:
        raise ConfigError(f"task.label_smoothing={smoothing} is outside [0, 1); e.g. 0.1, or 0 for none")
    clip = _number(cfg, "trainer.gradient_clip_val")
    if clip is not None and clip < 0:
        raise ConfigError(f"trainer.gradient_clip_val={clip} must be >= 0 (or null for no clipping)")
    for key in ("data.batch_size", "data.eval_batch_size", "trainer.accumulate_grad_batches"):
        value = _number(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be >= 1; set {key}=<positive int>")
    check_data_fractions(cfg)
    check_requires(cfg)
    for group in ("data", "model", "task"):
        missing = sorted(OmegaConf.missing_keys(cfg[group])) if cfg.get(group) is not None else []
        if missing:
            key = missing[0] if missing[0].startswith(f"{group}.") else f"{group}.{missing[0]}"
            raise ConfigError(f"{key} is required and not set; pass {key}=<value>")
    check_devices(cfg)
    check_strategy(cfg)
    check_pairings(cfg)
    check_compression(cfg)
    speedup.check_config(cfg)
    check_cost_figures(OmegaConf.select(cfg, "cost.figures", default=None))
    check_deploy(cfg)
    check_tracking(cfg)  # an MLflow server that does not answer
    objective_keys(cfg)  # a known optimized_metric, or a clear error
    timeout = _number(cfg, "trainer.strategy.timeout")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"trainer.strategy.timeout={timeout} must be a positive number of seconds, e.g. 300")
    check_launcher(cfg)
    price = _number(cfg, "cost.price_per_hour")
    if price is not None and price < 0:
        raise ConfigError(f"cost.price_per_hour={price} must be >= 0")


def check_data_fractions(cfg: DictConfig) -> None:
    labelled = _number(cfg, "data.labelled_fraction")
    if labelled is not None and not 0 < labelled <= 1:
        raise ConfigError(f"data.labelled_fraction={labelled} is outside (0, 1]; e.g. 0.1 keeps 10% of the labels")
    fractions = {}
    held_out = [k for k in ("val_fraction", "test_fraction") if k in (cfg.get("data") or {})]
    for key in held_out:
        value = fractions[f"data.{key}"] = _number(cfg, f"data.{key}")
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"data.{key}={value} is outside (0, 1); set data.{key}=<fraction, e.g. 0.1>")
    if sum(v for v in fractions.values() if v) >= 1:
        listed = " + ".join(f"{k}={v}" for k, v in fractions.items())
        raise ConfigError(f"{listed} leaves nothing to train on; make the held-out fractions sum to less than 1")


def check_cost_figures(entries: Any) -> None:
    """A run's own cost figures, declared and their measure functions found, before the fit rather than after."""
    import importlib

    from trimlab import schema

    schema.added(entries)
    for index, entry in enumerate(entries or []):
        path = str(entry.get("measure") or "")
        module, _, function = path.rpartition(".")
        try:
            found = bool(module) and callable(getattr(importlib.import_module(module), function, None))
        except ImportError:
            found = False
        if not found:
            raise ConfigError(
                f"cost.figures[{index}].measure={path or None}: no such function; set measure: <module>.<function> "
                "(the module on PYTHONPATH, see docs/extending.md)"
            )


def check_devices(cfg: DictConfig) -> None:
    """GPUs asked for on a machine without one, or more CPU processes than cores: Lightning's own errors come
    from deep inside Trainer construction and name no config key."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    devices = OmegaConf.select(cfg, "trainer.devices", default="auto")
    wants_gpu = accelerator in ("gpu", "cuda")
    if not (wants_gpu or isinstance(devices, ListConfig | list) or isinstance(devices, int) and devices > 1):
        return
    if accelerator not in ("gpu", "cuda", "cpu", "auto") or _cuda_available():
        return
    if wants_gpu:
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu) needs a CUDA GPU and none is visible; use trainer=cpu "
            "or trainer=default"
        )
    if not isinstance(devices, int):
        listed = OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices
        raise ConfigError(
            f"trainer.devices={listed} lists GPU ids, and this machine has no GPU; on CPU trainer.devices is a "
            "number of processes, e.g. trainer.devices=2"
        )
    cores = os.cpu_count() or 1
    if devices > cores:
        raise ConfigError(
            f"trainer.devices={devices} starts {devices} CPU processes on a machine with {cores} cores; "
            f"set trainer.devices=<at most {cores}>"
        )


def check_launcher(cfg: DictConfig) -> None:
    """submitit's SLURM launcher fails only after the sweep has started, with a traceback, where SLURM is absent."""
    target = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    if target.endswith("SlurmLauncher") and shutil.which("srun") is None:
        raise ConfigError(
            "hydra/launcher=submitit_slurm needs SLURM (no srun on PATH); run where SLURM is, or use "
            "hydra/launcher=submitit_local"
        )


def check_pairings(cfg: DictConfig) -> None:
    """Settings that are valid alone but silently wrong together."""
    model_target = str(OmegaConf.select(cfg, "model._target_", default="") or "")
    tokenizer = OmegaConf.select(cfg, "data.tokenizer", default=None)
    if model_target.endswith("PretrainedEncoder") and tokenizer not in (None, "pretrained"):
        raise ConfigError(
            "model=hf_encoder needs its own tokenizer (other token ids mean other words): set "
            "data.tokenizer=pretrained data.tokenizer_path=${model.pretrained_path}"
        )
    freeze = _number(cfg, "finetune.freeze_epochs") or 0
    name = strategy_name(cfg)
    if freeze > 0 and distributed_strategy(cfg):
        raise ConfigError(
            f"finetune.freeze_epochs={freeze} cannot run under {name.rsplit('.', 1)[-1]}: weights frozen when the "
            "model is wrapped are never synchronized after unfreezing; train on one device or set it to 0"
        )


def check_strategy(cfg: DictConfig) -> None:
    """FSDP needs GPUs: say so before Lightning does it deep inside Trainer construction."""
    target = strategy_name(cfg, default="")
    if not (target.endswith("FSDPStrategy") or target == "fsdp"):
        return
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if accelerator == "cpu" or accelerator == "auto" and not _cuda_available():
        raise ConfigError(
            "strategy=fsdp needs GPUs (Lightning's FSDP refuses CPU); to shard on CPU use strategy=model_parallel"
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_output_dir(path: Path, setting: str = "hydra.run.dir") -> None:
    """Make a file where the dir will be: permission bits lie for root (/proc looks writable)."""
    anchor = rundir.nearest_existing(path)
    try:
        if not anchor.is_dir():
            raise NotADirectoryError(anchor)
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        what = "sweep dir" if "sweep" in setting else "run dir"
        raise ConfigError(
            f"cannot write the {what} {path}: {anchor} is not a writable directory ({reason}); "
            f"set paths.output_root=<writable dir> (or env TRIMLAB_OUTPUT, or {setting}=<dir>)"
        ) from None


def check_run_dir(cfg: DictConfig) -> None:
    """trimlab-eval / trimlab-predict: the required arguments, and a run dir that holds a saved config."""
    app = f"trimlab-{cfg.hydra.job.name}"
    required_arguments(cfg, app)
    run_dir = Path(cfg.run_dir)
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a trimlab run dir (no .hydra/config.yaml); pass run_dir=<a run's dir>")


def required_arguments(cfg: DictConfig, app: str) -> None:
    for key in ("run_dir", "inputs"):  # `key in cfg` is False for a `???` value: look at the keys
        if key in list(cfg.keys()) and OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required: {app} {key}=<path> (see {app} --help)")


def refuse_hydra_sweeps(overrides: list[str]) -> None:
    """`hydra.sweeper.params.x=choice(1,2)` unquoted is a sweep over Hydra's own setting, which Hydra refuses."""
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element().lstrip("+~")
        if key.startswith("hydra.") and override.is_sweep_override():
            value = override.input_line.partition("=")[2]
            raise ConfigError(
                f"{override.input_line}: an unquoted {value} here sweeps a Hydra setting; quote the search space "
                f"so the sweeper gets it: '{override.get_key_element()}=\"{value}\"'"
            )
