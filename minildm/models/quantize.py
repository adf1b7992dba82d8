"""Vector quantisation for the VQ-regularised first stage (VQ-VAE / VQGAN).

Paper, Sec. 3.1: "VQ-reg. uses a vector quantization layer [van den Oord et al.]
within the decoder". Each encoder output vector z_e(x)_{ij} ∈ R^{e_dim} is replaced
by its nearest entry of a learned codebook {e_k}_{k=1..n_e}:

    z_q_{ij} = e_{k*},   k* = argmin_k ||z_e_{ij} − e_k||².

Because argmin has no gradient, the straight-through estimator copies the
gradient of z_q to z_e: ``z_q = z_e + sg[z_q − z_e]`` (``sg`` = stop-gradient,
``.detach()``). The codebook and the encoder are trained with

    L_VQ = ||sg[z_e] − e||²  +  β ||z_e − sg[e]||²
           (codebook term)      (commitment term)

(van den Oord et al. 2017, eq. 3; means over all elements as in taming-transformers).
The codebook term moves the codes towards the encoder outputs; the commitment term,
weighted by β (0.25), keeps the encoder outputs close to their codes.

Note on ``legacy=True``: taming-transformers' original ``VectorQuantizer`` (and
``VectorQuantizer2(legacy=True)``, the default CompVis keeps) computes
``mean((sg[z_q] − z_e)²) + β·mean((z_q − sg[z_e])²)``, i.e. β multiplies the
*codebook* term instead of the commitment term. ``legacy=True`` reproduces that
weighting; the default ``legacy=False`` is the paper's formula above.

Taught in notebook 01.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QuantizerInfo", "VectorQuantizer"]


@dataclass
class QuantizerInfo:
    """What the quantiser reports besides z_q and the loss.

    Attributes:
        indices: (B, h, w) long tensor, the chosen code k* at each latent position.
        perplexity: scalar tensor, exp(H(p)) with p the code-usage histogram of the batch;
            equals the number of codes used when they are used uniformly, 1 for collapse.
        usage: scalar tensor, fraction of the n_e codes used at least once in the batch.
        codebook_loss: scalar, ||sg[z_e] − e||² (mean).
        commitment_loss: scalar, ||z_e − sg[e]||² (mean, before β).
    """

    indices: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        """Dict-style access, e.g. ``info["perplexity"]``."""
        if key not in self.__dataclass_fields__:
            raise KeyError(f"{key!r}; fields are {', '.join(self.__dataclass_fields__)}")
        return getattr(self, key)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with straight-through gradients.

    Args:
        n_e: number of codebook entries (the paper's |Z|, e.g. 8192 for VQ-f4).
        e_dim: dimension of each entry; equals the channel count of the input.
        beta: commitment weight β (0.25 as in VQ-VAE / taming).
        legacy: put β on the codebook term, as taming's original implementation (see module doc).

        restart_dead_codes: keep the codebook alive during training (see below).

    The codebook ``embedding.weight`` (n_e, e_dim) starts uniform in (−1/n_e, 1/n_e) as in taming.
    With ``restart_dead_codes`` (default), training also (a) sets the codebook from encoder outputs
    of the first training batch (a data-dependent initialisation, as SoundStream's k-means init
    without the k-means), and (b) replaces codes whose running usage falls below 1% of uniform use
    by encoder outputs of the current batch (a "codebook restart", Dhariwal et al. 2020, Jukebox).
    Both fight codebook collapse, the usual failure of short VQ runs, where a handful of codes
    take every position. They change only ``embedding.weight`` (outside autograd) and the buffers
    ``initialized`` and ``usage_ema``; evaluation is unaffected, and restarts draw from torch's
    global RNG, so seeded training stays deterministic.

    Forward: z (B, e_dim, h, w) -> (z_q (B, e_dim, h, w), loss (scalar), :class:`QuantizerInfo`).
    """

    #: decay of the running code usage, and the fraction of uniform use under which a code is dead
    usage_decay: float = 0.99
    dead_fraction: float = 0.01

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, legacy: bool = False,
                 restart_dead_codes: bool = True) -> None:
        super().__init__()
        for name, value in (("n_e", n_e), ("e_dim", e_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not float(beta) >= 0.0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = float(beta)
        self.legacy = bool(legacy)
        self.restart_dead_codes = bool(restart_dead_codes)
        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("usage_ema", torch.full((n_e,), 1.0 / n_e))

    def extra_repr(self) -> str:
        return f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, legacy={self.legacy}"

    #: rows of the (N, n_e) distance matrix computed at once: bounds its memory to ~128 MB
    max_distance_elements: int = 2**25

    def nearest_indices(self, z_flat: torch.Tensor) -> torch.Tensor:
        """k* = argmin_k ||z − e_k||² for each row of ``z_flat`` (N, e_dim) -> (N,) long.

        Uses ||z||² + ||e||² − 2 z·e in float32 with autocast disabled (half precision
        would make near ties pick wrong codes), in chunks of rows so that large batches
        with large codebooks (e.g. 32k positions × 8192 codes) stay within memory.
        """
        with torch.autocast(device_type=z_flat.device.type, enabled=False):
            e32 = self.embedding.weight.float()
            e_sq = e32.pow(2).sum(1)
            rows = max(1, self.max_distance_elements // self.n_e)
            out = []
            for chunk in z_flat.float().split(rows):
                d = chunk.pow(2).sum(1, keepdim=True) + e_sq[None, :] - 2.0 * chunk @ e32.t()
                out.append(d.argmin(dim=1))
            return torch.cat(out) if len(out) != 1 else out[0]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerInfo]:
        if z.ndim != 4:
            raise ValueError(f"VectorQuantizer expects (B, {self.e_dim}, h, w), got shape {tuple(z.shape)}")
        if z.shape[1] != self.e_dim:
            raise ValueError(f"VectorQuantizer expects {self.e_dim} channels (e_dim), got {z.shape[1]} "
                             f"(shape {tuple(z.shape)})")
        b, c, h, w = z.shape
        z_perm = z.permute(0, 2, 3, 1)  # (B, h, w, C)
        z_flat = z_perm.reshape(-1, c)
        training = self.training and self.restart_dead_codes and torch.is_grad_enabled()
        if training and not bool(self.initialized):
            self._reset_codes(torch.ones(self.n_e, dtype=torch.bool, device=z.device), z_flat)
            self.initialized.fill_(True)
        idx = self.nearest_indices(z_flat.detach())
        z_q = self.embedding(idx).view(b, h, w, c).to(z.dtype)

        codebook_loss = F.mse_loss(z_q, z_perm.detach())   # ||sg[z_e] − e||²
        commitment_loss = F.mse_loss(z_perm, z_q.detach())  # ||z_e − sg[e]||²
        if self.legacy:
            loss = self.beta * codebook_loss + commitment_loss
        else:
            loss = codebook_loss + self.beta * commitment_loss

        # straight-through estimator: forward value z_q, gradient w.r.t. z is identity
        z_q = z_perm + (z_q - z_perm).detach()
        z_q = z_q.permute(0, 3, 1, 2).contiguous()

        perplexity, usage = self.code_statistics(idx)
        if training:
            self._restart_dead(idx, z_flat)
        info = QuantizerInfo(indices=idx.view(b, h, w), perplexity=perplexity, usage=usage,
                             codebook_loss=codebook_loss.detach(), commitment_loss=commitment_loss.detach())
        return z_q, loss, info

    @torch.no_grad()
    def _reset_codes(self, which: torch.Tensor, z_flat: torch.Tensor) -> None:
        """Set the codes selected by the bool mask ``which`` (n_e,) to random rows of ``z_flat``."""
        n = int(which.sum())
        if n == 0:
            return
        rows = torch.randint(0, z_flat.shape[0], (n,), device=z_flat.device)
        self.embedding.weight.data[which] = z_flat.detach()[rows].to(self.embedding.weight.dtype)
        self.usage_ema[which] = 1.0 / self.n_e

    @torch.no_grad()
    def _restart_dead(self, indices: torch.Tensor, z_flat: torch.Tensor) -> None:
        """Update the running usage with this batch's histogram and restart the dead codes."""
        counts = torch.bincount(indices.reshape(-1), minlength=self.n_e).float()
        self.usage_ema.mul_(self.usage_decay).add_(counts / counts.sum(), alpha=1.0 - self.usage_decay)
        self._reset_codes(self.usage_ema < self.dead_fraction / self.n_e, z_flat)

    def code_statistics(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Perplexity exp(−Σ_k p_k log p_k) and used fraction of the codebook for ``indices``."""
        flat = indices.reshape(-1)
        counts = torch.zeros(self.n_e, device=flat.device, dtype=torch.float32)
        counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
        p = counts / counts.sum().clamp_min(1.0)
        entropy = -(p * torch.log(p.clamp_min(1e-10))).sum()
        return entropy.exp(), (counts > 0).float().mean()

    def embed_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook lookup: indices (B, h, w) long -> z_q (B, e_dim, h, w)."""
        if indices.ndim != 3:
            raise ValueError(f"indices must have shape (B, h, w), got {tuple(indices.shape)}")
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.n_e):
            raise ValueError(f"indices must lie in [0, {self.n_e - 1}], got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def get_codebook_entry(self, indices: torch.Tensor,
                           shape: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """taming's lookup: ``indices`` (B, h, w) or flat (B·h·w,), ``shape`` = (B, h, w, e_dim).

        Returns z_q of shape (B, e_dim, h, w).
        """
        if shape is None:
            return self.embed_code(indices)
        if len(shape) != 4 or shape[3] != self.e_dim:
            raise ValueError(f"shape must be (B, h, w, {self.e_dim}), got {tuple(shape)}")
        b, h, w, _ = shape
        if indices.numel() != b * h * w:
            raise ValueError(f"{indices.numel()} indices do not fit shape (B, h, w) = ({b}, {h}, {w})")
        return self.embed_code(indices.reshape(b, h, w))
