"""Spatial conditions concatenated to the latent (paper Sec. 3.3 and 4.3.2–4.5; taught in notebook 06).

Cross-attention (notebooks 04–05) suits conditions without a place in the image (a class, a
caption). A condition that *is* an image aligned with the output (a low-resolution image, a masked
image, a segmentation map) is instead brought to the latent grid and stacked onto z_t's channels,
CompVis ``conditioning_key="concat"``:

    ε_θ([z_t, κ(y)], t),      z_t (B, c, h, w),  κ(y) (B, C_c, h, w),  the UNet's input (B, c + C_c, h, w)

Each :class:`ConcatConditioner` is one κ, registered by its ``type`` (:func:`build_concat_conditioner`):

* :class:`LowResolution` (LDM-SR, Sec. 4.4): the low-resolution image y (B, 3, H/k, W/k), resized
  (bicubic) to the latent grid when k ≠ f; C_c = 3.
* :class:`MaskedImage` (inpainting, Sec. 4.5; Stable Diffusion's inpainting UNet): the hole m
  (1 = fill) resized to the grid and the latent of the masked image, [m↓, s·E((1 − m) ⊙ x)], or of the
  image with its hole pre-filled by push-pull interpolation (``fill="pyramid"``); C_c = 1 + c, so a
  4-channel latent gives the UNet its 4 + 1 + 4 = 9 input channels.
* :class:`SegmentationMap` (semantic synthesis, Sec. 4.3.2): the one-hot map brought to the latent grid,
  either through a :class:`SpatialRescaler` (CompVis name: ``n_stages`` halvings, here by area, so each
  cell holds its class fractions, and an optional 1×1 convolution to ``out_channels``; C_c = K) or folded
  into channels (``method="space_to_depth"``: each f × f block of the one-hot map becomes K·f² channels of
  one cell, so the UNet sees the map at full resolution; C_c = K·f²).

Conditions are dicts of tensors: ``{"lr": ...}``, ``{"image": ..., "hole": ...}``, ``{"segmentation": ...}``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.degradations import pyramid_fill

__all__ = ["CONCAT_CONDITIONERS", "ConcatConditioner", "LowResolution", "MaskedImage", "SegmentationMap",
           "SpatialRescaler", "build_concat_conditioner", "one_hot_map"]

#: the encoder of the first stage, s · E(x): (B, 3, H, W) -> (B, c, h, w)
Encode = Callable[[Tensor], Tensor]

CONCAT_CONDITIONERS: dict[str, type["ConcatConditioner"]] = {}


def _register(cls: type["ConcatConditioner"]) -> type["ConcatConditioner"]:
    CONCAT_CONDITIONERS[cls.kind] = cls
    return cls


def _tensor(y: Mapping[str, Any], key: str, kind: str, ndim: int) -> Tensor:
    if not isinstance(y, Mapping) or key not in y:
        raise ValueError(f"the {kind!r} condition is a dict with {key!r}, got "
                         f"{sorted(y) if isinstance(y, Mapping) else type(y).__name__}")
    t = y[key]
    if not isinstance(t, Tensor) or t.ndim != ndim:
        raise ValueError(f"condition {key!r} must be a {ndim}-d tensor, got "
                         f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    return t


class ConcatConditioner(nn.Module, ABC):
    """κ: a condition y -> c_concat (B, C_c, h, w) on the latent grid (h, w). Subclasses give :meth:`channels`
    and :meth:`forward`."""

    kind: ClassVar[str] = ""
    #: the data field(s) the condition is made of
    keys: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def channels(self, latent_channels: int) -> int:
        """C_c, the channels κ adds to the UNet's input."""

    @abstractmethod
    def forward(self, y: Mapping[str, Tensor], latent_hw: tuple[int, int], encode: Encode) -> Tensor:
        """c_concat (B, C_c, h, w) of the condition y on the latent grid ``latent_hw``; ``encode`` is s · E."""

    def config(self) -> dict[str, Any]:
        return {"type": self.kind}


@_register
class LowResolution(ConcatConditioner):
    """LDM-SR's condition: the low-resolution image itself on the latent grid (B, 3, h, w)."""

    kind = "low_resolution"
    keys = ("lr",)

    def __init__(self, factor: int = 4) -> None:
        super().__init__()
        self.factor = int(factor)

    def channels(self, latent_channels: int) -> int:
        return 3

    def forward(self, y: Mapping[str, Tensor], latent_hw: tuple[int, int], encode: Encode) -> Tensor:
        lr = _tensor(y, "lr", self.kind, 4)
        if lr.shape[1] != 3:
            raise ValueError(f"the low-resolution image must have 3 channels, got {lr.shape[1]}")
        if tuple(lr.shape[-2:]) != tuple(latent_hw):
            lr = F.interpolate(lr, size=latent_hw, mode="bicubic", align_corners=False).clamp(-1, 1)
        return lr

    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "factor": self.factor}


@_register
class MaskedImage(ConcatConditioner):
    """The inpainting condition [m↓, s·E(fill(x, m))] (Stable Diffusion's order: mask, then masked latent).

    ``fill="zero"`` is Stable Diffusion's (1 − m) ⊙ x: the missing pixels become 0, mid grey. ``fill="pyramid"``
    pre-fills them by push-pull interpolation (:func:`~minildm.data.degradations.pyramid_fill`), so that the
    latent cells a thin stroke touches keep their colours and the UNet refines a smooth guess instead of a
    grey patch; m↓ still marks every cell with a missing pixel. Either way C_c = 1 + c."""

    kind = "masked_image"
    keys = ("image", "hole")
    FILLS: ClassVar[tuple[str, ...]] = ("zero", "pyramid")

    def __init__(self, fill: str = "zero") -> None:
        super().__init__()
        if fill not in self.FILLS:
            raise ValueError(f"unknown fill {fill!r}: choose one of {', '.join(self.FILLS)}")
        self.fill = fill

    def channels(self, latent_channels: int) -> int:
        return 1 + latent_channels

    def forward(self, y: Mapping[str, Tensor], latent_hw: tuple[int, int], encode: Encode) -> Tensor:
        x = _tensor(y, "image", self.kind, 4)
        hole = _tensor(y, "hole", self.kind, 4)
        if hole.shape[1] != 1 or hole.shape[0] != x.shape[0] or hole.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the hole must be (B, 1, H, W) = ({x.shape[0]}, 1, {x.shape[2]}, {x.shape[3]}), "
                             f"got {tuple(hole.shape)}")
        hole = hole.to(x.dtype)
        masked = pyramid_fill(x, hole) if self.fill == "pyramid" else x * (1 - hole)
        small = F.interpolate(hole, size=latent_hw, mode="area") if tuple(hole.shape[-2:]) != tuple(latent_hw) else hole
        return torch.cat([(small > 0).to(x.dtype), encode(masked)], dim=1)

    def config(self) -> dict[str, Any]:
        # the default is left out, so configs written before ``fill`` existed still read the same
        return {"type": self.kind} if self.fill == "zero" else {"type": self.kind, "fill": self.fill}


def one_hot_map(segmentation: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) integer classes -> (B, K, H, W) one-hot float; ValueError for classes outside [0, K)."""
    if segmentation.dtype.is_floating_point or segmentation.dtype == torch.bool:
        raise ValueError(f"a segmentation map holds integer classes, got dtype {segmentation.dtype}")
    if segmentation.numel() and (int(segmentation.min()) < 0 or int(segmentation.max()) >= num_classes):
        raise ValueError(f"segmentation classes must lie in [0, {num_classes}), got "
                         f"{int(segmentation.min())}..{int(segmentation.max())}")
    return F.one_hot(segmentation.long(), num_classes).permute(0, 3, 1, 2).float()


class SpatialRescaler(nn.Module):
    """CompVis ``SpatialRescaler``: ``n_stages`` resizings by ``multiplier`` (``method`` of
    ``F.interpolate``), then an optional 1×1 convolution from ``in_channels`` to ``out_channels``.
    (B, C, H, W) -> (B, C or out_channels, H·multiplier^n, W·multiplier^n)."""

    def __init__(self, n_stages: int = 1, method: str = "area", multiplier: float = 0.5, in_channels: int = 3,
                 out_channels: int | None = None, bias: bool = False) -> None:
        super().__init__()
        if method not in ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area"):
            raise ValueError(f"unknown interpolation method {method!r}")
        if not isinstance(n_stages, int) or n_stages < 0:
            raise ValueError(f"n_stages must be an int >= 0, got {n_stages!r}")
        self.n_stages, self.method, self.multiplier = n_stages, method, float(multiplier)
        self.channel_mapper = (nn.Conv2d(in_channels, out_channels, 1, bias=bias) if out_channels is not None
                               else None)

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        return self.channel_mapper(x) if self.channel_mapper is not None else x


@_register
class SegmentationMap(ConcatConditioner):
    """The semantic synthesis condition: one-hot map (B, K, H, W) -> :class:`SpatialRescaler` (class fractions
    per latent cell with ``method="area"`` and no channel mapper) or, with ``method="space_to_depth"``,
    ``F.pixel_unshuffle`` by 2^n_stages: (B, K·4^n, H/2^n, W/2^n), the full-resolution map in channels."""

    kind = "segmentation"
    keys = ("segmentation",)

    def __init__(self, num_classes: int, n_stages: int = 2, method: str = "area", out_channels: int | None = None) -> None:
        super().__init__()
        self.num_classes, self.n_stages, self.method, self.out_channels = int(num_classes), n_stages, method, out_channels
        if method == "space_to_depth":
            if out_channels is not None:
                raise ValueError("space_to_depth has no channel mapper: out_channels must be None")
            self.rescaler = nn.PixelUnshuffle(2 ** n_stages)
        else:
            self.rescaler = SpatialRescaler(n_stages, method, 0.5, self.num_classes, out_channels)

    def channels(self, latent_channels: int) -> int:
        if self.method == "space_to_depth":
            return self.num_classes * 4 ** self.n_stages
        return self.out_channels or self.num_classes

    def forward(self, y: Mapping[str, Tensor], latent_hw: tuple[int, int], encode: Encode) -> Tensor:
        seg = _tensor(y, "segmentation", self.kind, 3)
        out = self.rescaler(one_hot_map(seg, self.num_classes))
        if tuple(out.shape[-2:]) != tuple(latent_hw):
            raise ValueError(f"a {tuple(seg.shape[-2:])} map gives a {tuple(out.shape[-2:])} condition, the latent "
                             f"grid is {tuple(latent_hw)}: the map must be {2 ** self.n_stages}x the latent's size")
        return out

    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "num_classes": self.num_classes, "n_stages": self.n_stages, "method": self.method,
                "out_channels": self.out_channels}


def build_concat_conditioner(config: Mapping[str, Any]) -> ConcatConditioner:
    """A :class:`ConcatConditioner` from its ``config()``; ValueError for an unknown type."""
    kind = config.get("type")
    if kind not in CONCAT_CONDITIONERS:
        raise ValueError(f"unknown concat conditioner type {kind!r}: choose one of "
                         f"{', '.join(sorted(CONCAT_CONDITIONERS))}")
    return CONCAT_CONDITIONERS[kind](**{k: v for k, v in config.items() if k != "type"})
