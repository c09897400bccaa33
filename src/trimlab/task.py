"""ClassificationTask: the one LightningModule for every modality.

A batch is `(inputs, target)`; `inputs` is a tensor or a dict of tensors, passed to the backbone as is (a dict
is unpacked as keyword arguments). Modality differences live in DataModules and backbones, never here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from trimlab.batches import forward
from trimlab.evaluation import TestRecord, test_record
from trimlab.metrics import classification_metrics


class ClassificationTask(pl.LightningModule):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        label_smoothing: float = 0.0,
        monitor: str = "val/loss",
        monitor_mode: str = "min",
        class_names: list[str] | None = None,
        train_metrics: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.label_smoothing, self.monitor, self.monitor_mode = float(label_smoothing), monitor, monitor_mode
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        # Train metrics over every batch of the epoch, scored once at its end from the predicted classes kept each
        # step: updating torchmetrics every step cost ~25% of a small CNN's CPU step (experiments/overhead).
        self.train_metrics = classification_metrics(num_classes, "train/", with_auroc=False) if train_metrics else None
        self._train_predictions: list[torch.Tensor] = []
        self._train_targets: list[torch.Tensor] = []
        self.val_metrics = classification_metrics(num_classes, "val/")
        self._test_logits: list[torch.Tensor] = []
        self._test_targets: list[torch.Tensor] = []
        self.test_record: TestRecord | None = None  # set at the end of the test loop (trimlab.evaluation)
        # Set by the distill stage: a plain object (not a module), so a teacher is never trained or saved here.
        self.distillation: Callable[..., torch.Tensor] | None = None

    def configure_model(self) -> None:
        """Under ModelParallelStrategy, shard the backbone with FSDP2: each layer with parameters, then the root."""
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(self.backbone, FSDPModule):  # called again for test after fit
            return

        mesh = self.device_mesh["data_parallel"]
        for module in self.backbone.children():
            if any(p.requires_grad for p in module.parameters()):
                fully_shard(module, mesh=mesh)
        fully_shard(self.backbone, mesh=mesh)

    def forward(self, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        return forward(self.backbone, inputs)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, target, *teacher = batch  # a batch carries a teacher's logits (and states) when they were cached
        logits = self(inputs)
        if self.distillation is not None:
            loss = self.distillation(logits, target, teacher[0] if teacher else None, inputs, *teacher[1:])
        else:
            loss = self.loss(logits, target)
        if self.train_metrics is not None:
            self._train_predictions.append(logits.detach().argmax(-1))
            self._train_targets.append(target)
        # self.log costs ~0.5 ms a call: pay it only on the steps the loggers write (trainer.log_every_n_steps).
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0 or self.trainer.fast_dev_run:
            self.log("train/loss", loss, prog_bar=True, batch_size=target.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        if self.train_metrics is not None and self._train_predictions:
            self.train_metrics.update(torch.cat(self._train_predictions), torch.cat(self._train_targets))
            self._train_predictions, self._train_targets = [], []
            self.log_dict(self.train_metrics.compute(), sync_dist=True)
            self.train_metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        inputs, target = batch
        logits = self(inputs)
        self.log("val/loss", self.loss(logits, target), prog_bar=True, batch_size=target.shape[0], sync_dist=True)
        self.val_metrics.update(logits.softmax(-1), target)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        if self.monitor in values:
            self.log(self.monitor, values.pop(self.monitor), prog_bar=True, sync_dist=True)
        self.log_dict(values, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        inputs, target = batch
        self._test_logits.append(self(inputs).float().cpu())
        self._test_targets.append(target.cpu())

    def on_test_epoch_end(self) -> None:
        """Every rank's logits gathered, then one test record (the same function scores a compressed model)."""
        logits, targets = torch.cat(self._test_logits), torch.cat(self._test_targets)
        self._test_logits, self._test_targets = [], []
        if self.trainer.world_size > 1:
            logits = self.all_gather(logits.to(self.device)).flatten(0, 1)
            targets = self.all_gather(targets.to(self.device)).flatten(0, 1)
        self.test_record = test_record(logits, targets, self.class_names)
        self.log_dict(self.test_record.scores(), sync_dist=True)  # equal on every rank: the mean is the value

    def configure_optimizers(self):
        # Every weight, frozen ones included: with no gradient they are skipped, and unfreezing one later
        # (transfer.FreezeBackbone) needs no new param group outside the schedule.
        # And what a distillation loss learns beside the model (a hidden-state projection), never saved with it.
        extra = list(self.distillation.parameters()) if hasattr(self.distillation, "parameters") else []
        optimizer = self.optimizer_factory(params=list(self.parameters()) + extra)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
