"""Compression stages: each makes the trained model cheaper, and the ledger proves by how much.

A stage has up to three hooks, used in the order the user lists the stages (`compression=[a,b,c]`):
- `check(datamodule, model)`: fail before any training when the stage cannot apply;
- `wrap(task, datamodule)`: change how the main fit trains (distillation adds a teacher's soft targets);
- `apply(model, context)`: transform the trained model after fit, fine-tuning it when the stage needs to.
`baseline` names what the ledger compares against (the trained model; for distillation, the teacher).

`chain.compress` runs them, measures cost and metrics after each, and saves the final artifact (`artifact`):
a state_dict for fp32 stages, an exported program once a stage `exports` (quantization, bf16) — which is why
such a stage must come last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from trimlab.errors import ConfigError

# torchao's import logs that its CUDA kernels are absent (a CPU machine) and a torch deprecation note: noise here.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

STAGES = ("prune", "prune_structured", "quantize_dynamic", "quantize_static", "qat", "bf16", "distill")


@dataclass
class Context:
    """What a stage may use: the run's config and data, where to write, and how to fine-tune."""

    cfg: DictConfig
    datamodule: Any
    run_dir: Path
    sample: Any  # one test batch's inputs: export examples and cost measurements
    finetune: Callable[..., nn.Module]  # (model, epochs, callbacks, lr_factor) -> the fine-tuned model

    @property
    def max_length(self) -> int:
        return max_length(self.datamodule)


def max_length(datamodule: Any) -> int:
    """The longest input a text model takes (its position table): the bound of an exported sequence length."""
    shape = tuple(getattr(datamodule, "input_shape", ()) or ())
    return int(shape[0]) if len(shape) == 1 else 512


class Stage:
    """Base: a stage that changes nothing. `exports` marks stages whose result is a `torch.export` program."""

    name = "stage"
    exports = False
    trains_main_fit = False  # distillation: acts during the main fit, so it must come first

    def check(self, datamodule: Any, model: nn.Module) -> None:
        """Fail before training when the stage cannot apply to this data or (untrained) model."""

    def wrap(self, task: Any, datamodule: Any) -> None:
        """Change the main fit (distillation gives the task a teacher's loss)."""

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        return model

    def baseline(self, model: nn.Module, datamodule: Any) -> tuple[nn.Module, Any, str]:
        """What the ledger's `baseline` measures, on which data, and what to call it."""
        return model, datamodule, "trained model"

    def facts(self) -> dict[str, Any]:
        """What the summary records about what the stage did (sparsity reached, channels kept, ...)."""
        return {}


def stage_names(cfg: DictConfig) -> list[str]:
    """The stages picked, in order; knobs set for a stage not picked (a search space's `++`) are no stage."""
    stages = cfg.get("compression") or {}
    return [str(name) for name, node in stages.items() if isinstance(node, DictConfig) and "_target_" in node]


def build_stages(cfg: DictConfig) -> list[Stage]:
    """The stages in the order listed; each option file holds one key, the stage's name."""
    from trimlab.factory import make

    stages = []
    for name in stage_names(cfg):
        if name not in STAGES:
            raise ConfigError(f"unknown compression stage '{name}'; available: {', '.join(STAGES)}")
        stage = make(cfg.compression[name])
        stage.name = name
        stages.append(stage)
    for position, stage in enumerate(stages):
        if stage.trains_main_fit and position > 0:
            raise ConfigError(f"compression stage '{stage.name}' trains the model: list it first")
        if stage.exports and position < len(stages) - 1:
            raise ConfigError(
                f"compression stage '{stage.name}' turns the model into an exported int8/bf16 graph that later stages "
                f"cannot change: list it last (e.g. compression=[{','.join(s.name for s in stages if s is not stage)},"
                f"{stage.name}]), and only one such stage"
            )
    return stages


def check_range(name: str, value: Any, low: float, high: float, hint: str) -> float:
    """A knob in [low, high): one clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
        raise ConfigError(f"compression.{name}={value!r} is outside [{low}, {high}); {hint}")
    return float(value)


def check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"compression.{name}={value!r} must be an integer >= {minimum}")
    return value


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"compression.{name}={value!r} must be > 0")
    return float(value)


def resolved_cost_cfg(cfg: DictConfig) -> DictConfig:
    """The run's `cost` config with `compile: auto` made true: a compressed model is deployed compiled."""
    cost = OmegaConf.to_container(cfg.cost, resolve=True)
    if cost.get("compile", "auto") == "auto":
        cost["compile"] = True
    return OmegaConf.create(cost)


def target_modules(model: nn.Module, kinds: list[str]) -> list[tuple[str, nn.Module]]:
    """Modules of the named classes (`Linear`, `Conv2d`, ...), in definition order."""
    wanted = tuple(getattr(nn, kind) for kind in kinds)
    return [(name, module) for name, module in model.named_modules() if isinstance(module, wanted)]


def classifier_head(model: nn.Module) -> nn.Module | None:
    """The last Linear under `head` (every trimlab backbone names its classifier so): kept whole by pruning."""
    head = model.get_submodule("body.head") if hasattr(model, "body") and hasattr(model.body, "head") else None
    head = head if head is not None else getattr(model, "head", None)
    if head is None:
        return None
    linears = [m for m in ([head] if isinstance(head, nn.Linear) else head.modules()) if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
