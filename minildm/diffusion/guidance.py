"""Classifier-free guidance (Ho & Salimans 2021; paper Sec. 4.3, used for Fig. 4 and Tab. 2):

    ε̃_θ(z_t, t, y) = ε_θ(z_t, t, ∅) + s · (ε_θ(z_t, t, y) − ε_θ(z_t, t, ∅))

s = 1 is the conditional model, s = 0 the unconditional one, s > 1 trades diversity for
fidelity. Taught in notebooks 04 and 05.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..checks import check_number
from .process import ModelFn

__all__ = ["guided_model"]


def guided_model(model: ModelFn, guidance_scale: float = 1.0, uncond: Tensor | None = None,
                 uncond_mask: Tensor | None = None) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): ε̃ = ε(x, ∅) + s · (ε(x, c) − ε(x, ∅)).

    Returns ``fn(x, t, context=None, context_mask=None, c_concat=None, **kw)``. With s ≠ 1 and a
    ``context``, the conditional and unconditional halves run as *one* batched forward on [x, x] with
    [context, uncond] (and [context_mask, uncond_mask]); the conditional half comes first. A spatial
    condition ``c_concat`` (B, C_c, h, w) goes unchanged to both halves, [c_concat, c_concat]: only the
    cross-attention condition y is replaced by ∅ (as in CompVis' "hybrid" models).
    ``uncond`` (1 or B, L, d) is the null condition ∅, ``uncond_mask`` its valid tokens.
    s = 1 (or no context) is the plain conditional model; s = 0 the unconditional one.
    """
    guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0)

    def fn(x: Tensor, t: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
           c_concat: Tensor | None = None, **kwargs: Any) -> Tensor:
        if context_mask is not None:
            kwargs["context_mask"] = context_mask
        if context is None or guidance_scale == 1.0:
            if c_concat is not None:
                kwargs["c_concat"] = c_concat
            return model(x, t, context=context, **kwargs) if context is not None else model(x, t, **kwargs)
        if c_concat is not None:  # the spatial condition is the same for both halves, only y becomes ∅
            kwargs["c_concat"] = torch.cat([c_concat, c_concat])
        if uncond is None:
            raise ValueError("guidance_scale != 1 needs the unconditional context (uncond)")
        null = uncond.expand_as(context) if uncond.shape != context.shape else uncond
        if context_mask is not None or uncond_mask is not None:
            b, L = context.shape[:2]
            cm = context_mask if context_mask is not None else torch.ones(b, L, dtype=torch.bool, device=x.device)
            um = uncond_mask if uncond_mask is not None else torch.ones(b, L, dtype=torch.bool, device=x.device)
            kwargs["context_mask"] = torch.cat([cm, um.expand_as(cm)])
        out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), context=torch.cat([context, null]),
                             **kwargs).chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    return fn
