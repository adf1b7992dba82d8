"""Training throughput and model-FLOPs utilisation (MFU).

MFU = (model FLOPs of a training step / step time) / the hardware's peak FLOP rate. The model
FLOPs are counted, not estimated: :func:`count_flops` runs one forward + backward under
:class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention; the
elementwise work, which is small, is not counted, as in the usual MFU definition). The peak is a
nominal figure for known GPUs in the autocast dtype and otherwise *measured*
(:func:`measured_peak_flops`: a large matmul), and the report says which.

Taught in notebooks 02 (UNet cost per f) and 05 (images/s, MFU).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["count_flops", "measured_peak_flops", "peak_flops", "Throughput"]

#: nominal dense peak FLOP/s (bf16 / fp16 tensor cores) of common training GPUs, by name fragment
NOMINAL_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                "RTX 4090": 165e12, "V100": 125e12, "T4": 65e12}


def count_flops(fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``fn()`` (a loss) and its backward, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = fn()
        loss.backward()
    return int(counter.get_total_flops())


def measured_peak_flops(device: torch.device | str, dtype: torch.dtype | None = None, n: int | None = None,
                        repeats: int = 5) -> float:
    """FLOP/s of an n × n matmul on ``device`` (best of ``repeats``): a practical peak."""
    device = torch.device(device)
    dtype = dtype or torch.float32
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device: torch.device | str, dtype: torch.dtype | None = None) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained): nominal for known GPUs with a 16-bit dtype, else measured."""
    device = torch.device(device)
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for key, value in NOMINAL_PEAK.items():
            if key in name:
                return value, f"nominal dense 16-bit peak of {name}"
    return measured_peak_flops(device, dtype), f"measured {str(dtype or torch.float32).removeprefix('torch.')} matmul peak on {device}"


class Throughput:
    """Trainer callback: adds ``images_per_s`` (global batch / step time) and ``mfu`` to log rows.

    Args:
        global_batch: samples per optimizer step over all processes.
        flops_per_step: model FLOPs of one step over all processes (None: no MFU).
        peak: peak FLOP/s of *one* device (None: no MFU); the job's peak is peak × world size.
        world_size: number of processes.
    """

    def __init__(self, global_batch: int, flops_per_step: float | None = None, peak: float | None = None,
                 world_size: int = 1) -> None:
        self.global_batch, self.flops_per_step, self.peak, self.world_size = global_batch, flops_per_step, peak, world_size

    def after_step(self, trainer: Any, record: dict[str, Any]) -> None:
        step_s = trainer.last_step_s
        if not step_s > 0:
            return
        record["images_per_s"] = self.global_batch / step_s
        if self.flops_per_step and self.peak:
            record["mfu"] = self.flops_per_step / step_s / (self.peak * self.world_size)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_time(fn: Any, device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class SavedTensorBytes:
    """Bytes of the tensors autograd keeps for the backward pass (each storage counted once)."""

    def __init__(self) -> None:
        self.storages: dict[tuple[Any, int], int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            self.storages[(t.device, storage.data_ptr())] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. wrapped)
            self.storages[(t.device, id(t))] = t.numel() * t.element_size()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())
