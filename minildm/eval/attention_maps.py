"""Cross-attention maps: where in the image each condition token is read (paper Sec. 3.3).

Every cross-attention layer computes, for each latent position n and condition token l, the
weight softmax(Q Kᵀ / √d)[n, l]: how much position n reads token l. Reshaped to the layer's
grid (h × w), the weights of one token form a map of where that token acts; averaged over
heads, layers and timesteps they show e.g. that the token of a "red circle" box is read where
the red circle appears (Hertz et al. 2022 use the same maps for prompt-to-prompt editing).

:func:`record_cross_attention` switches the UNet's cross-attention layers (``attn2``) to an
explicit softmax for the duration of a ``with`` block and records every call; outside it the
layers use the fused ``scaled_dot_product_attention`` kernel, so normal sampling pays nothing.

    with record_cross_attention(ldm.model) as maps:
        images = ldm.sample(4, cond=labels, guidance_scale=3.0)
    maps.maps(layer=None, step=None)  # (B, L, H, W) averaged over the chosen layers and steps

With classifier-free guidance the UNet sees [conditional; unconditional] batches, so every
record holds 2B rows; ``maps(n=B)`` keeps the first B, the conditional half.

Taught in notebooks 04 and 05.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionRecord", "AttentionMaps", "record_cross_attention"]


@dataclass
class AttentionRecord:
    """One call of one cross-attention layer: ``probs`` (B, N, L) averaged over heads, on the CPU,
    for a latent grid of ``hw`` = (h, w) positions, at denoising step ``step`` (timestep ``t``)."""

    layer: str
    step: int
    t: int
    hw: tuple[int, int]
    probs: Tensor


@dataclass
class AttentionMaps:
    """The records of one :func:`record_cross_attention` block."""

    records: list[AttentionRecord] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        """Names of the recorded layers, in the UNet's order (first seen first)."""
        return list(dict.fromkeys(r.layer for r in self.records))

    @property
    def steps(self) -> list[int]:
        return sorted({r.step for r in self.records})

    @property
    def timesteps(self) -> list[int]:
        """Timestep t of each step index (in step order)."""
        by_step = {r.step: r.t for r in self.records}
        return [by_step[s] for s in sorted(by_step)]

    def maps(self, layer: str | Sequence[str] | None = None, step: int | Sequence[int] | None = None,
             size: int | tuple[int, int] | None = None, n: int | None = None) -> Tensor:
        """Mean attention map per token: (B, L, H, W).

        ``layer``/``step``: one, several or all (None). Maps of coarser layers are upsampled
        bilinearly to ``size`` (default: the finest grid among the chosen records) before
        averaging. ``n``: keep the first n rows of each batch (the conditional half of a guided
        batch of 2n); None keeps them all.
        """
        if not self.records:
            raise ValueError("no cross-attention was recorded: did the model run inside record_cross_attention?")
        layers = self.layers if layer is None else [layer] if isinstance(layer, str) else list(layer)
        steps = self.steps if step is None else [step] if isinstance(step, int) else list(step)
        unknown = [x for x in layers if x not in self.layers]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; recorded: {self.layers}")
        chosen = [r for r in self.records if r.layer in layers and r.step in steps]
        if not chosen:
            raise ValueError(f"no record for steps {steps}; recorded steps: {self.steps[0]} … {self.steps[-1]}")
        rows = min(r.probs.shape[0] for r in chosen)
        if n is not None:
            if not 1 <= n <= rows:
                raise ValueError(f"n must be in 1 … {rows}, got {n!r}")
            rows = n
        if size is None:
            size = max((r.hw for r in chosen), key=lambda hw: hw[0] * hw[1])
        size = (size, size) if isinstance(size, int) else tuple(size)
        total = torch.zeros(rows, chosen[0].probs.shape[-1], *size)
        for r in chosen:
            grid = r.probs[:rows].transpose(1, 2).reshape(rows, -1, *r.hw)
            total += F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        return total / len(chosen)


@contextlib.contextmanager
def record_cross_attention(unet: nn.Module) -> Iterator[AttentionMaps]:
    """Record the cross-attention probabilities of every ``attn2`` layer of ``unet`` while inside.

    Each UNet forward is one step (its first timestep is recorded as t). Records live on the CPU
    in float32, averaged over heads: (B, N, L) per layer and step.
    """
    from ..models.nn.transformer import CrossAttention

    layers = [(name, m) for name, m in unet.named_modules()
              if isinstance(m, CrossAttention) and name.endswith("attn2")]
    if not layers:
        raise ValueError("this UNet has no cross-attention layers (context_dim is None)")
    result = AttentionMaps()
    state = {"step": -1, "t": 0, "hw": (0, 0)}

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0]
        t = args[1] if len(args) > 1 else kwargs.get("timesteps")
        state["step"] += 1
        state["t"] = int(torch.as_tensor(t).reshape(-1)[0])
        state["hw"] = tuple(x.shape[-2:])

    def recorder_for(name: str):
        def record(probs: Tensor) -> None:
            H, W = state["hw"]
            n = probs.shape[2]
            ds = math.sqrt(H * W / n)
            hw = (round(H / ds), round(W / ds))
            result.records.append(AttentionRecord(name, state["step"], state["t"], hw,
                                                  probs.detach().float().mean(dim=1).cpu()))
        return record

    handle = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    for name, m in layers:
        m.recorder = recorder_for(name)
    try:
        yield result
    finally:
        handle.remove()
        for _, m in layers:
            m.recorder = None
