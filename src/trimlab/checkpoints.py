"""Checkpoints: loading with `weights_only=True`, a clear error when they don't fit the model, and the RNG
states that make a resumed run end exactly where the uninterrupted one would."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from trimlab.errors import CheckpointError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing .ckpt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely ({first_line}); it is corrupt or not a trimlab checkpoint"
        ) from err


def check_matches(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise one error naming the keys that are missing, unexpected or of another shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    reshaped = sorted(
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if tuple(expected[key].shape) != tuple(state_dict[key].shape)
    )
    if not (missing or unexpected or reshaped):
        return

    def head(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = [
        f"missing: {head(missing)}" if missing else "",
        f"unexpected: {head(unexpected)}" if unexpected else "",
        f"shape mismatch: {head(reshaped)}" if reshaped else "",
    ]
    raise CheckpointError(
        f"checkpoint {source} does not match the model ({'; '.join(p for p in parts if p)}); use the checkpoint "
        "of a run with the same model config"
    )


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    checkpoint = read_checkpoint(path)
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"checkpoint {path} has no state_dict; pass a checkpoint written by trimlab-train")
    check_matches(model, state_dict, str(path))
    model.load_state_dict(state_dict)
    return checkpoint


class RNGState(pl.Callback):
    """Saves the python/numpy/torch RNG states with every checkpoint and restores them when training resumes.

    Lightning's checkpoints don't carry them, so without this a resumed run draws other augmentations and
    dropout masks than the uninterrupted run. States are plain tensors/lists so `weights_only=True` loads them.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        return {
            "python": list(random.getstate()[1]),
            "python_gauss": random.getstate()[2],
            "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "numpy_pos": int(numpy_state[2]),
            "numpy_gauss": [int(numpy_state[3]), float(numpy_state[4])],
            "torch": torch.get_rng_state(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        random.setstate((3, tuple(state["python"]), state["python_gauss"]))
        has_gauss, cached = state["numpy_gauss"]
        np.random.set_state(
            ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, cached)
        )
        if torch.cuda.is_available() and "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])
        torch.set_rng_state(state["torch"])
