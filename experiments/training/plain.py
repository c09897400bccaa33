"""A plain PyTorch training loop: the reference `make bench-train` times trimlab's training against.

    python experiments/training/plain.py experiment=fsdd_cnn seed=1 --target val/acc:0.95 --out plain.json

The overrides are trimlab-train's, composed into the same config, so the data (splits, batches, shuffling,
augmentation), the model, the optimizer and the learning-rate schedule come from the same builders. The loop
around them is the one a user writes by hand: forward, loss, backward, step, a validation pass after each epoch,
and the weights with the best validation loss kept for the test (as trimlab's checkpoint callback keeps them).
No Lightning, no callbacks, no logging. It writes the wall seconds of training at each validation with its
accuracy, the first time `--target` held, and the test accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from trimlab import rundir
from trimlab.batches import forward
from trimlab.factory import build
from trimlab.launch import config_dir
from trimlab.schema import parse_target


def compose_cfg(overrides: list[str], output_dir: str):
    rundir.register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader) -> tuple[float, float]:
    """Accuracy and mean cross-entropy over a split."""
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for inputs, target, *_ in loader:
        logits = forward(model, inputs)
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
        count += len(target)
    model.train()
    return correct / count, loss / count


def fit(cfg, target: str | None) -> dict:
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as trainer.deterministic=warn
    datamodule, task = build(cfg)
    model = task.backbone.train()
    loader, epochs = datamodule.train_dataloader(), int(cfg.trainer.max_epochs)
    optimizer = instantiate(cfg.task.optimizer)(params=list(model.parameters()))
    scheduler = instantiate(cfg.task.scheduler)(optimizer, total_steps=epochs * len(loader)) if cfg.task.get(
        "scheduler") else None  # fmt: skip
    smoothing = float(cfg.task.get("label_smoothing") or 0.0)
    curve, best, best_loss, seconds = [], None, float("inf"), 0.0
    for epoch in range(epochs):
        started = time.perf_counter()
        loader.sampler.set_epoch(epoch)
        for inputs, labels in loader:
            if datamodule.augment:
                inputs = datamodule.augment_batch(inputs)
            loss = F.cross_entropy(forward(model, inputs), labels, label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        accuracy, val_loss = evaluate(model, datamodule.val_dataloader())
        if val_loss < best_loss:
            best, best_loss = copy.deepcopy(model.state_dict()), val_loss
        seconds += time.perf_counter() - started  # the keeping of the best weights inside, as a checkpoint's
        curve.append([round(seconds, 3), round(accuracy, 5)])
    model.load_state_dict(best)
    test_acc, _ = evaluate(model, datamodule.test_dataloader())
    return {"val_curve": curve, "train_time_s": round(seconds, 3), "test_acc": test_acc,
            "time_to_target_s": time_to_target(curve, target), "target": target, "epochs": epochs}  # fmt: skip


def time_to_target(curve: list[list[float]], target: str | None) -> float | None:
    if not target:
        return None
    _, value, lower = parse_target(target)
    return next((s for s, metric in curve if (metric <= value if lower else metric >= value)), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="trimlab-train overrides: experiment=..., seed=...")
    parser.add_argument("--target", default=None, help="a val metric and its value, e.g. val/acc:0.95")
    parser.add_argument("--out", default=None, help="where the result's JSON goes (default: stdout only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(compose_cfg(args.overrides, tmp), args.target)
    text = json.dumps({"overrides": args.overrides, **result}, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
