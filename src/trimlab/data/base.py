"""What every trimlab DataModule shares: seeded stratified splits, epoch-seeded shuffling, and the facts a
model needs (`num_classes`, `input_shape`, `class_names`) exposed after `setup()`.

Shuffling draws from a generator seeded by (seed, epoch) rather than the global RNG, so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from trimlab.errors import ConfigError, DataError


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch, fixed by (seed, epoch); Lightning calls `set_epoch` every epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def check_fraction(name: str, value: float) -> float:
    if not 0.0 < float(value) < 1.0:
        raise ConfigError(f"data.{name}={value} is outside (0, 1); set it to a fraction such as 0.1")
    return float(value)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices for [train, *holdouts]: each holdout takes its fraction of the whole set, class-balanced."""
    remaining = np.arange(len(labels))
    holdouts = []
    left = 1.0
    for fraction in fractions:
        share = fraction / left
        remaining, holdout = train_test_split(remaining, test_size=share, stratify=labels[remaining], random_state=seed)
        holdouts.append(np.sort(holdout))
        left -= fraction
    return [np.sort(remaining), *holdouts]


def resolve_root(root: str | os.PathLike | None, dataset: str, expected: str) -> Path:
    """The data root, or a clear error that says where it looked and how to set it."""
    if root in (None, "", "None"):
        raise DataError(
            f"{dataset} needs a data root, and none is set: set env TRIMLAB_DATA or pass data.root=<dir> "
            f"(the dir that holds {expected})"
        )
    return Path(root).expanduser()


def fingerprint(*arrays: np.ndarray | torch.Tensor, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for array in arrays:
        array = array.numpy() if isinstance(array, torch.Tensor) else array
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class ClassificationDataModule(pl.LightningDataModule):
    """Subclasses implement `load()` → (inputs, labels, class_names, split) and may override `augment_batch`."""

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        augment: bool = False,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1 or int(eval_batch_size) < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1; set data.batch_size=<positive int>")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.augment = int(num_workers), bool(augment)
        self.split_seed, self.shuffle_seed = int(split_seed), int(shuffle_seed)
        self.class_names: list[str] = []
        self.input_shape: tuple[int, ...] = ()
        self.data_fingerprint = ""
        self.splits: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load()

    def train_dataloader(self) -> DataLoader:
        dataset = self.splits["train"]
        sampler = EpochShuffleSampler(len(dataset), self.shuffle_seed)
        return self._loader(dataset, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"], self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # A private generator: building loaders never advances the global RNG (exact resume).
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.augment and self.trainer is not None and self.trainer.training:
            inputs, target = batch
            return self.augment_batch(inputs), target
        return batch

    def augment_batch(self, inputs):
        return inputs


def tensor_splits(
    inputs: torch.Tensor, labels: np.ndarray, indices: Sequence[np.ndarray], names: Sequence[str]
) -> dict[str, Dataset]:
    targets = torch.as_tensor(labels, dtype=torch.long)
    return {name: TensorDataset(inputs[idx], targets[idx]) for name, idx in zip(names, indices, strict=True)}
