"""Multi-process training with ``torch.distributed`` (launched by ``torchrun``).

Data parallelism as in DistributedDataParallel: every process (rank r of W) holds a full copy
of the model, computes the loss on its own slice of the **global batch** and, during backward,
the gradients are averaged over all ranks (an all-reduce), so every rank applies the same
update. With equal slices the averaged gradient is the gradient of the global batch's mean loss:

    ∇ (1/B) Σ_{i<B} ℓ_i  =  (1/W) Σ_r ∇ (W/B) Σ_{i ∈ slice r} ℓ_i,

which is why a run on W processes equals a run on one process with the same global batch (up to
floating-point summation order). Gradient accumulation splits each rank's slice further into
micro-batches whose gradients are summed before the all-reduce (``DDP.no_sync``).

``torchrun --nproc_per_node N -m minildm train-ldm ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and
joins the process group (NCCL on CUDA, Gloo on CPU). Without them everything runs in one
process and the helpers here are no-ops.

Taught in notebook 05.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "dist_info", "is_main", "barrier", "all_reduce_mean", "all_reduce_max",
           "shard_bounds", "cleanup", "local_only"]

_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("minildm_local_only", default=False)


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within this block the process acts alone (rank 0 of 1), even inside a process group: e.g.
    rank 0 building an artifact the job depends on while the other ranks wait at a barrier."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """The process group's :class:`DistInfo` (rank 0 of 1 when none is initialised)."""
    if dist.is_available() and dist.is_initialized() and not _LOCAL.get():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_distributed(device: str | torch.device | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and pick the device.

    Backend: NCCL when the device is CUDA (each process takes ``cuda:LOCAL_RANK``), else Gloo.
    Returns (:class:`DistInfo`, device). Without ``torchrun``: (rank 0 of 1, ``get_device(device)``).
    """
    from .device import get_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = get_device(device)
    if world <= 1:
        return DistInfo(), dev
    if dev.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                             "use --nproc_per_node <= the number of GPUs")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist_info(), dev


def is_main() -> bool:
    """Whether this is rank 0 (the process that writes files and shows progress)."""
    return dist_info().rank == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist_info().distributed:
        dist.barrier()


def _all_reduce(value: float, op: dist.ReduceOp, device: torch.device) -> float:
    if not dist_info().distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of ``value`` over all ranks (``value`` itself in one process)."""
    return _all_reduce(value, dist.ReduceOp.SUM, torch.device(device)) / dist_info().world_size


def all_reduce_max(value: float, device: torch.device | str = "cpu") -> float:
    """The maximum of ``value`` over all ranks (e.g. a stop flag every rank must agree on)."""
    return _all_reduce(value, dist.ReduceOp.MAX, torch.device(device))


def shard_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi): rank's contiguous slice of ``total`` samples; ValueError unless world_size divides total."""
    if total % world_size:
        raise ValueError(f"the global batch of {total} does not split evenly over {world_size} processes: "
                         f"choose a batch size divisible by {world_size}")
    n = total // world_size
    return rank * n, (rank + 1) * n


def cleanup() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
