"""What every compression stage is built from: the `Stage` base class (its hooks are described in the package
docstring), the `Context` a stage's `apply` receives, and the checks and helpers stages share.

A stage's name, whether it exports, whether it trains the main fit and its precision are not set here but
declared in its option file and set on the object by `registry.build_stages`: the class attributes below are
only the defaults for a stage built in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from trimlab.errors import ConfigError
from trimlab.models import head_of


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
    """Base: a stage that changes nothing. `exports` marks stages whose result is a `torch.export` program;
    it and the attributes after it are declared in the stage's option file (see `registry`)."""

    name = "stage"
    exports = False
    trains_main_fit = False  # distillation: acts during the main fit, so it must come first
    precision = "32-true"  # what the ledger records for the stage's model

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
    head = head_of(model)
    if head is None:
        return None
    linears = [m for m in ([head] if isinstance(head, nn.Linear) else head.modules()) if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
