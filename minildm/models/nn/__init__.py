"""Shared neural-network layers (CompVis ``ldm/modules/diffusionmodules/model.py`` design).

* :mod:`minildm.models.nn.layers` – ``Normalize`` (GroupNorm), ``nonlinearity`` (SiLU)
* :mod:`minildm.models.nn.blocks` – ``ResnetBlock``, ``Downsample``, ``Upsample``
* :mod:`minildm.models.nn.attention` – ``AttnBlock`` (single-head spatial self-attention)
"""
from __future__ import annotations

from .attention import AttnBlock
from .blocks import Downsample, ResnetBlock, Upsample
from .layers import DEFAULT_NUM_GROUPS, GROUPNORM_EPS, Normalize, group_count, nonlinearity

__all__ = [
    "AttnBlock",
    "DEFAULT_NUM_GROUPS",
    "Downsample",
    "GROUPNORM_EPS",
    "Normalize",
    "ResnetBlock",
    "Upsample",
    "group_count",
    "nonlinearity",
]
