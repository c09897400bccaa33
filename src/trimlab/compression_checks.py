"""Compression settings checked from the config alone, before Hydra starts a job (torch is not imported here):
knob ranges, stage order, one-process runs, the teacher run dir, and a stage listed twice."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trimlab.errors import ConfigError
from trimlab.processes import distributed_strategy, multi_process

EXPORTING_STAGES = ("quantize_dynamic", "quantize_static", "qat", "bf16")


def check_compression(cfg: DictConfig) -> None:
    """Stage knobs and orders that can be judged from the config alone (model-dependent checks run before fit)."""
    stages = cfg.get("compression") or {}
    names = [str(k) for k, v in stages.items() if isinstance(v, DictConfig) and "_target_" in v]
    for key in ("prune.sparsity", "prune_structured.channel_ratio"):
        value = OmegaConf.select(cfg, f"compression.{key}", default=None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1):
            raise ConfigError(f"compression.{key}={value!r} is outside [0, 1); set a fraction such as 0.5")
    exporting = [n for n in names if n in EXPORTING_STAGES]
    if exporting and (len(exporting) > 1 or names[-1] != exporting[0]):
        raise ConfigError(
            f"compression=[{','.join(names)}]: {exporting[0]} turns the model into an exported int8/bf16 graph that "
            "later stages cannot change; list one such stage, last"
        )
    if "distill" in names[1:]:
        raise ConfigError(f"compression=[{','.join(names)}]: distill trains the model, list it first")
    if names and (multi_process(cfg) or distributed_strategy(cfg)):  # one process, the model unwrapped
        raise ConfigError(
            "compression runs in one process: train and compress with strategy=auto trainer.devices=1 (or compress a "
            "model trained elsewhere through model.pretrained=<run dir>)"
        )
    if "distill" in names:
        if str(OmegaConf.select(cfg, "semi_supervised.method", default="none")) != "none":
            raise ConfigError("distill and semi_supervised change the same train split; use one of them")
        if not OmegaConf.select(cfg, "compression.distill.untrained_teacher", default=False):
            check_teacher_dir(OmegaConf.select(cfg, "compression.distill.teacher"))


def check_teacher_dir(teacher: str | None) -> Path:
    path = Path(str(teacher)).expanduser() if teacher else None
    if path is None or not (path / "summary.json").is_file():
        raise ConfigError(
            f"compression.distill.teacher={teacher}: no finished run there (no summary.json); pass the run dir "
            "of a completed trimlab-train run"
        )
    return path


def check_listed_once(overrides: list[str]) -> None:
    """Hydra merges `compression=[prune,prune]` silently into one stage: refuse it instead."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") != "compression" or not value.startswith("["):
            continue
        names = [name.strip() for name in value.strip("[]").split(",") if name.strip()]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigError(
                f"compression stage {', '.join(twice)} is listed twice in {override}; list each stage once "
                "(raise its strength instead, e.g. compression.prune.sparsity=0.8)"
            )
