"""How many processes a run's trainer settings start, read from the config alone: the one answer to "is this run
multi-process?" for the config checks (compression runs in one process) and the sweep (a multi-process job is
relaunched in its own process).

Only OmegaConf at import: the preflight asks before torch loads. torch is imported only to count GPUs when
`trainer.devices` leaves the count to Lightning (`auto`, -1) on a GPU accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

DISTRIBUTED_WORDS = ("ddp", "fsdp", "modelparallel", "model_parallel")


def strategy_name(cfg: DictConfig, default: str = "auto") -> str:
    """`trainer.strategy` as a name: its `_target_` class path, or the string Lightning takes."""
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    return strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or default)


def distributed_strategy(cfg: DictConfig) -> bool:
    """A DDP/FSDP/ModelParallel strategy: the model is wrapped (or sharded), however many processes it starts."""
    return any(word in strategy_name(cfg).lower() for word in DISTRIBUTED_WORDS)


def device_count(devices: Any, accelerator: str = "auto") -> int:
    """The devices per node Lightning uses for `trainer.devices`: a number, a list or "0,1" string of GPU ids,
    or `auto`/-1 (every GPU on a GPU accelerator; one process on CPU)."""
    if isinstance(devices, ListConfig | Sequence) and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:  # Lightning's "0,1" (and "0," for GPU 0 alone) lists GPU ids
        return len([part for part in text.split(",") if part.strip()])
    if text.lstrip("-").isdigit() and int(text) >= 0:
        return int(text)
    if str(accelerator) == "cpu":  # auto, None, -1: Lightning runs one CPU process
        return 1
    return max(1, _visible_gpus())


def multi_process(cfg: DictConfig) -> bool:
    """Whether the run starts more than one process: more than one device per node, or more than one node."""
    nodes = int(OmegaConf.select(cfg, "trainer.num_nodes", default=1) or 1)
    devices = OmegaConf.select(cfg, "trainer.devices", default="auto")
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    return nodes > 1 or device_count(devices, accelerator) > 1


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
