"""Transfer learning: start a backbone from another run's weights, and train its head before the rest.

`model.pretrained=<run dir or .ckpt>` copies every backbone weight whose name and shape match; the classifier
(any module named `head`) is left freshly initialized when the class count differs. Anything else that does
not fit is an error: silently training half a pretrained network would be a surprise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from trimlab.checkpoints import read_checkpoint
from trimlab.errors import CheckpointError

log = logging.getLogger(__name__)


def is_head(name: str) -> bool:
    return "head" in name.split(".")


def pretrained_checkpoint(source: str | Path) -> tuple[Path, dict[str, Any]]:
    """A run dir means the checkpoint its summary tested (and the summary's data facts); a file is taken as is."""
    path, summary = Path(source).expanduser(), {}
    if path.is_dir():
        summary_path = path / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        relative = summary.get("checkpoint") or "checkpoints/best.ckpt"
        path = Path(relative) if Path(relative).is_absolute() else path / relative
    if not path.is_file():
        raise CheckpointError(
            f"model.pretrained={source}: no checkpoint at {path}; pass a finished run dir or a .ckpt file"
        )
    return path, summary.get("data") or {}


def check_same_inputs(source: str | Path, source_data: dict[str, Any], data: dict[str, Any]) -> None:
    """Weights only transfer between data read the same way (same vocabulary, same sample rate)."""
    theirs, ours = source_data.get("signature") or {}, data.get("signature") or {}
    differs = sorted(k for k in set(theirs) & set(ours) if theirs[k] != ours[k])
    if differs:
        raise CheckpointError(
            f"model.pretrained={source} was trained on inputs read another way ({', '.join(differs)}: "
            f"{[theirs[k] for k in differs]} vs {[ours[k] for k in differs]}); match them (text: "
            "data.tokenizer=pretrained data.tokenizer_path=<run dir>/tokenizer.json)"
        )


def load_pretrained(backbone: nn.Module, source: str | Path, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy matching weights into `backbone`; returns what was loaded and what was re-initialized.

    `data` is this run's DataModule facts: when given and the source is a run dir, the inputs must be read the
    same way, and a head trained for other class names is re-initialized even when the count is the same."""
    path, source_data = pretrained_checkpoint(source)
    new_classes = False
    if data is not None and source_data:
        check_same_inputs(source, source_data, data)
        new_classes = source_data.get("class_names") != data.get("class_names")
    state = read_checkpoint(path).get("state_dict") or {}
    weights = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    fresh_head = sorted(
        k for k in own if is_head(k) and k in weights and (new_classes or weights[k].shape != own[k].shape)
    )
    misfits = sorted(
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights and weights[k].shape != own[k].shape and not is_head(k)
    )
    missing = sorted(k for k in own if k not in weights)
    if misfits or missing or not weights:
        detail = "; ".join(
            part
            for part in (
                f"shape mismatch: {', '.join(misfits[:4])}" if misfits else "",
                f"missing: {', '.join(missing[:4])}" if missing else "",
                "no backbone weights" if not weights else "",
            )
            if part
        )
        raise CheckpointError(
            f"model.pretrained={source} does not fit this model ({detail}); pre-train with the same model config "
            "(text: also the same tokenizer, data.tokenizer=pretrained data.tokenizer_path=<run dir>/tokenizer.json)"
        )
    backbone.load_state_dict({k: v for k, v in weights.items() if k in own and k not in fresh_head}, strict=False)
    log.info("loaded %d pretrained tensors from %s; re-initialized %s", len(own) - len(fresh_head), path, fresh_head)
    return {"source": str(path), "loaded_tensors": len(own) - len(fresh_head), "reinitialized": fresh_head}


class FreezeBackbone(BaseFinetuning):
    """Train only the head for `freeze_epochs` epochs, then the whole backbone.

    Frozen weights stay in the optimizer (with no gradient they are skipped), so unfreezing needs no new
    param group and the learning-rate schedule covers every weight."""

    def __init__(self, freeze_epochs: int) -> None:
        super().__init__()
        self.freeze_epochs = int(freeze_epochs)

    @staticmethod
    def body(pl_module: pl.LightningModule) -> list[nn.Module]:
        return [
            module
            for name, module in pl_module.backbone.named_modules()
            if not is_head(name) and any(True for _ in module.parameters(recurse=False))
        ]

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(self.body(pl_module), train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        if epoch >= self.freeze_epochs:  # >=: a run resumed after the switch must be unfrozen too
            if epoch == self.freeze_epochs:
                log.info("epoch %d: backbone unfrozen", epoch)
            self.make_trainable(self.body(pl_module))
