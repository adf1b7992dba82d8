"""Small image transforms shared by the datasets.

Every dataset returns images as float32 tensors of shape (C, H, W) with values in
[-1, 1], the range the autoencoder of Rombach et al. (2022) is trained on
(CompVis ``ldm/data``: ``x = x / 127.5 - 1``). The functions here convert uint8
arrays to that range, change the number of channels, resize with antialiasing and
crop.

Used by every dataset of :mod:`minildm.data` (notebooks 01–05).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: ITU-R BT.601 luma weights, used to turn RGB into one grey channel.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def check_channels(channels: int) -> int:
    """Validate the ``channels`` option: 1 (grey) or 3 (RGB)."""
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or int(channels) not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return int(channels)


def check_image_size(image_size: int, low: int, high: int, dataset: str) -> int:
    """Validate ``image_size`` for ``dataset``: an int with ``low <= image_size <= high``."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size for {dataset!r} must be an int in [{low}, {high}], got {image_size!r}")
    if not low <= int(image_size) <= high:
        raise ValueError(f"image_size for {dataset!r} must be in [{low}, {high}] pixels, got {image_size}")
    return int(image_size)


def check_seed(seed: int) -> int:
    """Validate a seed: a non-negative int (it feeds ``numpy.random.SeedSequence``)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def uint8_to_tensor(array: np.ndarray, channels: int = 3) -> torch.Tensor:
    """uint8 image (H, W), (H, W, 1) or (H, W, 3) -> float32 tensor (channels, H, W) in [-1, 1].

    x = u / 127.5 - 1 maps 0 -> -1 and 255 -> 1. Grey inputs are repeated to 3
    channels; RGB inputs are reduced to luma for ``channels=1``.
    """
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    # NumPy is single-threaded here: for one small image that is faster than torch's parallel kernels.
    x = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    x /= 127.5
    x -= 1.0
    return to_channels(torch.from_numpy(x), channels)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) with C in {1, 3} -> (channels, H, W): repeat grey or take BT.601 luma."""
    channels = check_channels(channels)
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).clone()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(dim=-3, keepdim=True)
    raise ValueError(f"cannot convert an image with {c} channels to {channels}")


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (C, h, w) to (C, size, size): bilinear with antialiasing when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.squeeze(0)


def center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred square (top, left, bottom, right) inside an ``height x width`` image."""
    side = min(height, width)
    top = (height - side) // 2
    left = (width - side) // 2
    return top, left, top + side, left + side
