"""The denoising UNet ε_θ(z_t, t[, τ_θ(y)]) of the latent diffusion model (paper Sec. 3.2–3.3).

The ADM design (Dhariwal & Nichol, 2021) as used by the CompVis code
(``ldm/modules/diffusionmodules/openaimodel.py``), with the same module names so that a
reader can map one onto the other:

* ``time_embed``: the timestep t -> sinusoidal embedding (:func:`timestep_embedding`) -> MLP;
* ``input_blocks``: per resolution level ``num_res_blocks`` × [:class:`ResBlock` (+ attention)],
  then a :class:`Downsample` (all but the last level);
* ``middle_block``: ResBlock, attention, ResBlock;
* ``output_blocks``: the mirror image, each block reading the matching input block's output
  through a skip connection (channel concatenation), then an :class:`Upsample`;
* ``out``: GroupNorm, SiLU, zero-initialised 3×3 convolution (the untrained UNet predicts 0).

Attention at the resolutions in ``attention_resolutions`` (given as downsampling rates
1, 2, 4, ... relative to the input grid) is either plain multi-head self-attention
(:class:`AttentionBlock`) or, when ``context_dim`` is set, a :class:`SpatialTransformer`:
self-attention, cross-attention to the condition tokens τ_θ(y) and a GEGLU feed-forward,

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) V,  Q = W_Q φ(z_t),  K = W_K τ_θ(y),  V = W_V τ_θ(y)

(paper Eq. 3). All attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`.

Shapes: ``UNetModel(x, t, context=None, c_concat=None)`` with x (B, C_in, H, W), t (B,) integer or
float timesteps, context (B, L, context_dim) -> (B, C_out, H, W). A spatial condition ``c_concat``
(B, C_c, H, W) is concatenated to x's channels (paper Sec. 3.3, "concatenation"; CompVis
``conditioning_key="concat"``), so that then C_in = C_x + C_c. H and W must be divisible by
2 ** (len(channel_mult) - 1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .nn.layers import DEFAULT_NUM_GROUPS, Normalize, attention_heads, zero_module
from .nn.transformer import SpatialTransformer

#: GroupNorm eps of the ADM blocks (ResBlock, AttentionBlock, output head): CompVis' ``GroupNorm32``
#: keeps PyTorch's default, unlike the autoencoder and the SpatialTransformer (1e-6)
ADM_GROUPNORM_EPS = 1e-5

__all__ = [
    "UNetConfig",
    "UNetModel",
    "ResBlock",
    "AttentionBlock",
    "timestep_embedding",
]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (Vaswani et al. 2017; ADM ``timestep_embedding``).

    ``emb[:, i] = cos(t · ω_i)`` for i < dim/2 and ``sin(t · ω_i)`` after, with
    ω_i = max_period^(−i / (dim/2)). Shapes: t (B,) -> (B, dim) (zero-padded for odd dim).
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(timesteps.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepBlock(nn.Module):
    """Marks a module whose ``forward(x, emb)`` takes the timestep embedding as a second argument
    (:class:`TimestepEmbedSequential` hands it over)."""


class TimestepEmbedSequential(nn.Sequential):
    """``nn.Sequential`` that hands ``emb`` to :class:`TimestepBlock` children and ``context``
    to :class:`SpatialTransformer` children."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, C_out, H/2, W/2): 3×3 convolution with stride 2 and padding 1 (ADM)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C_out, 2H, 2W): nearest-neighbour ×2, then a 3×3 convolution (ADM)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(TimestepBlock):
    """ADM residual block conditioned on the timestep embedding.

    ``h = in_layers(x)`` (GroupNorm, SiLU, conv3×3); the embedding is projected by
    ``emb_layers`` (SiLU, Linear). With ``use_scale_shift_norm`` (ADM's adaptive GroupNorm)
    it gives (scale, shift) and ``h = out_rest(norm(h) · (1 + scale) + shift)``; otherwise it is
    added, ``h = out_layers(h + emb)``. ``out_layers`` ends in a zero-initialised convolution,
    so the block starts as its skip connection. Shapes: x (B, C, H, W), emb (B, E) -> (B, C_out, H, W).
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0, out_channels: int | None = None,
                 use_scale_shift_norm: bool = True, num_groups: int = DEFAULT_NUM_GROUPS) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(Normalize(channels, num_groups, ADM_GROUPNORM_EPS), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(
            emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(Normalize(out_channels, num_groups, ADM_GROUPNORM_EPS), nn.SiLU(),
                                        nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection: nn.Module = (nn.Identity() if out_channels == channels
                                           else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head spatial self-attention with a residual (ADM ``AttentionBlock``).

    ``x + proj_out(MHA(norm(x)))`` over the H·W positions; ``qkv`` is a 1×1 convolution,
    ``proj_out`` is zero-initialised. Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 num_groups: int = DEFAULT_NUM_GROUPS) -> None:
        super().__init__()
        self.num_heads = attention_heads(channels, num_heads, num_head_channels)
        self.norm = Normalize(channels, num_groups, ADM_GROUPNORM_EPS)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        q, k, v = rearrange(qkv, "b (three heads d) n -> three b heads n d", three=3, heads=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b heads n d -> b (heads d) n")
        return x + self.proj_out(out).reshape(b, c, h, w)


def pooled(context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the valid tokens: context (B, L, d), mask (B, L) bool or None (all valid) -> (B, d).
    A row without a valid token pools to zeros."""
    if mask is None:
        return context.mean(dim=1)
    if mask.shape != context.shape[:2]:
        raise ValueError(f"context_mask must have shape {tuple(context.shape[:2])}, got {tuple(mask.shape)}")
    m = mask.to(context.dtype).unsqueeze(-1)
    return (context * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


@dataclass
class UNetConfig:
    """Hyperparameters of :class:`UNetModel` (names as in CompVis ``UNetModel``).

    ``in_channels`` counts every input channel: the latent's plus those of a concatenated spatial
    condition ``c_concat`` (e.g. 4 + 3 = 7); ``out_channels`` are the latent's alone.
    ``pooled_context`` (needs ``context_dim``) adds a projection of the context's masked mean to the
    timestep embedding, beside cross-attention (Imagen's pooled text embedding; SDXL's ``label_emb``):
    emb = MLP(γ(t)) + MLP(mean_l τ_θ(y)_l), so attributes of the whole caption reach every ResBlock.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 64
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (2,)
    channel_mult: Sequence[int] = (1, 2, 2)
    num_heads: int = 4
    num_head_channels: int = -1
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    context_dim: int | None = None
    transformer_depth: int = 1
    num_groups: int = DEFAULT_NUM_GROUPS
    pooled_context: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "transformer_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be non-empty positive ints, got {self.channel_mult!r}")
        if any(r < 1 or r & (r - 1) for r in self.attention_resolutions):
            raise ValueError("attention_resolutions are downsampling rates (1, 2, 4, ...), "
                             f"got {self.attention_resolutions!r}")
        if self.context_dim is not None and self.context_dim < 1:
            raise ValueError(f"context_dim must be a positive int or None, got {self.context_dim!r}")
        if self.pooled_context and self.context_dim is None:
            raise ValueError("pooled_context needs a context (set context_dim)")

    @property
    def downsampling(self) -> int:
        """Total downsampling of the UNet: the input's H and W must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["channel_mult"] = list(self.channel_mult)
        d.pop("extra")
        if not self.pooled_context:  # absent unless used: configs saved before the option stay identical
            d.pop("pooled_context")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class UNetModel(nn.Module):
    """ADM / CompVis UNet: ``model(x, t, context=None, c_concat=None) -> prediction`` (ε, x₀ or v).

    Args:
        config: a :class:`UNetConfig` (or pass its fields as keyword arguments).

    Shapes: x (B, in_channels, H, W) with H, W multiples of ``config.downsampling``;
    t (B,) timesteps (int or float; a scalar is broadcast); context (B, L, context_dim)
    when ``context_dim`` is set, with an optional ``context_mask`` (B, L) of valid tokens;
    c_concat (B, C_c, H, W) stacked onto x's channels (then x has in_channels − C_c channels).
    Output (B, out_channels, H, W).
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either a UNetConfig or keyword arguments, not both")
        self.config = c = config
        ch = c.model_channels
        temb = 4 * ch
        groups = c.num_groups
        self.time_embed = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        if c.pooled_context:
            # zero-initialised output: training starts from the model without the pooled path
            self.pooled_embed = nn.Sequential(nn.Linear(c.context_dim, temb), nn.SiLU(),
                                              zero_module(nn.Linear(temb, temb)))

        def attention(channels: int) -> nn.Module:
            heads = attention_heads(channels, c.num_heads, c.num_head_channels)
            if c.context_dim is None:
                return AttentionBlock(channels, heads, -1, groups)
            return SpatialTransformer(channels, heads, channels // heads, c.context_dim, c.transformer_depth,
                                      c.dropout, groups)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, temb, c.dropout, mult * c.model_channels,
                                                   c.use_scale_shift_norm, groups)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, temb, c.dropout, None, c.use_scale_shift_norm, groups),
            attention(ch),
            ResBlock(ch, temb, c.dropout, None, c.use_scale_shift_norm, groups))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), temb, c.dropout, mult * c.model_channels,
                                   c.use_scale_shift_norm, groups)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers.append(attention(ch))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(Normalize(ch, groups, ADM_GROUPNORM_EPS), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, c.out_channels, 3, padding=1)))
        self.use_checkpoint = False

    def set_gradient_checkpointing(self, enabled: bool = True) -> "UNetModel":
        """Gradient checkpointing (CompVis ``use_checkpoint``): in training, each block's activations
        are recomputed during backward instead of stored, trading about a third more compute for
        much less activation memory. Same outputs and gradients; not part of the weights' identity."""
        self.use_checkpoint = bool(enabled)
        return self

    def concat_condition(self, x: torch.Tensor, c_concat: torch.Tensor) -> torch.Tensor:
        """[x, c_concat] along the channels: (B, C_x, H, W), (B, C_c, H, W) -> (B, C_x + C_c, H, W);
        ValueError unless C_x + C_c = ``in_channels`` and batch and grid agree."""
        n = self.config.in_channels
        if x.ndim != 4 or c_concat.ndim != 4:
            raise ValueError(f"x and c_concat must be (B, C, H, W), got {tuple(x.shape)} and {tuple(c_concat.shape)}")
        if x.shape[1] + c_concat.shape[1] != n:
            raise ValueError(f"the UNet expects in_channels={n} input channels, got {x.shape[1]} channels of x "
                             f"+ {c_concat.shape[1]} of c_concat = {x.shape[1] + c_concat.shape[1]}")
        if c_concat.shape[0] != x.shape[0] or c_concat.shape[2:] != x.shape[2:]:
            raise ValueError(f"c_concat must have shape ({x.shape[0]}, {c_concat.shape[1]}, "
                             f"{x.shape[2]}, {x.shape[3]}) like x, got {tuple(c_concat.shape)}")
        return torch.cat([x, c_concat.to(x.dtype)], dim=1)

    def _block(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None,
               context_mask: torch.Tensor | None) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, emb, context, context_mask, use_reentrant=False)
        return block(h, emb, context, context_mask)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float | int,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                c_concat: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ (or x̂_0, v̂) = ε_θ([x, c_concat], t, context): (B, C_x, H, W) -> (B, out_channels, H, W).

        ``c_concat`` (B, C_c, H, W) is a spatial condition stacked onto x's channels before the first
        convolution (CompVis ``conditioning_key="concat"``); then ``in_channels`` = C_x + C_c.
        """
        c = self.config
        if c_concat is not None:
            x = self.concat_condition(x, c_concat)
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must have shape (B, {c.in_channels}, H, W), got {tuple(x.shape)}")
        d = c.downsampling
        if x.shape[-2] % d or x.shape[-1] % d:
            raise ValueError(f"H and W must be multiples of {d} (2 ** (len(channel_mult) - 1)), "
                             f"got {tuple(x.shape[-2:])}")
        if (context is None) != (c.context_dim is None):
            raise ValueError("context must be given exactly when the UNet has cross-attention "
                             f"(context_dim={c.context_dim})")
        if context is not None and (context.ndim != 3 or context.shape[0] != x.shape[0]
                                    or context.shape[-1] != c.context_dim):
            raise ValueError(f"context must have shape ({x.shape[0]}, L, {c.context_dim}), got {tuple(context.shape)}")
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_embed(timestep_embedding(t, c.model_channels).to(x.dtype))
        if c.pooled_context:
            emb = emb + self.pooled_embed(pooled(context, context_mask).to(emb.dtype))
        hs = []
        h = x
        for block in self.input_blocks:
            h = self._block(block, h, emb, context, context_mask)
            hs.append(h)
        h = self._block(self.middle_block, h, emb, context, context_mask)
        for block in self.output_blocks:
            h = self._block(block, torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)
        return self.out(h)
