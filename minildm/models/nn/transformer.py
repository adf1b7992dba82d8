"""Cross-attention: the conditioning mechanism of the paper (Sec. 3.3, Eq. 3; CompVis
``ldm/modules/attention.py``).

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) · V,   Q = W_Q φ_i(z_t),  K = W_K τ_θ(y),  V = W_V τ_θ(y)

:class:`SpatialTransformer` turns a feature map (B, C, H, W) into H·W tokens, applies
:class:`BasicTransformerBlock` (self-attention, cross-attention to the context (B, L, d_τ),
feed-forward with GEGLU) and turns them back. Without a context, cross-attention attends to the
tokens themselves. Taught in notebook 04.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .layers import DEFAULT_NUM_GROUPS, Normalize, zero_module

__all__ = ["BasicTransformerBlock", "CrossAttention", "FeedForward", "GEGLU", "SpatialTransformer"]


class CrossAttention(nn.Module):
    """Multi-head attention of queries x to a context (self-attention when context is None).

    ``to_out(softmax(Q Kᵀ / √d) V)`` with Q = to_q(x), K = to_k(c), V = to_v(c) (paper Eq. 3;
    CompVis ``CrossAttention``). ``mask`` (B, L) marks the context tokens to attend to (True);
    padded tokens get no weight. Shapes: x (B, N, query_dim), context (B, L, context_dim) -> (B, N, query_dim).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.context_dim = context_dim or query_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(self.context_dim, inner, bias=False)
        self.to_v = nn.Linear(self.context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        #: set by :func:`minildm.eval.attention_maps.record_cross_attention`: receives the attention
        #: probabilities (B, heads, N, L); None (the default) keeps the fused kernel
        self.recorder: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"context has width {context.shape[-1]}, this layer expects {self.context_dim}")
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        attn_mask = None
        if mask is not None:
            if mask.shape != context.shape[:2]:
                raise ValueError(f"mask must have shape {tuple(context.shape[:2])}, got {tuple(mask.shape)}")
            attn_mask = mask.bool()[:, None, None, :]
        if self.recorder is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:  # the same product, spelled out to expose softmax(Q Kᵀ / √d)
            scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            probs = scores.softmax(dim=-1)
            self.recorder(probs)
            out = probs @ v
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """GELU-gated linear unit: ``a · GELU(g)`` with (a, g) = proj(x) (Shazeer, 2020)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's feed-forward: ``net = [GEGLU(dim -> mult·dim), Dropout, Linear(mult·dim -> dim)]``
    (CompVis / diffusers ``FeedForward``, same parameter names). Shapes: (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, cross-attention, GEGLU feed-forward,
    each with a residual. Shapes: x (B, N, dim), context (B, L, context_dim) -> (B, N, dim)."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int | None, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, 4, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over image positions that reads a context (CompVis ``SpatialTransformer``).

    GroupNorm, ``proj_in`` (1×1 conv), flatten to H·W tokens, ``depth`` ×
    :class:`BasicTransformerBlock`, un-flatten, zero-initialised ``proj_out``, residual: at
    initialisation the block is the identity. Shapes: x (B, C, H, W), context (B, L, context_dim)
    -> (B, C, H, W).
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, context_dim: int, depth: int = 1,
                 dropout: float = 0.0, num_groups: int = DEFAULT_NUM_GROUPS) -> None:
        super().__init__()
        inner = n_heads * d_head
        self.context_dim = context_dim
        self.norm = Normalize(in_channels, num_groups)
        self.proj_in = nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, context_dim, dropout) for _ in range(depth))
        self.proj_out = zero_module(nn.Conv2d(inner, in_channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            raise ValueError("this UNet has cross-attention (context_dim set): pass context=(B, L, context_dim)")
        b, c, h, w = x.shape
        y = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")
        for block in self.transformer_blocks:
            y = block(y, context, mask)
        return x + self.proj_out(rearrange(y, "b (h w) c -> b c h w", h=h, w=w))
