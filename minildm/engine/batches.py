"""Deterministic batches for the Trainer: batch ``step`` is a pure function of (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would, and a data-parallel run splits the
same global batch across ranks (:class:`DatasetBatches`, :class:`LatentBatches`, :class:`BatchRandom`).
Taught in notebooks 03 (pre-encoded latents) and 05 (data parallelism).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["BatchRandom", "DatasetBatches", "LatentBatches", "batch_len", "default_collate_fn", "move_to_device", "slice_batch"]


class DatasetBatches:
    """Deterministic batches from a map-style dataset: batch(step) depends only on (seed, step).

    Sample number i = step·B + j (j < B) lies in epoch e = i // len(dataset) at position
    i mod len(dataset) of that epoch's permutation, drawn from ``torch.Generator`` seeded
    with (seed, e). No iterator state exists, so resuming at any step gives the same batches
    as an uninterrupted run.

    Args:
        dataset: map-style dataset (``__len__``, ``__getitem__``).
        batch_size: B.
        seed: seed of the per-epoch permutations.
        collate_fn: list of items -> batch (default: :func:`minildm.data.collate` if present,
            else ``torch.utils.data.default_collate``).
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0,
                 collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ValueError("DatasetBatches needs a map-style dataset with __len__ and __getitem__ "
                             f"(got {type(dataset).__name__}); pass a finite dataset, e.g. "
                             "load_dataset(..., length=N)")
        if len(dataset) < 1:
            raise ValueError("DatasetBatches: the dataset is empty")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed)
        self.collate_fn = collate_fn or default_collate_fn()
        self._perms: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        """Batches per epoch (rounded up)."""
        return math.ceil(len(self.dataset) / self.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch ``epoch``: a permutation of range(len(dataset)) seeded by (seed, epoch)."""
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 7_919 + 17) % (2**63))
            self._perms[epoch] = torch.randperm(len(self.dataset), generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        """Dataset indices of batch ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n = len(self.dataset)
        out = []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(i, n)
            out.append(int(self.permutation(epoch)[pos]))
        return out

    def batch(self, step: int, part: tuple[int, int] | None = None) -> Any:
        """The collated batch of step ``step``; ``part=(lo, hi)``: only its samples lo … hi − 1
        (one rank's slice of the global batch; the others are not loaded)."""
        idx = self.indices(step)
        if part is not None:
            idx = idx[part[0]:part[1]]
        return self.collate_fn([self.dataset[i] for i in idx])


class BatchRandom:
    """Random numbers per sample of the global batch, independent of how it is split.

    Draw k of step s is one tensor of shape (``total``, ...) from a generator seeded by (seed, s, k);
    the holder of samples [lo, hi) gets rows lo … hi − 1 of it. Every rank and micro-batch thus sees
    the numbers a single process would have drawn for the same samples (diffusion timesteps, noise,
    conditioning dropout), which makes data-parallel runs equal to one-process runs.
    """

    def __init__(self, seed: int, step: int, lo: int, hi: int, total: int, device: torch.device | str = "cpu") -> None:
        if not 0 <= lo < hi <= total:
            raise ValueError(f"need 0 <= lo < hi <= total, got lo={lo}, hi={hi}, total={total}")
        self.seed, self.step, self.lo, self.hi, self.total = int(seed), int(step), lo, hi, total
        self.device = torch.device(device)
        self._draws = 0

    def _generator(self) -> torch.Generator:
        self._draws += 1
        key = (self.seed * 1_000_003 + self.step * 7_919 + self._draws * 104_729 + 12_345) % (2**63)
        return torch.Generator().manual_seed(key)

    def randn(self, *shape: int) -> torch.Tensor:
        """N(0, I) of shape (hi − lo, *shape)."""
        return torch.randn((self.total, *shape), generator=self._generator())[self.lo:self.hi].to(self.device)

    def rand(self) -> torch.Tensor:
        """U[0, 1) of shape (hi − lo,)."""
        return torch.rand(self.total, generator=self._generator())[self.lo:self.hi].to(self.device)

    def randint(self, high: int) -> torch.Tensor:
        """Integers in [0, high) of shape (hi − lo,)."""
        return torch.randint(0, high, (self.total,), generator=self._generator())[self.lo:self.hi].to(self.device)


def batch_len(batch: Any) -> int:
    """Number of samples of a batch (tensor, list, or dict of those: its first entry)."""
    if isinstance(batch, Mapping):
        return batch_len(next(iter(batch.values())))
    if isinstance(batch, (torch.Tensor, list, tuple)):
        return len(batch)
    raise TypeError(f"cannot tell the size of a batch of type {type(batch).__name__}")


def slice_batch(batch: Any, lo: int, hi: int) -> Any:
    """Samples lo … hi − 1 of a batch (tensors, lists, and dicts of those, nested)."""
    if isinstance(batch, Mapping):
        return {k: slice_batch(v, lo, hi) for k, v in batch.items()}
    if isinstance(batch, (torch.Tensor, list, tuple)):
        return batch[lo:hi]
    return batch


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a nested batch (dict/list/tuple) to ``device``; other leaves stay."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(v, device) for v in batch]
        return type(batch)(moved) if isinstance(batch, list) else tuple(moved)
    return batch


class LatentBatches:
    """Deterministic batches of pre-encoded, scaled latents (and their conditions):
    ``batch(step) -> {"latent": (B, c, h, w)[, "cond": ...]}``.

    Encodes the images once with ``ldm.encode_first_stage`` (scale factor included); batch ``step``
    is a pure function of (seed, step), as in :class:`minildm.engine.batches.DatasetBatches`. ``cond``, if
    given, holds one condition per latent: a tensor (N, ...) (e.g. class labels) or a dict of such
    tensors (e.g. a layout from :func:`minildm.conditioning.layout.layout_from_objects`).

    ``concat``, if given, holds a spatial condition per latent (a dict of tensors (N, ...), e.g. the
    low-resolution images of super-resolution), returned as ``batch["concat"]``; ``augment(concat,
    generator)`` may add random parts to it per batch (e.g. inpainting holes), drawn from a generator
    seeded by (seed, step) over the whole global batch, so that resumed and data-parallel runs see the same.
    """

    def __init__(self, latents: torch.Tensor, batch_size: int, seed: int = 0,
                 cond: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
                 concat: Mapping[str, torch.Tensor] | None = None,
                 augment: Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]] | None = None
                 ) -> None:
        from .batches import DatasetBatches

        if latents.ndim != 4 or latents.shape[0] < 1:
            raise ValueError(f"latents must have shape (N >= 1, c, h, w), got {tuple(latents.shape)}")
        n = latents.shape[0]
        if cond is not None:
            lengths = {len(v) for v in (cond.values() if isinstance(cond, Mapping) else [cond])}
            if lengths != {n}:
                raise ValueError(f"cond must hold one condition per latent ({n}), got lengths {sorted(lengths)}")
        if concat is not None and {len(v) for v in concat.values()} != {n}:
            raise ValueError(f"concat must hold one condition per latent ({n}), got lengths "
                             f"{sorted({len(v) for v in concat.values()})}")
        self.latents = latents
        self.cond = cond
        self.concat = concat
        self.augment = augment
        self.seed = int(seed)
        self._order = DatasetBatches(range(n), batch_size, seed=seed, collate_fn=list)

    @classmethod
    @torch.no_grad()
    def encode(cls, ldm: nn.Module, images: torch.Tensor, batch_size: int, seed: int = 0,
               encode_batch: int = 64, cond: Any = None) -> "LatentBatches":
        """Encode ``images`` (N, 3, H, W) with the LDM's frozen first stage, on its device."""
        device = ldm.scale_factor.device
        z = torch.cat([ldm.encode_first_stage(b.to(device)).cpu() for b in images.split(encode_batch)])
        return cls(z, batch_size, seed, cond)

    @classmethod
    @torch.no_grad()
    def encode_dataset(cls, ldm: nn.Module, dataset: Any, batch_size: int, seed: int = 0, cond_key: str | None = None,
                       encode_batch: int = 64, progress: bool = False, desc: str = "encoding latents") -> "LatentBatches":
        """Encode every item's ``"image"`` of a map-style ``dataset`` once, ``encode_batch`` images at a
        time (they are never all in memory, only the latents are); ``cond_key``: the item entry
        kept as each latent's condition (e.g. ``"caption"``). Training on these latents equals
        encoding each batch again at every step (E is frozen and z is the posterior's mode), and
        saves the first stage's forward pass and the data rendering at every step."""
        from tqdm.auto import tqdm

        n = len(dataset)
        if n < 1:
            raise ValueError("encode_dataset: the dataset is empty")
        device = ldm.scale_factor.device
        latents, cond = [], []
        for start in tqdm(range(0, n, encode_batch), desc=desc, disable=not progress, leave=False):
            items = [dataset[i] for i in range(start, min(start + encode_batch, n))]
            latents.append(ldm.encode_first_stage(torch.stack([it["image"] for it in items]).to(device)).cpu())
            if cond_key is not None:
                cond += [it[cond_key] for it in items]
        return cls(torch.cat(latents), batch_size, seed, cond if cond_key is not None else None)

    def __len__(self) -> int:
        return len(self._order)

    @property
    def batch_size(self) -> int:
        return self._order.batch_size

    def batch(self, step: int, part: tuple[int, int] | None = None) -> dict[str, Any]:
        """Batch ``step``; ``part=(lo, hi)``: only its samples lo … hi − 1 (one rank's slice)."""
        idx = self._order.indices(step)
        concat = None
        if self.concat is not None:
            concat = {k: v[idx] for k, v in self.concat.items()}
            if self.augment is not None:  # drawn for the global batch, then sliced
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + step * 7_919 + 4_242) % (2**63))
                concat = self.augment(concat, g)
            if part is not None:
                concat = {k: v[part[0]:part[1]] for k, v in concat.items()}
        if part is not None:
            idx = idx[part[0]:part[1]]
        out: dict[str, Any] = {"latent": self.latents[idx]}
        if concat is not None:
            out["concat"] = concat
        if isinstance(self.cond, Mapping):
            out["cond"] = {k: v[idx] for k, v in self.cond.items()}
        elif isinstance(self.cond, (list, tuple)):  # e.g. captions
            out["cond"] = [self.cond[i] for i in idx]
        elif self.cond is not None:
            out["cond"] = self.cond[idx]
        return out


def default_collate_fn() -> Callable[[list[Any]], Any]:
    try:
        from ..data import collate  # type: ignore[attr-defined]

        return collate
    except ImportError:
        from torch.utils.data import default_collate

        return default_collate
