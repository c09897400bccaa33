"""The speedup methods Lightning has no callback for; each a callback, picked by `speedup=[...]`."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from trimlab.errors import ConfigError
from trimlab.schema import parse_target


def _images(inputs: Any) -> bool:
    return isinstance(inputs, torch.Tensor) and inputs.dim() == 4


class ChannelsLast(pl.Callback):
    """Weights and image batches in channels-last memory order, which oneDNN's and cuDNN's convolutions run
    without reordering each layer's input. The exported model is the usual contiguous one."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.to(memory_format=torch.channels_last)
        self.hook = pl_module.register_forward_pre_hook(self.reorder)

    @staticmethod
    def reorder(module: nn.Module, args: tuple) -> tuple:
        return tuple(a.contiguous(memory_format=torch.channels_last) if _images(a) else a for a in args)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.hook.remove()
        pl_module.to(memory_format=torch.contiguous_format)


class ProgressiveResizing(pl.Callback):
    """Training images shrunk to `start_scale` of their side at first, growing linearly to full size at
    `full_at` of the epochs (fast.ai's progressive resizing): early epochs cost about `start_scale`² of a full
    one. Validation and test always see full-size images. Needs a backbone that takes any image size (global
    pooling before its head)."""

    def __init__(self, start_scale: float = 0.5, full_at: float = 0.5) -> None:
        if not 0 < start_scale <= 1 or not 0 < full_at <= 1:
            raise ConfigError(f"speedup.progressive_resizing: start_scale={start_scale} and full_at={full_at} must "
                              "lie in (0, 1]")  # fmt: skip
        self.start_scale, self.full_at, self.scale = float(start_scale), float(full_at), 1.0

    def check(self, datamodule: Any, backbone: nn.Module) -> None:
        channels, height, width = datamodule.input_shape
        small = torch.zeros(2, channels, *self.side(height, width, self.start_scale))
        try:
            with torch.no_grad():
                backbone.eval()(small)
        except RuntimeError as err:
            raise ConfigError(f"speedup=progressive_resizing: {type(backbone).__name__} does not take "
                              f"{tuple(small.shape[2:])} images ({str(err).splitlines()[0][:120]}); use a model "
                              "with global pooling (model=cnn or resnet)") from None  # fmt: skip
        finally:
            backbone.train()

    @staticmethod
    def side(height: int, width: int, scale: float) -> tuple[int, int]:
        return max(1, round(height * scale)), max(1, round(width * scale))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        progress = trainer.current_epoch / max(1.0, self.full_at * trainer.max_epochs)
        self.scale = min(1.0, self.start_scale + (1 - self.start_scale) * progress)
        if not hasattr(self, "hook"):
            self.hook = pl_module.register_forward_pre_hook(self.resize)

    def resize(self, module: nn.Module, args: tuple) -> tuple:
        if not module.training or self.scale >= 1:
            return args
        return tuple(F.interpolate(a, size=self.side(*a.shape[2:], self.scale), mode="bilinear", antialias=True,
                                   align_corners=False) if _images(a) else a for a in args)  # fmt: skip

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if hasattr(self, "hook"):
            self.hook.remove()
            del self.hook

    def facts(self) -> dict[str, Any]:
        return {"start_scale": self.start_scale, "full_at": self.full_at}


class LayerFreeze(pl.Callback):
    """The backbone's early layers frozen one after another (FreezeOut, Brock et al. 2017): of its top-level
    layers with weights, the first `fraction` stop training, the first at `start` of the epochs and the last
    of them at `end`. A frozen layer needs no weight gradients, and nothing below it any backward pass; its
    batch-norm statistics are frozen too."""

    def __init__(self, fraction: float = 0.5, start: float = 0.5, end: float = 0.8) -> None:
        if not 0 < fraction < 1 or not 0 <= start <= end <= 1:
            raise ConfigError(f"speedup.layer_freeze: fraction={fraction} must lie in (0, 1) and "
                              f"0 <= start={start} <= end={end} <= 1")  # fmt: skip
        self.fraction, self.start, self.end = float(fraction), float(start), float(end)
        self.frozen: list[str] = []

    @staticmethod
    def layers(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in backbone.named_children() if any(True for _ in m.parameters())]

    def check(self, datamodule: Any, backbone: nn.Module) -> None:
        if len(self.layers(backbone)) < 2:
            raise ConfigError(f"speedup=layer_freeze: {type(backbone).__name__} has fewer than two top-level layers "
                              "with weights, so none can be frozen while the rest trains; remove it")  # fmt: skip

    def epochs_to_freeze(self, count: int, max_epochs: int) -> list[int]:
        """The epoch at whose start each of the first `count` layers is frozen."""
        if count == 1:
            return [math.floor(self.start * max_epochs)]
        return [math.floor((self.start + (self.end - self.start) * i / (count - 1)) * max_epochs) for i in range(count)]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        layers = self.layers(pl_module.backbone)
        count = max(1, min(len(layers) - 1, math.floor(self.fraction * len(layers))))
        for (name, layer), epoch in zip(layers[:count], self.epochs_to_freeze(count, trainer.max_epochs), strict=True):
            if trainer.current_epoch >= epoch:
                for parameter in layer.parameters():
                    parameter.requires_grad_(False)
                    parameter.grad = None
                layer.eval()  # Lightning sets train() at each epoch start: batch-norm statistics stay as they were
                if name not in self.frozen:
                    self.frozen.append(name)

    def facts(self) -> dict[str, Any]:
        return {"frozen_layers": list(self.frozen)}


class LargeBatch(pl.Callback):
    """Batch size × `factor` with the learning rate × `factor` (the linear scaling rule, Goyal et al. 2017),
    and the scaled rate reached by a linear warm-up over the first `warmup_fraction` of the steps. Fewer,
    larger steps use the cores better on small models."""

    def __init__(self, factor: int = 4, warmup_fraction: float = 0.05) -> None:
        if int(factor) < 2 or not 0 <= warmup_fraction < 1:
            raise ConfigError(f"speedup.large_batch: factor={factor} must be >= 2 and warmup_fraction="
                              f"{warmup_fraction} in [0, 1)")  # fmt: skip
        self.factor, self.warmup_fraction = int(factor), float(warmup_fraction)
        self.scaled: dict[str, Any] = {}

    def configure(self, cfg: DictConfig) -> None:
        """The scaled batch and rate, before the data and the task are built; a schedule that warms up (the
        default cosine) warms up over at least `warmup_fraction`, else this callback ramps the rate itself."""
        self.scaled = {"batch_size": int(cfg.data.batch_size) * self.factor,
                       "lr": float(cfg.task.optimizer.lr) * self.factor}  # fmt: skip
        cfg.data.batch_size, cfg.task.optimizer.lr = self.scaled["batch_size"], self.scaled["lr"]
        scheduler = cfg.task.get("scheduler")
        self.ramps = not (scheduler and "warmup_fraction" in scheduler)
        if not self.ramps:
            scheduler.warmup_fraction = max(float(scheduler.warmup_fraction), self.warmup_fraction)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if not getattr(self, "ramps", True):
            return
        warmup = self.warmup_fraction * trainer.estimated_stepping_batches
        self.ramp = min(1.0, (trainer.global_step + 1) / warmup) if warmup >= 1 else 1.0
        for group in optimizer.param_groups:  # undone after the step, before the scheduler sets the next rate
            group["lr"] *= self.ramp

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        ramp = getattr(self, "ramp", 1.0)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] /= ramp
        self.ramp = 1.0

    def facts(self) -> dict[str, Any]:
        return {"factor": self.factor, **self.scaled, "warmup_fraction": self.warmup_fraction}


class SWA(pl.callbacks.StochasticWeightAveraging):
    """Lightning's stochastic weight averaging, with the averaged model tested and exported: Lightning puts the
    average into the model when the fit ends, after the best checkpoint was saved, so the run tests the model
    as the fit leaves it (`test_ckpt=current`)."""

    def configure(self, cfg: DictConfig) -> None:
        cfg.test_ckpt = "current"

    def facts(self) -> dict[str, Any]:
        return {"tested": "the averaged weights at the end of the fit (test_ckpt=current)"}


class StopAtTarget(pl.Callback):
    """Ends the fit at the first validation where `target` (`val/acc=0.98`: a metric and the value it must
    reach; a loss must fall to it) holds: the rest of the epochs buy nothing a user asked for."""

    def __init__(self, target: str | None = None) -> None:
        if not target:
            raise ConfigError("speedup=stop_at_target needs a target: pass cost.target=val/acc:0.98 (or "
                              "speedup.stop_at_target.target=...)")  # fmt: skip
        self.metric, self.value, self.lower = parse_target(str(target))
        self.stopped_epoch: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if value is None or trainer.sanity_checking:
            return
        if (float(value) <= self.value) if self.lower else (float(value) >= self.value):
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch

    def facts(self) -> dict[str, Any]:
        return {"target": f"{self.metric}={self.value:g}", "stopped_epoch": self.stopped_epoch}
