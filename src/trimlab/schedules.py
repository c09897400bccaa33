"""Learning-rate schedules stepped every optimizer step; the task passes `total_steps` at fit time."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0, min_lr_ratio: float = 0.0
) -> LRScheduler:
    warmup = int(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.25) -> LRScheduler:
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 2), pct_start=pct_start)
