"""What every trimlab DataModule shares: seeded stratified splits, epoch-seeded shuffling, and the facts a
model needs (`num_classes`, `input_shape`, `class_names`, `model_kwargs`) exposed after `setup()`.

Modalities differ only in how they load (`load`), batch (`collate`), augment (`augment_batch`) and read raw
inputs for prediction (`predict_dataset`); the task and the pipeline never look at the modality.

Shuffling draws from a generator seeded by (seed, epoch) rather than the global RNG, so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Sampler

from trimlab.errors import ConfigError, DataError


class ArrayDataset(Dataset):
    """Inputs (a tensor, or a list of per-item tensors such as token ids) with integer targets.

    Knowing its targets lets every modality share label subsets and pseudo-labels (`subset`, `relabel`).
    `texts`: a text split's raw sentences, for what works on words (distillation's augmented transfer set)."""

    def __init__(self, inputs: torch.Tensor | list, targets: torch.Tensor, texts: list[str] | None = None) -> None:
        if len(inputs) != len(targets):
            raise DataError(f"{len(inputs)} inputs but {len(targets)} labels")
        self.inputs, self.targets = inputs, torch.as_tensor(targets, dtype=torch.long)
        self.texts = texts

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.inputs[index], self.targets[index]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        indices = np.asarray(indices, dtype=np.int64)
        texts = [self.texts[i] for i in indices] if self.texts is not None else None
        if isinstance(self.inputs, torch.Tensor):
            return ArrayDataset(self.inputs[torch.as_tensor(indices)], self.targets[indices], texts)
        return ArrayDataset([self.inputs[i] for i in indices], self.targets[indices], texts)

    def relabel(self, targets: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(self.inputs, targets, self.texts)

    @staticmethod
    def concat(first: ArrayDataset, second: ArrayDataset) -> ArrayDataset:
        if isinstance(first.inputs, torch.Tensor):
            inputs = torch.cat([first.inputs, second.inputs])
        else:
            inputs = list(first.inputs) + list(second.inputs)
        return ArrayDataset(inputs, torch.cat([first.targets, second.targets]))


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


class LengthGroupedSampler(EpochShuffleSampler):
    """Shuffled, but each run of `batch_size` indices holds items of similar length: padded batches waste
    little compute. Pools of `pool` batches are sorted by length, cut into batches, and the batches shuffled."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool: int = 50) -> None:
        super().__init__(len(lengths), seed)
        self.lengths, self.batch_size, self.pool = torch.as_tensor(lengths), batch_size, pool

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        batches = []
        for chunk in order.split(self.batch_size * self.pool):
            by_length = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            batches.extend(by_length.split(self.batch_size))
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return iter(torch.cat([batches[i] for i in shuffled]).tolist())


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
        try:
            remaining, holdout = train_test_split(
                remaining, test_size=share, stratify=labels[remaining], random_state=seed
            )
        except ValueError as err:  # scikit-learn: a class too small to appear on both sides
            raise DataError(
                f"cannot split {len(remaining)} examples of {len(np.unique(labels))} classes by {list(fractions)} "
                f"({err}); use more data or other fractions (data.val_fraction, test_fraction, labelled_fraction)"
            ) from err
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


def class_folders(root: str | None, folder: str, dataset: str, what: str) -> tuple[Path, list[str]]:
    """`<root>/<folder>/<class>/...` (or an absolute folder) and its sorted class names, or a clear error."""
    base = Path(folder).expanduser()
    if not base.is_absolute():
        base = resolve_root(root, dataset, folder) / base
    classes = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not classes:
        raise DataError(
            f"no class folders found in {base.absolute()}; data.folder must hold one sub-folder of {what} per "
            "class (set data.folder=<dir>, relative to data.root or absolute)"
        )
    if len(classes) == 1:
        raise DataError(
            f"only one class folder ({classes[0]}) in {base.absolute()}: a classifier needs at least two; "
            f"add one sub-folder of {what} per class"
        )
    return base, classes


def labelled_files(
    base: Path, classes: list[str], list_files: Callable[[Path], list[Path]], what: str
) -> list[tuple[Path, int]]:
    """Every file under each class folder with its class index. A class folder without files is an error
    naming it: it would still be a class the model must output, one it never sees in training or test."""
    files = []
    for label, name in enumerate(classes):
        found = list_files(base / name)
        if not found:
            raise DataError(f"class folder {(base / name).absolute()} holds no {what}; add some or remove the folder")
        files += [(path, label) for path in found]
    return files


def fingerprint(*arrays: np.ndarray | torch.Tensor, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for array in arrays:
        array = array.numpy() if isinstance(array, torch.Tensor) else array
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class ClassificationDataModule(pl.LightningDataModule):
    """Subclasses implement `load()` → (inputs, labels, class_names, split) and may override `augment_batch`."""

    # The kind of inputs (vision, text, speech): which models fit is listed by it (trimlab.factory).
    modality: str | None = None

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        augment: bool = False,
        labelled_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1 or int(eval_batch_size) < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1; set data.batch_size=<positive int>")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.augment = int(num_workers), bool(augment)
        self.split_seed, self.shuffle_seed = int(split_seed), int(shuffle_seed)
        if not 0.0 < float(labelled_fraction) <= 1.0:
            raise ConfigError(f"data.labelled_fraction={labelled_fraction} is outside (0, 1]; e.g. 0.1 keeps 10%")
        self.labelled_fraction = float(labelled_fraction)
        self.class_names: list[str] = []
        self.input_shape: tuple[int, ...] = ()
        # Extra constructor arguments the backbone needs from the data (vocab size, sample rate...).
        self.model_kwargs: dict[str, Any] = {}
        # How items become a batch; None is torch's default stacking.
        self.collate: Callable | None = None
        # A finished run's dir whose artifacts (a tokenizer) replace rebuilding them: set by eval.
        self.artifacts_from: Path | None = None
        self.data_fingerprint = ""
        self.splits: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self) -> dict[str, ArrayDataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load()
            if self.labelled_fraction < 1.0:  # a small labelled set, drawn class-balanced from the train split
                train = self.splits["train"]
                keep, _ = stratified_split(train.targets.numpy(), [1.0 - self.labelled_fraction], self.split_seed)
                self.splits["train"] = train.subset(keep)

    def facts(self) -> dict[str, Any]:
        """What a run records so that eval and predict rebuild the same model without loading the data."""
        return {
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "model_kwargs": dict(self.model_kwargs),
            "signature": self.signature(),
        }

    def signature(self) -> dict[str, Any]:
        """What must match for weights trained on this data to mean the same on other data (transfer)."""
        return {}

    def restore(self, run_dir: Path, facts: dict[str, Any]) -> None:
        """Take a finished run's recorded facts (and artifacts such as a tokenizer) instead of loading data."""
        self.class_names = list(facts["class_names"])
        self.input_shape = tuple(facts["input_shape"])
        self.model_kwargs = dict(facts.get("model_kwargs") or {})

    def save_artifacts(self, run_dir: Path) -> None:
        """Write what predict needs besides the weights (a tokenizer, say) into the run dir."""

    def predict_dataset(self, path: Path) -> tuple[list[str], ArrayDataset]:
        """Names and model-ready items (targets -1) for raw inputs: a file or a folder of them. A DataModule that
        can be served also has `serve_item` (a JSON value → the same item, or a `ValueError`) and `serve_spec`."""
        raise DataError(f"{type(self).__name__} cannot read raw inputs for prediction")

    def train_dataloader(self) -> DataLoader:
        dataset = self.splits["train"]
        return self._loader(dataset, self.batch_size, sampler=self.train_sampler(dataset))

    def train_sampler(self, dataset: ArrayDataset) -> Sampler[int]:
        return EpochShuffleSampler(len(dataset), self.shuffle_seed)

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
            collate_fn=self.collate,
            # A private generator: building loaders never advances the global RNG (exact resume).
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.augment and self.trainer is not None and self.trainer.training:
            inputs, *rest = batch  # rest: the target, and a teacher's logits when distilling
            return (self.augment_batch(inputs), *rest)
        return batch

    def augment_batch(self, inputs):
        return inputs


def tensor_splits(
    inputs: torch.Tensor | list, labels: np.ndarray, indices: Sequence[np.ndarray], names: Sequence[str]
) -> dict[str, ArrayDataset]:
    whole = ArrayDataset(inputs, torch.as_tensor(labels, dtype=torch.long))
    return {name: whole.subset(idx) for name, idx in zip(names, indices, strict=True)}
