"""Rendering a scene: textured backgrounds and anti-aliased objects, in vectorised NumPy.

:func:`render` turns a :class:`~minildm.data.shapes.scene.Scene` into a uint8 RGB
array (size, size, 3); the canvas in between is float32 (size, size, 3) in [0, 1].
Every object is drawn from its signed distance function d(p) (in pixels, negative
inside); the coverage of a pixel is clip(0.5 - d, 0, 1), which gives anti-aliased
edges without supersampling. The outline is the band -w < d < 0. Images are
quantised to 8 bits (like real photographs); the datasets map them to [-1, 1] with
x = u / 127.5 - 1.

The background is a low-contrast two-colour texture (stripes, checkerboard, dot
grid, grain, waves) of a few pixels' period (∝ sqrt(size / 64), so it stays a few
pixels wide at every resolution): the high-frequency detail that an autoencoder
trained with a pixel-wise L2 loss alone blurs away and a perceptual (LPIPS) +
adversarial loss keeps (notebook 01; Rombach et al. 2022, Sec. 3.1; Esser et al. 2021).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .geometry import HALF_EXTENTS, shape_sdf
from .scene import Background, Scene, ShapeObject
from .vocabulary import BACKGROUND_NAMES, COLOURS


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (X, Y), each (size, size) float32, in pixels."""
    c = np.arange(size, dtype=np.float32) + 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def _texture_period(period: float, size: int) -> float:
    return max(2.5, period * math.sqrt(size / 64))


def render_background(bg: Background, size: int) -> np.ndarray:
    """Render a background as float32 (size, size, 3) in [0, 1].

    The texture is a mask a(x, y) in [0, 1] that mixes the two colours,
    c = c_a + a (c_b - c_a), with antialiased transitions about one pixel wide:
    stripes a = clip(1/2 + sin(2π u / p + φ) p / 2π) along u = x cos θ + y sin θ;
    checker = product of two such sines; dots = coverage of discs on a rotated grid;
    waves = stripes along a sinusoidally warped u; grain = i.i.d. uniform noise.
    """
    x, y = _pixel_grid(size)
    p = _texture_period(bg.period, size)
    ca, sa = math.cos(bg.angle), math.sin(bg.angle)
    u = x * ca + y * sa
    k = 2 * math.pi / p
    if bg.kind == "stripes":
        a = np.sin(k * u + bg.phase) * (p / (2 * math.pi)) + 0.5
    elif bg.kind == "waves":
        v = y * ca - x * sa
        w = u + 0.6 * p * np.sin(v * (k / 4.5) + bg.phase)
        a = np.sin(k * w) * (p / (2 * math.pi)) + 0.5
    elif bg.kind == "checker":
        v = y * ca - x * sa
        kc = k / 1.5
        a = np.sin(kc * u + bg.phase) * np.sin(kc * v) * (1.5 * p / (2 * math.pi)) + 0.5
    elif bg.kind == "dots":
        v = y * ca - x * sa
        sp = 1.5 * p
        du = u - sp * np.round(u / sp)
        dv = v - sp * np.round(v / sp)
        a = 0.5 - (np.sqrt(du * du + dv * dv) - 0.32 * sp)
    elif bg.kind == "grain":
        a = np.random.Generator(np.random.PCG64(bg.noise_seed)).random((size, size), dtype=np.float32)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}; allowed: {', '.join(BACKGROUND_NAMES)}")
    np.clip(a, 0.0, 1.0, out=a)
    c0 = np.asarray(bg.colour_a, dtype=np.float32)
    c1 = np.asarray(bg.colour_b, dtype=np.float32)
    return c0 + a[..., None] * (c1 - c0)


def outline_width(size: int, radius_px: float) -> float:
    """Outline width in pixels: a tenth of the object's radius, between 0.5 px and size / 64 px.

    Thin enough that small objects keep most of their area in the fill colour.
    """
    return float(np.clip(0.1 * radius_px, 0.5, max(0.5, size / 64)))


def object_sdf(obj: ShapeObject, size: int) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The signed distance d(p) in pixels (negative inside) of ``obj`` on a size × size canvas, over the window
    of pixels around it: ((y0, y1, x0, x1), d of shape (y1 − y0, x1 − x0)); None when it misses the canvas.
    The renderer draws from it, the segmentation maps (:mod:`~minildm.data.shapes.segmentation`) read it."""
    r_px = obj.radius * size
    cx, cy = obj.cx * size, obj.cy * size
    ex, ey = HALF_EXTENTS[obj.shape]
    x0, x1 = max(0, int(cx - ex * r_px) - 2), min(size, int(math.ceil(cx + ex * r_px)) + 2)
    y0, y1 = max(0, int(cy - ey * r_px) - 2), min(size, int(math.ceil(cy + ey * r_px)) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    gx, gy = _pixel_grid(size)
    px = (gx[y0:y1, x0:x1] - cx) / r_px
    py = (gy[y0:y1, x0:x1] - cy) / r_px
    return (y0, y1, x0, x1), shape_sdf(obj.shape, px, py) * r_px


def draw_object(canvas: np.ndarray, obj: ShapeObject) -> None:
    """Composite one object onto ``canvas`` (size, size, 3) float32 in place.

    Coverage α = clip(1/2 - d, 0, 1) from the signed distance d in pixels; the body
    (coverage of d + w) has the object's colour, the outline band of width w a darker
    shade: c = c_canvas (1 - α) + c_outline (α - α_body) + c_body α_body.
    """
    size = canvas.shape[0]
    window = object_sdf(obj, size)
    if window is None:
        return
    (y0, y1, x0, x1), d = window
    r_px = obj.radius * size
    alpha = np.clip(0.5 - d, 0.0, 1.0)
    body = np.clip(0.5 - d - outline_width(size, r_px), 0.0, 1.0)
    colour = np.asarray(COLOURS[obj.colour], dtype=np.float32) / 255.0
    region = canvas[y0:y1, x0:x1]
    region *= (1.0 - alpha)[..., None]
    region += (alpha - body)[..., None] * (0.55 * colour) + body[..., None] * colour


def render(scene: Scene, image_size: int) -> np.ndarray:
    """Render ``scene`` to a uint8 RGB array (image_size, image_size, 3)."""
    canvas = render_background(scene.background, image_size)
    for obj in reversed(scene.objects):  # main object last, i.e. on top
        draw_object(canvas, obj)
    return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

