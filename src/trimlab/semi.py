"""Semi-supervised training by pseudo-labelling (Lee, 2013), for any modality.

Round 1 hides the labels of `hidden_fraction` of the train split and trains on the rest. Its best model then
labels the hidden part; predictions at or above `threshold` confidence join the labelled data, and the run's
normal fit (round 2) starts from round 1's weights. The summary keeps round 1's test metrics beside the final
ones, and how accurate the pseudo-labels were against the hidden truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from trimlab import schema
from trimlab.checkpoints import load_weights
from trimlab.cost import RunClock
from trimlab.data.base import ArrayDataset, ClassificationDataModule, stratified_split
from trimlab.errors import ConfigError
from trimlab.evaluation import predict_logits
from trimlab.task import ClassificationTask

log = logging.getLogger(__name__)
HEADLINE = schema.names(where="metrics", round1=True)


def enabled(cfg: DictConfig) -> bool:
    method = (cfg.get("semi_supervised") or {}).get("method", "none")
    if method not in ("none", "pseudo_label"):
        raise ConfigError(f"semi_supervised.method={method} is unknown; use semi_supervised=pseudo_label or none")
    return method == "pseudo_label"


@torch.inference_mode()
def predict_probs(task: ClassificationTask, dataset: ArrayDataset, datamodule: ClassificationDataModule, precision):
    """In the run's precision (Lightning's plugin): a bf16-true model takes bf16 inputs."""
    loader = DataLoader(dataset, batch_size=datamodule.eval_batch_size, collate_fn=datamodule.collate)
    return predict_logits(task.eval().backbone, loader, precision)[0].softmax(-1)


def first_round(
    cfg: DictConfig,
    datamodule: ClassificationDataModule,
    task: ClassificationTask,
    run_dir: Path,
    make_trainer: Callable[[list[pl.Callback]], pl.Trainer],
) -> dict[str, Any]:
    """Train on the labelled part, test, pseudo-label the hidden part; leaves `datamodule` ready for round 2."""
    settings = cfg.semi_supervised
    fraction, threshold = float(settings.hidden_fraction), float(settings.threshold)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"semi_supervised.hidden_fraction={fraction} is outside (0, 1); e.g. 0.8")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"semi_supervised.threshold={threshold} is outside [0, 1]; e.g. 0.9")

    train = datamodule.splits["train"]
    labelled_idx, hidden_idx = stratified_split(train.targets.numpy(), [fraction], datamodule.split_seed)
    labelled, hidden = train.subset(labelled_idx), train.subset(hidden_idx)
    datamodule.splits["train"] = labelled

    clock = RunClock()
    trainer = make_trainer([clock])
    if trainer.checkpoint_callback is not None:
        trainer.checkpoint_callback.dirpath = str(Path(run_dir) / "checkpoints" / "round1")
    trainer.fit(task, datamodule=datamodule)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        load_weights(task, best)
    trainer.test(task, datamodule=datamodule, verbose=False)
    round1 = {k: float(v) for k, v in trainer.callback_metrics.items() if k in HEADLINE}

    probs = predict_probs(task, hidden, datamodule, trainer.precision_plugin)
    confidence, predicted = probs.max(-1)
    keep = confidence >= threshold
    pseudo = hidden.subset(torch.nonzero(keep).flatten().numpy()).relabel(predicted[keep])
    datamodule.splits["train"] = ArrayDataset.concat(labelled, pseudo)
    correct = (predicted[keep] == hidden.targets[keep]).float()
    log.info("pseudo-labelled %d of %d hidden examples (threshold %.2f)", int(keep.sum()), len(hidden), threshold)
    task.train()
    return {
        "method": "pseudo_label",
        "labelled": len(labelled),
        "hidden": len(hidden),
        "threshold": threshold,
        "pseudo_labelled": int(keep.sum()),
        "pseudo_label_acc": float(correct.mean()) if len(correct) else None,
        "round1": {"metrics": round1, "train_time_s": round(clock.elapsed(), 2), "checkpoint": best or None},
    }
