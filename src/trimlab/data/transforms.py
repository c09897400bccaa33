"""Tensor-level image transforms (torchvision does not install beside the CPU torch used here).

All act on a batch `(N, C, H, W)` of float tensors and draw from the global torch RNG, which the run's
checkpoints carry, so augmentation replays exactly on resume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, max_shift: int, fill: float = 0.0) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels, filling with `fill`: pad then random crop."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift), value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2))
    rows = (offsets[:, 0, None] + torch.arange(h)).to(images.device)  # (N, H)
    cols = (offsets[:, 1, None] + torch.arange(w)).to(images.device)  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Gather (N, H, W) positions for every channel at once.
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(images: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def normalize(images: torch.Tensor, mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=images.dtype).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype).reshape(1, -1, 1, 1)
    return (images - mean_t) / std_t


def to_batch(images01: np.ndarray, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Images in [0, 1] as (N, H, W), (N, H, W, C) or (N, C, H, W) → float (N, C, H, W) at the model's size."""
    channels, height, width = input_shape
    array = np.asarray(images01, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4:
        raise ValueError(f"expected images shaped (N, H, W[, C]); got {images01.shape}")
    batch = torch.from_numpy(np.ascontiguousarray(array))
    if batch.shape[1] != channels:
        batch = batch.mean(1, keepdim=True) if channels == 1 else batch.expand(-1, channels, -1, -1)
    if tuple(batch.shape[-2:]) != (height, width):
        batch = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return batch.contiguous()


def random_gain(inputs: torch.Tensor, max_db: float) -> torch.Tensor:
    """Scale each clip by a gain drawn uniformly in [-max_db, +max_db] dB (a louder or quieter speaker)."""
    if max_db <= 0:
        return inputs
    db = (torch.rand(inputs.shape[0]) * 2 - 1) * max_db
    gain = torch.pow(10.0, db / 20).to(device=inputs.device, dtype=inputs.dtype)
    return inputs * gain.view(-1, *([1] * (inputs.dim() - 1)))


def random_time_shift(inputs: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Move each clip by up to ±`max_shift` samples, zero-filled (pad then crop: nothing wraps around)."""
    if max_shift <= 0:
        return inputs
    n, channels, length = inputs.shape
    padded = torch.nn.functional.pad(inputs, (max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (n,))
    positions = (offsets[:, None] + torch.arange(length)).to(inputs.device)  # (N, T)
    return torch.gather(padded, 2, positions[:, None, :].expand(n, channels, length))
