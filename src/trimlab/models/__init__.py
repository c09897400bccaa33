"""Backbones: plain nn.Modules that map inputs to logits.

The model contract, which every backbone (trimlab's or a user's, named by `model._target_`) keeps:

- It is built as `Model(input_shape=..., num_classes=..., **datamodule.model_kwargs, **model_config)`: the data
  sizes it, so one YAML file fits every dataset of its modality.
- `forward` takes one batch's inputs as the DataModule makes them, a tensor (`model(x)`) or a dict of tensors
  (`model(**inputs)`, a tokenized text batch), and returns logits of shape (batch, num_classes): no softmax, no
  tuple, no dict.
- Its classifier is an nn.Module named `head` (or `body.head` for a backbone that wraps another, as the speech
  models do): transfer learning re-initializes it for new classes and freezes everything else first, and pruning
  keeps its last Linear whole.
- It may declare `modality` ("vision", "text", "speech"), the data it fits: the error for a model of the wrong
  modality lists the models that fit; and `prunable_channels = False` when structured pruning must not cut it
  (a pretrained encoder's attention heads).

`check_contract` runs when the model is built (`trimlab.factory`), so a model that breaks it fails with one line
before training, not deep inside transfer, pruning or the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from trimlab.errors import ConfigError


def head_of(backbone: nn.Module) -> nn.Module | None:
    """The classifier module the contract names: `head`, or `body.head` for a backbone wrapping another."""
    body = getattr(backbone, "body", None)
    head = getattr(body, "head", None) if isinstance(body, nn.Module) else None
    head = head if head is not None else getattr(backbone, "head", None)
    return head if isinstance(head, nn.Module) else None


def check_head(backbone: object, target: str) -> None:
    """A built model is an nn.Module with a `head` module (transfer and pruning look for it by name)."""
    if not isinstance(backbone, nn.Module):
        raise ConfigError(
            f"model {target} built a {type(backbone).__name__}, not a torch.nn.Module; model._target_ must name an "
            "nn.Module class (see the model contract in trimlab.models)"
        )
    if head_of(backbone) is None:
        raise ConfigError(
            f"model {target} has no `head` module; name its classifier layer self.head (transfer learning and pruning "
            "find it by that name; see the model contract in trimlab.models)"
        )


def check_logits(backbone: nn.Module, target: str, inputs: torch.Tensor | dict, num_classes: int) -> None:
    """One forward on an example batch, in eval mode and without touching the RNG (a run stays bit-exact): the
    output must be logits of shape (batch, num_classes)."""
    from trimlab.batches import forward

    batch = len(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)
    was_training = backbone.training
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            logits = forward(backbone.eval(), inputs)
        finally:
            backbone.train(was_training)
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if shape != (batch, num_classes):
        raise ConfigError(
            f"model {target} returned {shape} for a batch of {batch}; a backbone returns logits of shape (batch, "
            f"num_classes) = ({batch}, {num_classes}) (see the model contract in trimlab.models)"
        )
