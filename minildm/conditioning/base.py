"""Domain-specific encoders τ_θ(y) for the conditioning mechanism (paper Sec. 3.3).

A conditioner maps a condition y to a sequence of tokens τ_θ(y) ∈ R^{L × d_τ} (and a mask of
the valid ones) that the UNet's cross-attention layers read:

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) · V,   Q = W_Q φ(z_t),  K = W_K τ_θ(y),  V = W_V τ_θ(y).

τ_θ and ε_θ are trained jointly (paper Eq. 3). Every conditioner here also has a *null*
condition ∅: during training a fraction ``p_uncond`` of the conditions is replaced by ∅
(conditioning dropout), so one network learns both ε_θ(z_t, t, y) and ε_θ(z_t, t, ∅), which
classifier-free guidance combines at sampling time (see :func:`minildm.diffusion.guidance.guided_model`).

* :class:`ClassEmbedder`: a class label as one token (CompVis ``ClassEmbedder``); ∅ is an
  extra learned class.
* :class:`LayoutEmbedder`: a layout, i.e. a set of objects with a box and attributes, as one
  token per object read by a small transformer, as in the paper's layout-to-image model
  (Sec. 4.3.2, which encodes "the bounding boxes and class labels" as tokens). A learned
  begin token is always present; ∅ is the begin token alone.

* Text encoders (:mod:`minildm.conditioning.text`): a tokenizer and transformer
  trained from scratch with the UNet (:class:`~minildm.conditioning.text.TransformerTextEmbedder`, the paper's
  choice) and frozen pretrained ones (:func:`~minildm.conditioning.pretrained.frozen_minilm`,
  :func:`~minildm.conditioning.pretrained.frozen_clip`, Stable Diffusion's choice); ∅ is the empty caption.

Each registers its ``type`` with :func:`register_conditioner`, so that :func:`build_conditioner`
rebuilds it from its ``config()``; a new conditioner is one new module plus its import in
``minildm/conditioning/__init__.py``. Taught in notebooks 04 (class, layout) and 05 (text).

All have the same interface: ``conditioner(y, drop=None) -> (context, mask)``, with context
(B, L, embed_dim) and mask (B, L) of valid tokens (None when every token is valid), and
``conditioner.null(batch_size)``. ``key`` names the field of a data item that holds y.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CONDITIONERS", "Conditioning", "build_conditioner", "check_drop", "register_conditioner"]

#: what a conditioner returns: context (B, L, d) and the mask (B, L) of valid tokens, or None
Conditioning = tuple[Tensor, "Tensor | None"]

#: conditioner ``type`` (the ``"type"`` of its ``config()``) -> a function building it from the rest of the config
CONDITIONERS: dict[str, Callable[..., nn.Module]] = {}


def register_conditioner(kind: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``@register_conditioner("class")`` on a conditioner class (or a function building one)
    makes :func:`build_conditioner` build configs of that ``type``."""
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if kind in CONDITIONERS:
            raise ValueError(f"conditioner type {kind!r} is registered twice")
        CONDITIONERS[kind] = builder
        return builder
    return decorate


def check_drop(drop: Tensor | None, batch: int) -> Tensor | None:
    if drop is None:
        return None
    drop = torch.as_tensor(drop, dtype=torch.bool)
    if drop.shape != (batch,):
        raise ValueError(f"drop must have shape ({batch},), got {tuple(drop.shape)}")
    return drop


def build_conditioner(config: Mapping[str, Any]) -> nn.Module:
    """A conditioner from its ``config()`` dict; ValueError for an unknown type."""
    kind = config.get("type")
    if kind not in CONDITIONERS:
        raise ValueError(f"unknown conditioner type {kind!r}: choose one of {', '.join(sorted(CONDITIONERS))}")
    return CONDITIONERS[kind](**{k: v for k, v in config.items() if k != "type"})
