"""Compression settings checked from the config alone, before Hydra starts a job (torch is not imported here):
knob ranges and stage order (both from what each stage declares, `compression.registry`), one-process runs, the
teacher run dir, and a stage listed twice."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trimlab.compression.registry import check_stages
from trimlab.errors import ConfigError
from trimlab.processes import distributed_strategy, multi_process


def check_compression(cfg: DictConfig) -> None:
    """Stage knobs and orders that can be judged from the config alone (model-dependent checks run before fit)."""
    names = [stage.name for stage in check_stages(cfg)]
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
