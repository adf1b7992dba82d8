"""τ_θ for class labels (CompVis ``ClassEmbedder``): one learned token per class, plus a learned
null class ∅ for classifier-free guidance. Labels (B,) -> context (B, 1, embed_dim). Taught in notebook 04.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import Conditioning, check_drop, register_conditioner

__all__ = ["ClassEmbedder"]


@register_conditioner("class")
class ClassEmbedder(nn.Module):
    """τ_θ(y) = embedding[y]: a class label as one token (CompVis ``ClassEmbedder``).

    Args:
        n_classes: labels are 0 … n_classes − 1; index ``n_classes`` is the null class ∅.
        embed_dim: width d_τ of the token (the UNet's ``context_dim``).
        key: the data item's field holding the label (``"label"`` for the shapes data).

    Shapes: labels (B,) int -> context (B, 1, embed_dim), mask None.
    """

    def __init__(self, n_classes: int, embed_dim: int, key: str = "label") -> None:
        super().__init__()
        for name, v in (("n_classes", n_classes), ("embed_dim", embed_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.n_classes, self.embed_dim, self.key = n_classes, embed_dim, key
        self.embedding = nn.Embedding(n_classes + 1, embed_dim)

    def config(self) -> dict[str, Any]:
        return {"type": "class", "n_classes": self.n_classes, "embed_dim": self.embed_dim, "key": self.key}

    def forward(self, labels: Tensor | Sequence[int], drop: Tensor | None = None) -> Conditioning:
        device = self.embedding.weight.device
        y = torch.as_tensor(labels, device=device)
        if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"labels must be integers of shape (B,), got {tuple(y.shape)} {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(f"unknown class in {y.tolist()}: labels must be in 0 … {self.n_classes - 1}")
        drop = check_drop(drop, len(y))
        if drop is not None:
            y = torch.where(drop.to(device), torch.full_like(y, self.n_classes), y)
        return self.embedding(y.long())[:, None, :], None

    def null(self, batch_size: int) -> Conditioning:
        """∅ for ``batch_size`` samples: (B, 1, embed_dim), None."""
        y = torch.full((batch_size,), self.n_classes, dtype=torch.long, device=self.embedding.weight.device)
        return self.embedding(y)[:, None, :], None
