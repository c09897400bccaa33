"""Served request items (JSON values) into what the DataModules read from files: bytes of a base64 file, and
nested lists of pixels checked against the model's image shape. Errors are `ValueError`s saying what is wrong
with the item; the server prefixes them with the item's place (`inputs[3]`)."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from trimlab.errors import DataError


def base64_file(item: Any, what: str, read: Callable[[io.BytesIO], Any]) -> Any:
    """`read` applied to the file a base64 string holds (standard or URL-safe, a `data:` URL prefix allowed)."""
    if not isinstance(item, str):
        raise ValueError(f"expected {what} as a base64 string, got {type(item).__name__}")
    text = item.split(",", 1)[1] if item.startswith("data:") else item
    try:
        data = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"expected {what} as a base64 string: {err}") from None
    try:
        return read(io.BytesIO(data))
    except DataError as err:
        raise ValueError(f"is base64 but not {what} this model reads ({str(err).split('; ')[0]})") from None


def pixel_array(item: Any, input_shape: tuple[int, ...]) -> np.ndarray:
    """One image from nested lists: its shape one of `as_images`', its values finite and in [0, 1]."""
    try:
        array = np.asarray(item, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise ValueError(f"expected an image as nested lists of numbers ({err})") from None
    images = as_images(array[None] if array.ndim == 3 else array, input_shape)
    if images is None or len(images) != 1:
        channels, height, width = input_shape
        raise ValueError(f"got an array shaped {array.shape}; expected ({height}, {width}), ({height}, {width}, "
                         f"{channels}) or ({channels}, {height}, {width})")  # fmt: skip
    if not np.isfinite(images).all():
        raise ValueError("holds NaN or infinite values; pass finite pixel values in [0, 1]")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"holds values in [{images.min():g}, {images.max():g}]; pass pixel values in [0, 1] "
                         "(divide 0-255 values by 255)")  # fmt: skip
    return images[0]


def as_images(array: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray | None:
    """`array` as (N, H, W) or (N, C, H, W) at the model's H×W, or None when it is not one of the accepted
    shapes. Flat rows (N, H·W) are accepted for one channel only: with more, the channel order is a guess."""
    channels, height, width = input_shape

    def fits(k: int) -> bool:  # what to_batch converts to the model's channels
        return k in (channels, 1) or (channels, k) == (1, 3)

    if array.shape == (height, width):
        return array[None]
    if array.ndim == 2 and channels == 1 and array.shape[1] == height * width:
        return array.reshape(-1, height, width)
    if array.ndim == 3 and array.shape[1:] == (height, width):
        return array
    if array.ndim == 4 and array.shape[2:] == (height, width) and fits(array.shape[1]):
        return array
    if array.ndim == 4 and array.shape[1:3] == (height, width) and fits(array.shape[3]):
        return array.transpose(0, 3, 1, 2)
    return None
