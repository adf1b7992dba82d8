"""Where and how a run computes: the device (cuda, mps, cpu), the autocast dtype for it, and seeding.

Used by the Trainer and every recipe; ``MINILDM_DEVICE`` overrides the device choice.

Every notebook picks its device here in its first cell.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["DEVICE_ENV", "autocast_dtype", "get_device", "seed_everything"]


DEVICE_ENV = "MINILDM_DEVICE"


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Choose the device: the argument, else ``$MINILDM_DEVICE``, else cuda > mps > cpu.

    Raises ValueError for a device that is not available here.
    """
    if device is None:
        device = os.environ.get(DEVICE_ENV) or None
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use cpu or mps")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but MPS is not available; use cpu or cuda")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device type {dev.type!r}: use cpu, cuda or mps")
    return dev


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """Mixed-precision dtype for ``torch.autocast`` on ``device``, or None for full fp32.

    CUDA: bfloat16 where supported (Ampere and newer), else float16 (with a GradScaler).
    CPU and MPS: None; autocast there is slower than fp32 for these small convnets.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def cpu_precision(requested: str) -> str:
    """The autocast precision a CPU trains with when ``requested`` ("fp32" or "bf16"): "bf16" only where
    oneDNN reports bfloat16 units (AVX-512 BF16 / AMX), since emulated bf16 is slower than fp32."""
    if requested not in ("fp32", "bf16"):
        raise ValueError(f"unknown CPU precision {requested!r}: choose fp32 or bf16")
    if requested == "fp32":
        return "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return "fp32"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded alike."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
