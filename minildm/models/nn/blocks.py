"""Convolutional building blocks of the CompVis Encoder / Decoder / UNet.

* :class:`ResnetBlock` – pre-activation residual block (GroupNorm, SiLU, 3×3 conv, twice),
  with an optional timestep-embedding projection (used by diffusion UNets,
  ``temb_channels=0`` in the autoencoder) and a 1×1 ``nin_shortcut`` when the
  channel count changes.
* :class:`Downsample` – halves H and W: asymmetric zero padding (0, 1, 0, 1) followed
  by a stride-2 3×3 convolution (or 2×2 average pooling when ``with_conv=False``).
* :class:`Upsample` – doubles H and W: nearest-neighbour ×2 then a 3×3 convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DEFAULT_NUM_GROUPS, Normalize, nonlinearity

__all__ = ["ResnetBlock", "Downsample", "Upsample"]


def _check_channels(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class ResnetBlock(nn.Module):
    """Residual block ``x + F(x)`` of CompVis ``ResnetBlock``.

    ``h = conv1(silu(norm1(x))) [+ temb_proj(silu(temb))]``,
    ``h = conv2(dropout(silu(norm2(h))))``, output ``shortcut(x) + h``, where the
    shortcut is the identity if ``in_channels == out_channels`` and otherwise a 1×1
    convolution ``nin_shortcut`` (or a 3×3 ``conv_shortcut`` if ``conv_shortcut=True``).

    Args:
        in_channels: C_in.
        out_channels: C_out (default: C_in).
        dropout: dropout probability before ``conv2``.
        temb_channels: width of the timestep embedding; 0 disables it (autoencoder).
        conv_shortcut: use a 3×3 instead of a 1×1 convolution on the shortcut.
        num_groups: GroupNorm groups (see :func:`~minildm.models.nn.layers.group_count`).

    Shapes: x (B, C_in, H, W), temb (B, temb_channels) or None -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 temb_channels: int = 0, conv_shortcut: bool = False,
                 num_groups: int = DEFAULT_NUM_GROUPS) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        _check_channels("in_channels", in_channels)
        _check_channels("out_channels", out_channels)
        if not isinstance(temb_channels, int) or temb_channels < 0:
            raise ValueError(f"temb_channels must be an int >= 0, got {temb_channels!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut

        self.norm1 = Normalize(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels, num_groups)
        self.dropout = nn.Dropout(float(dropout))
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        if temb is not None:
            if not hasattr(self, "temb_proj"):
                raise ValueError("this ResnetBlock was built with temb_channels=0 and takes no temb")
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class Downsample(nn.Module):
    """Halve the spatial size: (B, C, H, W) -> (B, C, ⌈H/2⌉, ⌈W/2⌉) (H/2 for even H).

    With ``with_conv`` (the autoencoder's choice) the input is zero-padded by one
    pixel on the right and bottom only, ``F.pad(x, (0, 1, 0, 1))``, and passed
    through a 3×3 convolution with stride 2 and no padding; this asymmetric pad
    is what makes the CompVis/Stable Diffusion weights line up. Without it: 2×2
    average pooling.
    """

    def __init__(self, in_channels: int, with_conv: bool = True) -> None:
        super().__init__()
        _check_channels("in_channels", in_channels)
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double the spatial size: (B, C, H, W) -> (B, C, 2H, 2W).

    Nearest-neighbour interpolation ×2, then (``with_conv``) a 3×3 convolution.
    """

    def __init__(self, in_channels: int, with_conv: bool = True) -> None:
        super().__init__()
        _check_channels("in_channels", in_channels)
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.with_conv:
            x = self.conv(x)
        return x
