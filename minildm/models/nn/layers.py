"""Elementary layers of the CompVis convolutional design.

``Normalize`` and ``nonlinearity`` are the two pieces every block of
``ldm/modules/diffusionmodules/model.py`` uses: GroupNorm (Wu & He, 2018) with
32 groups and eps = 1e-6, followed by the swish / SiLU activation
``x · sigmoid(x)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_NUM_GROUPS", "GROUPNORM_EPS", "group_count", "Normalize", "nonlinearity"]

#: Number of GroupNorm groups used by CompVis and Stable Diffusion.
DEFAULT_NUM_GROUPS = 32
#: GroupNorm epsilon used by CompVis and Stable Diffusion.
GROUPNORM_EPS = 1e-6


def group_count(num_channels: int, num_groups: int = DEFAULT_NUM_GROUPS) -> int:
    """Number of GroupNorm groups for ``num_channels`` channels.

    CompVis always uses 32 groups, which requires a multiple of 32 channels. The
    tiny models of the smoke and cpu presets have e.g. 16 channels, so we take the
    *largest divisor of ``num_channels`` that is <= ``num_groups``*. For every
    multiple of ``num_groups`` this is exactly ``num_groups`` (the CompVis / Stable
    Diffusion choice); for 16 channels it is 16 groups (one channel per group,
    i.e. instance-norm-like), for 48 channels with ``num_groups=32`` it is 24.

    Raises:
        ValueError: ``num_channels`` or ``num_groups`` is not a positive integer.
    """
    if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 1:
        raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    for g in range(min(num_groups, num_channels), 0, -1):
        if num_channels % g == 0:
            return g
    return 1  # unreachable: 1 divides everything


def Normalize(in_channels: int, num_groups: int = DEFAULT_NUM_GROUPS,  # noqa: N802 (CompVis name)
              eps: float = GROUPNORM_EPS) -> nn.GroupNorm:
    """GroupNorm as in CompVis: ``GroupNorm(32, in_channels, eps=1e-6, affine=True)``.

    (The ADM blocks of the diffusion UNet use PyTorch's default eps = 1e-5, see
    :data:`minildm.models.unet.ADM_GROUPNORM_EPS`.)

    For channel counts that 32 does not divide, the number of groups is the
    largest divisor of ``in_channels`` that is <= ``num_groups`` (see
    :func:`group_count`). Input and output shape: (B, in_channels, H, W).
    """
    return nn.GroupNorm(num_groups=group_count(in_channels, num_groups), num_channels=in_channels,
                        eps=eps, affine=True)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU: ``x · sigmoid(x)`` (element-wise, any shape)."""
    return F.silu(x)


def zero_module(module: nn.Module) -> nn.Module:
    """Set a module's parameters to zero and return it (ADM ``zero_module``)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels > 0:
        if channels % num_head_channels:
            raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
        return channels // num_head_channels
    if channels % num_heads:
        raise ValueError(f"{channels} channels are not divisible by num_heads={num_heads}")
    return num_heads
