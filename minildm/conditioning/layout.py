"""τ_θ for layouts (paper Sec. 4.3.2, layout-to-image): one token per object, built from its
box (Fourier features of x0, y0, x1, y1) and its attributes, read by a small transformer; a learned
begin token is always present and ∅ is the begin token alone. Layout {"boxes": (B, N, 4),
"shape": (B, N), "colour": (B, N), "valid": (B, N)} -> context (B, 1 + N, embed_dim), mask
(B, 1 + N). Taught in notebook 04.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import Conditioning, check_drop, register_conditioner

__all__ = ["LayoutEmbedder", "fourier_features", "layout_from_objects"]


def layout_from_objects(objects: Sequence[Sequence[Mapping[str, Any]]], max_objects: int,
                        device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Tensors of a batch of layouts: each layout a list of objects (the shapes data's ``objects``:
    dicts with ``box`` (x0, y0, x1, y1) in [0, 1], ``shape_id``, ``colour_id``).

    Returns ``boxes`` (B, N, 4), ``shape`` (B, N), ``colour`` (B, N) and ``valid`` (B, N) with
    N = ``max_objects`` (padding: zeros, invalid). ValueError for more objects than N.
    """
    b = len(objects)
    boxes = torch.zeros(b, max_objects, 4)
    shape = torch.zeros(b, max_objects, dtype=torch.long)
    colour = torch.zeros(b, max_objects, dtype=torch.long)
    valid = torch.zeros(b, max_objects, dtype=torch.bool)
    for i, objs in enumerate(objects):
        if len(objs) > max_objects:
            raise ValueError(f"layout {i} has {len(objs)} objects; this embedder takes at most {max_objects}")
        for j, o in enumerate(objs):
            boxes[i, j] = torch.as_tensor(o["box"], dtype=torch.float32)
            shape[i, j], colour[i, j], valid[i, j] = int(o["shape_id"]), int(o["colour_id"]), True
    return {k: v.to(device) for k, v in
            {"boxes": boxes, "shape": shape, "colour": colour, "valid": valid}.items()}


def fourier_features(x: Tensor, n_freqs: int) -> Tensor:
    """[sin(2^k π x), cos(2^k π x)] for k < n_freqs, per coordinate: (..., D) -> (..., 2 · n_freqs · D)."""
    freqs = (2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


@register_conditioner("layout")
class LayoutEmbedder(nn.Module):
    """τ_θ(layout): one token per object, read by a small transformer (paper Sec. 4.3.2).

    Token of object j: ``W_box · fourier(box_j) + E_shape[shape_j] + E_colour[colour_j]``; a
    learned begin token comes first and is always valid, so ∅ (no objects) is the begin token
    alone. ``depth`` pre-LayerNorm transformer encoder layers (``heads`` heads) mix the tokens;
    padded objects are masked out of it and of the UNet's cross-attention.

    Args:
        n_shapes, n_colours: sizes of the attribute vocabularies (7 and 8 for the shapes data).
        embed_dim: d_τ; max_objects: N; depth, heads: the transformer's; n_freqs: Fourier bands.

    Shapes: layout dict (:func:`layout_from_objects`) or a list of object lists ->
    context (B, 1 + N, embed_dim), mask (B, 1 + N).
    """

    def __init__(self, n_shapes: int, n_colours: int, embed_dim: int, max_objects: int = 3, depth: int = 2,
                 heads: int = 4, n_freqs: int = 8, key: str = "objects") -> None:
        super().__init__()
        for name, v in (("n_shapes", n_shapes), ("n_colours", n_colours), ("embed_dim", embed_dim),
                        ("max_objects", max_objects), ("depth", depth), ("heads", heads), ("n_freqs", n_freqs)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by heads={heads}")
        self.n_shapes, self.n_colours, self.embed_dim = n_shapes, n_colours, embed_dim
        self.max_objects, self.depth, self.heads, self.n_freqs, self.key = max_objects, depth, heads, n_freqs, key
        self.box_proj = nn.Linear(4 * 2 * n_freqs, embed_dim)
        self.shape_embedding = nn.Embedding(n_shapes, embed_dim)
        self.colour_embedding = nn.Embedding(n_colours, embed_dim)
        self.begin = nn.Parameter(torch.randn(embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, heads, 4 * embed_dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    def config(self) -> dict[str, Any]:
        return {"type": "layout", "n_shapes": self.n_shapes, "n_colours": self.n_colours,
                "embed_dim": self.embed_dim, "max_objects": self.max_objects, "depth": self.depth,
                "heads": self.heads, "n_freqs": self.n_freqs, "key": self.key}

    def _check(self, layout: Mapping[str, Tensor]) -> None:
        boxes, valid = layout["boxes"], layout["valid"]
        b = boxes.shape[0]
        if boxes.shape != (b, self.max_objects, 4) or valid.shape != (b, self.max_objects):
            raise ValueError(f"layout must have boxes (B, {self.max_objects}, 4) and valid (B, {self.max_objects}), "
                             f"got {tuple(boxes.shape)} and {tuple(valid.shape)}")
        vb = boxes[valid]
        if vb.numel() and (bool((vb < 0).any()) or bool((vb > 1).any())
                           or bool((vb[:, 2] <= vb[:, 0]).any()) or bool((vb[:, 3] <= vb[:, 1]).any())):
            raise ValueError("boxes must lie inside the image: (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and "
                             "0 <= y0 < y1 <= 1 (normalised coordinates)")
        for name, n in (("shape", self.n_shapes), ("colour", self.n_colours)):
            ids = layout[name][valid]
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
                raise ValueError(f"unknown {name} id in the layout: ids must be in 0 … {n - 1}")

    def forward(self, layout: Mapping[str, Tensor] | Sequence[Sequence[Mapping[str, Any]]],
                drop: Tensor | None = None) -> Conditioning:
        device = self.begin.device
        if not isinstance(layout, Mapping):
            layout = layout_from_objects(layout, self.max_objects)
        layout = {k: torch.as_tensor(v).to(device) for k, v in layout.items()}
        self._check(layout)
        valid = layout["valid"].bool()
        drop = check_drop(drop, valid.shape[0])
        if drop is not None:
            valid = valid & ~drop.to(device)[:, None]
        tokens = (self.box_proj(fourier_features(layout["boxes"].float(), self.n_freqs))
                  + self.shape_embedding(layout["shape"].long()) + self.colour_embedding(layout["colour"].long()))
        b = tokens.shape[0]
        tokens = torch.cat([self.begin.expand(b, 1, -1), tokens], dim=1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=device), valid], dim=1)
        h = self.transformer(tokens, src_key_padding_mask=~mask)
        return self.norm(h) * mask[..., None], mask

    def null(self, batch_size: int) -> Conditioning:
        """∅: the begin token alone (B, 1 + N, embed_dim), mask (B, 1 + N)."""
        empty = {"boxes": torch.zeros(batch_size, self.max_objects, 4),
                 "shape": torch.zeros(batch_size, self.max_objects, dtype=torch.long),
                 "colour": torch.zeros(batch_size, self.max_objects, dtype=torch.long),
                 "valid": torch.zeros(batch_size, self.max_objects, dtype=torch.bool)}
        return self(empty)
