"""Attention layers.

:class:`AttnBlock` is the single-head spatial self-attention of the CompVis
autoencoder and of the middle of its Encoder/Decoder: every one of the h·w
positions attends to every other one,

    Attention(Q, K, V) = softmax(Q Kᵀ / √c) V,

with Q, K, V given by 1×1 convolutions of the group-normalised input and a
residual connection around a final 1×1 projection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DEFAULT_NUM_GROUPS, Normalize

__all__ = ["AttnBlock"]


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (CompVis ``AttnBlock``).

    ``x + proj_out(softmax(q kᵀ / √C) v)`` where ``q, k, v`` are 1×1 convolutions of
    ``norm(x)``, taken over the H·W positions. The product is computed with
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused / memory-efficient
    kernels where the device has them).

    Parameters are named as in CompVis: ``norm``, ``q``, ``k``, ``v``, ``proj_out``.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, in_channels: int, num_groups: int = DEFAULT_NUM_GROUPS) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        self.in_channels = in_channels
        self.norm = Normalize(in_channels, num_groups)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        b, c, h, w = h_.shape
        # (B, C, H, W) -> (B, 1, H·W, C): one head, sequence of H·W tokens of width C
        q = self.q(h_).reshape(b, 1, c, h * w).transpose(-1, -2)
        k = self.k(h_).reshape(b, 1, c, h * w).transpose(-1, -2)
        v = self.v(h_).reshape(b, 1, c, h * w).transpose(-1, -2)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/√C by default
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)
