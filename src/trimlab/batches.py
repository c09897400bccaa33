"""Batches as every model here takes them: a tensor, or a dict of tensors (a tokenized text batch), called as
`model(inputs)` or `model(**inputs)`. One home for that difference, so no caller writes it out again."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Inputs = torch.Tensor | dict[str, torch.Tensor]


def forward(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """The model's logits for one batch, whichever form its inputs take."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def first_test_inputs(datamodule: Any) -> Inputs:
    """The inputs of the first test batch: the example that export, pruning checks and cost timing trace with."""
    return next(iter(datamodule.test_dataloader()))[0]


def take(inputs: Inputs, size: int) -> Inputs:
    """The first `size` samples of a batch, repeated when the batch is smaller."""
    if isinstance(inputs, dict):
        return {key: take(value, size) for key, value in inputs.items()}
    repeats = -(-size // inputs.shape[0])
    return inputs.repeat(repeats, *([1] * (inputs.dim() - 1)))[:size]


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, dict):
        return {key: value.to(device) for key, value in inputs.items()}
    return inputs.to(device)
