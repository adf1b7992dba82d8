"""Degraded inputs of the image-to-image models of notebook 06: low-resolution images and masks.

* **Super-resolution** (paper Sec. 4.4, LDM-SR): the paper degrades with bicubic ×4 downsampling
  with anti-aliasing (the known filter of SR3's setting), :func:`bicubic_downsample`;
  :func:`degrade` adds the optional Gaussian blur and noise of the exercises.
* **Inpainting** (paper Sec. 4.5): holes (1 = missing, 0 = known) of three kinds,
  :data:`MASK_KINDS`: ``"box"`` (one rectangle of 10–50 % of the side per edge), ``"strokes"``
  (a few thick random brush strokes) and ``"large"`` (the paper's large-mask protocol after LaMa,
  Suvorov et al. 2022: wide strokes and boxes together, covering up to about half the image).
  :func:`random_hole` draws one from a ``torch.Generator``, so masks are a pure function of a seed.

Shapes: images (B, C, H, W) in [-1, 1]; holes (B, 1, H, W) float in {0, 1}.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MASK_KINDS", "bicubic_downsample", "bicubic_upsample", "degrade", "pyramid_fill", "random_hole",
           "random_holes", "check_hole"]

#: the kinds of :func:`random_hole`
MASK_KINDS = ("box", "strokes", "large")


def _check_image(x: Tensor, name: str = "image") -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"{name} must be a tensor (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")


def bicubic_downsample(x: Tensor, factor: int = 4) -> Tensor:
    """x (B, C, H, W) -> (B, C, H/factor, W/factor): bicubic with anti-aliasing (PIL's filter, torch's
    ``antialias=True``), the paper's SR degradation; H and W must be multiples of ``factor``."""
    _check_image(x)
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not a multiple of the downsampling factor {factor}")
    if factor == 1:
        return x.clone()
    return F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


def bicubic_upsample(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bicubic upsampling to ``size`` (the SR baseline), clamped to [-1, 1]."""
    _check_image(x)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def degrade(x: Tensor, factor: int = 4, blur_sigma: float = 0.0, noise_std: float = 0.0,
            generator: torch.Generator | None = None) -> Tensor:
    """The SR input: optional Gaussian blur (σ in pixels of x), bicubic ×``factor`` downsampling,
    optional Gaussian noise of std ``noise_std`` (in [-1, 1] units), clamped to [-1, 1]."""
    _check_image(x)
    for name, v in (("blur_sigma", blur_sigma), ("noise_std", noise_std)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if blur_sigma > 0:
        k = max(3, 2 * math.ceil(3 * blur_sigma) + 1)
        r = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
        g = torch.exp(-r ** 2 / (2 * blur_sigma ** 2))
        g = g / g.sum()
        c = x.shape[1]
        x = F.conv2d(F.pad(x, (k // 2,) * 4, mode="reflect"), (g[:, None] * g[None, :]).expand(c, 1, k, k),
                     groups=c)
    y = bicubic_downsample(x, factor)
    if noise_std > 0:
        noise = torch.randn(y.shape, generator=generator, device=generator.device if generator else y.device)
        y = (y + noise_std * noise.to(y.device, y.dtype)).clamp(-1, 1)
    return y


def _stroke(hole: Tensor, g: torch.Generator, width_range: tuple[float, float], n_vertices: int) -> None:
    """Paint a thick polyline of ``n_vertices`` random segments into ``hole`` (H, W) in place."""
    size = hole.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")

    def u() -> float:
        return float(torch.rand((), generator=g))

    x, y = u() * size, u() * size
    width = (width_range[0] + u() * (width_range[1] - width_range[0])) * size
    angle = u() * 2 * math.pi
    for _ in range(n_vertices):
        angle += (u() - 0.5) * 2.0
        length = (0.15 + 0.3 * u()) * size
        x1 = min(max(x + length * math.cos(angle), 0.0), size)
        y1 = min(max(y + length * math.sin(angle), 0.0), size)
        # distance of each pixel centre to the segment (x, y)-(x1, y1)
        dx, dy = x1 - x, y1 - y
        t = (((xx - x) * dx + (yy - y) * dy) / max(dx * dx + dy * dy, 1e-6)).clamp(0, 1)
        dist = ((xx - x - t * dx) ** 2 + (yy - y - t * dy) ** 2).sqrt()
        hole[dist <= width / 2] = 1.0
        x, y = x1, y1


def _box(hole: Tensor, g: torch.Generator, lo: float, hi: float) -> None:
    size = hole.shape[-1]
    r = torch.rand(4, generator=g)
    w = max(1, int(round((lo + (hi - lo) * float(r[0])) * size)))
    h = max(1, int(round((lo + (hi - lo) * float(r[1])) * size)))
    x0 = int(float(r[2]) * (size - w + 1))
    y0 = int(float(r[3]) * (size - h + 1))
    hole[y0:y0 + h, x0:x0 + w] = 1.0


def random_hole(size: int, kind: str = "box", generator: torch.Generator | None = None) -> Tensor:
    """One hole (1, size, size) float in {0, 1} (1 = missing) of ``kind`` in :data:`MASK_KINDS`; never empty
    and never the whole image."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}: choose one of {', '.join(MASK_KINDS)}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 4:
        raise ValueError(f"mask size must be an int >= 4, got {size!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    hole = torch.zeros(size, size)
    if kind == "box":
        _box(hole, g, 0.1, 0.5)
    elif kind == "strokes":
        for _ in range(1 + int(torch.randint(3, (), generator=g))):
            _stroke(hole, g, (0.04, 0.10), 2 + int(torch.randint(3, (), generator=g)))
    else:  # "large": wide strokes and boxes (LaMa's large masks), capped at ~half the image
        for _ in range(1 + int(torch.randint(3, (), generator=g))):
            _stroke(hole, g, (0.10, 0.20), 2 + int(torch.randint(3, (), generator=g)))
        for _ in range(int(torch.randint(3, (), generator=g))):
            _box(hole, g, 0.2, 0.5)
    if hole.all():
        hole[: size // 2] = 0.0
    if not hole.any():
        hole[size // 4: size // 2, size // 4: size // 2] = 1.0
    return hole[None]


def random_holes(n: int, size: int, kinds: tuple[str, ...] = MASK_KINDS,
                 generator: torch.Generator | None = None) -> Tensor:
    """``n`` holes (n, 1, size, size), the kind of each drawn uniformly from ``kinds``."""
    if not kinds:
        raise ValueError("kinds must name at least one mask kind")
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    picks = torch.randint(len(kinds), (n,), generator=g)
    return torch.stack([random_hole(size, kinds[int(k)], g) for k in picks])


def check_hole(hole: Tensor, image: Tensor) -> Tensor:
    """``hole`` as float (B, 1, H, W) matching ``image`` (B, C, H, W); ValueError unless it is binary
    (0 = known, 1 = to fill), finite and of the image's size (a (H, W) or (1, H, W) hole is broadcast)."""
    _check_image(image)
    if not isinstance(hole, Tensor):
        raise ValueError(f"the mask must be a tensor, got {type(hole).__name__}")
    if hole.ndim == 2:
        hole = hole[None, None]
    elif hole.ndim == 3:
        hole = hole[:, None] if hole.shape[0] == image.shape[0] and hole.shape[0] != 1 else hole[None]
    if hole.ndim != 4 or hole.shape[1] != 1 or tuple(hole.shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(f"the mask must be (H, W) = {tuple(image.shape[-2:])} like the image, got {tuple(hole.shape)}")
    hole = hole.to(image.device, torch.float32)
    if not torch.isfinite(hole).all() or not ((hole == 0) | (hole == 1)).all():
        raise ValueError("the mask must be binary: 1 = region to fill, 0 = known pixels")
    return hole.expand(image.shape[0], 1, *image.shape[-2:])


def pyramid_fill(image: Tensor, hole: Tensor) -> Tensor:
    """Fill the hole by push-pull interpolation (Gortler et al. 1996, "The Lumigraph", Sec. 3.2): *pull*
    averages the known pixels 2× down a pyramid, weighting each by how much of it is known
    (x_{l+1} = Σ w x / Σ w, w_{l+1} = min(1, Σ w) over 2 × 2 blocks); *push* goes back up, each level's
    missing part taken from the bilinear upsampling of the coarser one (x_l ← w_l x_l + (1 − w_l) ↑x_{l+1}).
    A smooth, batched, GPU-friendly fill in O(H W); known pixels are kept exactly.
    ``image`` (B, C, H, W), ``hole`` (B, 1, H, W) with 1 = missing -> (B, C, H, W)."""
    _check_image(image)
    if hole.ndim != 4 or hole.shape[1] != 1 or hole.shape[0] != image.shape[0] or hole.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"the hole must be (B, 1, H, W) = ({image.shape[0]}, 1, {image.shape[2]}, "
                         f"{image.shape[3]}), got {tuple(hole.shape)}")
    w = 1 - hole.to(image.dtype)
    levels: list[tuple[Tensor, Tensor]] = []
    x = image * w
    while min(x.shape[-2:]) > 1 and bool((w < 1).any()):
        levels.append((x, w))
        if x.shape[-2] % 2 or x.shape[-1] % 2:  # odd sizes: pad by replication to pool in 2 × 2 blocks
            pad = (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)
            x, w = F.pad(x, pad, mode="replicate"), F.pad(w, pad, mode="replicate")
        total = F.avg_pool2d(w, 2) * 4
        x = F.avg_pool2d(x * w, 2) * 4 / total.clamp_min(1e-8) * (total > 0)
        w = total.clamp(max=1)
    for fine_x, fine_w in reversed(levels):
        up = F.interpolate(x, size=fine_x.shape[-2:], mode="bilinear", align_corners=False)
        x = fine_w * fine_x + (1 - fine_w) * up
    return torch.where(hole.bool(), x, image)
