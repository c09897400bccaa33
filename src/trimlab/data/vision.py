"""Vision DataModules: sklearn digits (the offline default), MNIST from idx .gz files, any image folder."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from trimlab.data.base import (
    ArrayDataset,
    ClassificationDataModule,
    check_fraction,
    class_folders,
    fingerprint,
    labelled_files,
    resolve_root,
    stratified_split,
    tensor_splits,
)
from trimlab.data.items import as_images, base64_file, pixel_array
from trimlab.data.transforms import normalize, random_hflip, random_shift, to_batch
from trimlab.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class VisionDataModule(ClassificationDataModule):
    """Images held in memory as normalized (N, C, H, W) float tensors; shift/flip augmentation on the batch."""

    modality = "vision"

    mean: float | list[float] = 0.5
    std: float | list[float] = 0.5

    def __init__(self, shift: int = 0, flip: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shift, self.flip = int(shift), bool(flip)

    def augment_batch(self, inputs: torch.Tensor) -> torch.Tensor:
        # Fill with the normalized value of a black pixel, so a shifted digit keeps its background.
        fill = float(np.mean(-np.asarray(self.mean) / np.asarray(self.std)))
        inputs = random_shift(inputs, self.shift, fill)
        return random_hflip(inputs) if self.flip else inputs

    def preprocess(self, images01: np.ndarray) -> torch.Tensor:
        """Raw images scaled to [0, 1] → the normalized batch this model was trained on."""
        return normalize(to_batch(images01, self.input_shape), self.mean, self.std)

    def predict_dataset(self, path: Path) -> tuple[list[str], ArrayDataset]:
        """Images from a file, a folder, or a .npy array of the run's image shape (uint8 0–255 or float 0–1)."""
        names, images = read_images(path, self.input_shape)
        inputs = torch.cat([self.preprocess(image[None]) for image in images])
        return names, ArrayDataset(inputs, torch.full((len(names),), -1))

    @property
    def serve_spec(self) -> str:
        channels, height, width = self.input_shape
        shapes = f"({height}, {width}), ({height}, {width}, {channels}) or ({channels}, {height}, {width})"
        return f"an image: pixel values in [0, 1] as nested lists shaped {shapes}, or a base64 PNG/JPEG (resized)"

    def serve_item(self, item) -> torch.Tensor:
        """A nested list of pixel values in [0, 1] at the model's size, or a base64 image file (resized)."""
        if isinstance(item, str):
            image = base64_file(item, "an image file", lambda f: read_image(f, self.input_shape[0], "the image"))
        else:
            image = pixel_array(item, self.input_shape)
        return self.preprocess(image[None])[0]


class DigitsDataModule(VisionDataModule):
    """scikit-learn's 8×8 digits (1,797 images, 10 classes); pixel values 0–16."""

    mean, std = 0.3051, 0.3777  # of digits / 16, measured on the whole set

    def __init__(self, root: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.input_shape = (1, 8, 8)
        self.class_names = [str(d) for d in range(10)]

    def load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0
        labels = digits.target.astype(np.int64)
        indices = stratified_split(labels, [self.val_fraction, self.test_fraction], self.split_seed)
        self.data_fingerprint = fingerprint(images, labels, extra=f"digits:{self.split_seed}:{indices[1][:5]}")
        inputs = self.preprocess(images)
        return tensor_splits(inputs, labels, indices, ["train", "val", "test"])


def read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """An idx array from a .gz file, with its magic number, dims and length checked."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is corrupt or truncated ({err}); restore the original MNIST file") from err
    if len(data) < 8 or int.from_bytes(data[:4], "big") != magic:
        found = hex(int.from_bytes(data[:4], "big")) if len(data) >= 4 else "nothing"
        raise DataError(f"{path} is not an idx file (magic {hex(magic)} expected, {found} found); restore it")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    header = 4 + 4 * ndim
    expected = header + int(np.prod(dims))
    if len(data) != expected or dims[1:] != item_shape:
        raise DataError(
            f"{path} is truncated or malformed (dims {dims}, {len(data)} bytes, {expected} expected); "
            "restore the original MNIST file"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class MNISTDataModule(VisionDataModule):
    """MNIST from `<root>/MNIST/raw/*-ubyte.gz`; validation carved from the 60k train set (stratified)."""

    mean, std = 0.1307, 0.3081
    FILES = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }

    def __init__(self, root: str | None = None, val_fraction: float = 1 / 12, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.input_shape = (1, 28, 28)
        self.class_names = [str(d) for d in range(10)]

    def raw_dir(self) -> Path:
        raw = resolve_root(self.root, "MNIST", "MNIST/raw/*.gz") / "MNIST" / "raw"
        missing = [name for name in self.FILES.values() if not (raw / name).is_file()]
        if missing:
            raise DataError(
                f"MNIST not found: looked in {raw.absolute()} for {', '.join(missing)}; set env TRIMLAB_DATA or "
                "data.root=<dir> to the dir that holds MNIST/raw/"
            )
        return raw

    def prepare_data(self) -> None:
        self.raw_dir()

    def load(self):
        raw = self.raw_dir()
        train_x = read_idx(raw / self.FILES["train_images"], 0x803, (28, 28))
        train_y = read_idx(raw / self.FILES["train_labels"], 0x801, ())
        test_x = read_idx(raw / self.FILES["test_images"], 0x803, (28, 28))
        test_y = read_idx(raw / self.FILES["test_labels"], 0x801, ())
        for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
            if len(images) != len(labels) or labels.max(initial=0) > 9:
                raise DataError(f"MNIST {split} images and labels do not match ({len(images)} vs {len(labels)})")
        train_idx, val_idx = stratified_split(train_y, [self.val_fraction], self.split_seed)
        self.data_fingerprint = fingerprint(train_x, train_y, test_x, test_y, extra=f"mnist:{self.split_seed}")
        images = np.concatenate([train_x, test_x]).astype(np.float32) / 255.0
        labels = np.concatenate([train_y, test_y]).astype(np.int64)
        test_idx = np.arange(len(train_x), len(images))
        return tensor_splits(self.preprocess(images), labels, [train_idx, val_idx, test_idx], ["train", "val", "test"])


def read_image(path, channels: int, name: str | None = None) -> np.ndarray:
    """An image file (a path, or a file object named `name`) as floats in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {name or path} ({err}); remove or replace it") from err
    return array


class ImageFolderDataModule(VisionDataModule):
    """`<root>/<folder>/<class>/<image>`: class names are the sub-folder names, sorted."""

    def __init__(
        self,
        root: str | None = None,
        folder: str = "",
        image_size: int = 32,
        channels: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.folder = root, folder
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.input_shape = (int(channels), int(image_size), int(image_size))

    def image_dir(self) -> Path:
        base, self.class_names = class_folders(self.root, self.folder, "image_folder", "images")
        return base

    def prepare_data(self) -> None:
        self.image_dir()

    def load(self):
        base = self.image_dir()
        what = f"images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        files = labelled_files(base, self.class_names, image_files, what)
        channels = self.input_shape[0]
        batch = torch.cat([to_batch(read_image(path, channels)[None], self.input_shape) for path, _ in files])
        labels = np.array([label for _, label in files], dtype=np.int64)
        indices = stratified_split(labels, [self.val_fraction, self.test_fraction], self.split_seed)
        self.data_fingerprint = fingerprint(batch, labels, extra=f"folder:{self.split_seed}")
        inputs = normalize(batch, self.mean, self.std)
        return tensor_splits(inputs, labels, indices, ["train", "val", "test"])


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def read_images(inputs: Path, input_shape: tuple[int, ...]) -> tuple[list[str], list[np.ndarray]]:
    """Names and images in [0, 1]: each (H, W), (H, W, C) or, from a .npy array, (C, H, W)."""
    if not inputs.exists():
        raise DataError(f"inputs {inputs} does not exist; pass an image file, a folder of images or a .npy file")
    if inputs.suffix == ".npy":
        images = read_npy(inputs, input_shape)
        return [f"{inputs.name}[{i}]" for i in range(len(images))], list(images)
    files = image_files(inputs) if inputs.is_dir() else [inputs]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {inputs}")
    return [str(p) for p in files], [read_image(p, input_shape[0]) for p in files]


def read_npy(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """A .npy array of the run's images, scaled to [0, 1] (uint8 by 1/255). Unlike image files it is not resized:
    an array of another shape (rows of another dataset, say) would still give an answer, a wrong one."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"cannot read {path} as a .npy array ({err})") from err
    if array.dtype.kind not in "uif":
        raise DataError(f"{path} holds {array.dtype} values; pass an array of numbers (uint8 0-255 or float 0-1)")
    array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    images = as_images(array, input_shape)
    if images is None:
        raise DataError(f"{path} holds an array shaped {array.shape}; {expected_shapes(input_shape)}")
    finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if not finite.all():
        raise DataError(
            f"{path.name}[{int(np.argmin(finite))}] holds NaN or infinite values ({int((~finite).sum())} of "
            f"{len(images)} images in {path}); pass finite values in [0, 1]"
        )
    return images


def expected_shapes(input_shape: tuple[int, ...]) -> str:
    channels, height, width = input_shape
    shapes = f"(N, {height}, {width}), (N, {height}, {width}, {channels})"
    if channels == 1:
        shapes += f", (N, 1, {height}, {width}) or flat rows (N, {height * width})"
    else:  # flat rows could hold the channels first or last
        shapes += f" or (N, {channels}, {height}, {width}) (not flat rows: their channel order is unknown)"
    return (
        f"this run's model takes {height}x{width} images with {channels} channel(s): pass an array shaped {shapes}; "
        "resize other images first, or pass image files (they are resized)"
    )
