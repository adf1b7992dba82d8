"""The shapes in their unit frame: box half extents and signed distance functions.

Each shape is defined at radius 1 around the origin, with y pointing down (image
convention). :data:`HALF_EXTENTS` gives the half width and half height (ex, ey) of
its tight box, so an object of radius r centred at (cx, cy) has the box
(cx - ex r, cy - ey r, cx + ex r, cy + ey r). :func:`shape_sdf` gives its signed
distance d(x, y) (negative inside) on arrays of any shape, e.g. a (H, W) pixel grid;
the renderer scales it to pixels and turns it into anti-aliased coverage.

The renderer (:mod:`minildm.data.shapes.render`) draws every object from these
functions, and the checker of notebooks 04 and 05 rasterises the ground truth of
requested objects with the same ones (:func:`minildm.eval.checker.object_maps`).
"""
from __future__ import annotations

import math

import numpy as np

from .vocabulary import SHAPE_NAMES

# Half extents (ex, ey) of each shape's box in its unit frame (radius 1).
_SQUARE_HALF = 0.88
_DIAMOND_HALF = 1.1
_HEX_R = 1.05
_TRI_SIDE = 2.2
_TRI_H = _TRI_SIDE * math.sqrt(3) / 2
_STAR_R, _STAR_RI = 1.15, 0.55
_CROSS_ARM, _CROSS_HALF = 1.0, 0.34
_STAR_YOFF = _STAR_R * (1 - math.cos(math.pi / 5)) / 2  # moves the star so that its box is centred
HALF_EXTENTS: dict[str, tuple[float, float]] = {
    "circle": (1.0, 1.0),
    "square": (_SQUARE_HALF, _SQUARE_HALF),
    "triangle": (_TRI_SIDE / 2, _TRI_H / 2),
    "star": (_STAR_R * math.sin(2 * math.pi / 5), _STAR_R * (1 + math.cos(math.pi / 5)) / 2),
    "diamond": (_DIAMOND_HALF, _DIAMOND_HALF),
    "hexagon": (_HEX_R * math.cos(math.pi / 6), _HEX_R),
    "cross": (_CROSS_ARM, _CROSS_ARM),
}


def _sd_box(x: np.ndarray, y: np.ndarray, bx: float, by: float) -> np.ndarray:
    """Exact signed distance to an axis-aligned box of half sizes (bx, by)."""
    qx = np.abs(x) - bx
    qy = np.abs(y) - by
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sd_star(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance to a 5-pointed star (tip up), by folding into one 36° sector.

    With polar angle φ measured from the tip direction, φ is reduced modulo 72° and
    reflected into [0°, 36°]; there the boundary is the segment from the tip
    T = (R, 0) to the inner vertex I = r_i (cos 36°, sin 36°).
    """
    y = y - _STAR_YOFF
    rho = np.sqrt(x * x + y * y)
    phi = np.arctan2(x, -y)
    sector = 2 * math.pi / 5
    phi = np.abs(np.mod(phi + sector / 2, sector) - sector / 2)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    tx = _STAR_R
    ix, iy = _STAR_RI * math.cos(math.pi / 5), _STAR_RI * math.sin(math.pi / 5)
    ex, ey = ix - tx, iy
    wx, wy = px - tx, py
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dist = np.sqrt((wx - t * ex) ** 2 + (wy - t * ey) ** 2)
    inside = (ex * wy - ey * wx) > 0
    return np.where(inside, -dist, dist)


def shape_sdf(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to ``shape`` of radius 1 centred at the origin; y points down."""
    if shape == "circle":
        return np.sqrt(x * x + y * y) - 1.0
    if shape == "square":
        return _sd_box(x, y, _SQUARE_HALF, _SQUARE_HALF)
    if shape == "diamond":
        return (np.abs(x) + np.abs(y) - _DIAMOND_HALF) * (1 / math.sqrt(2))
    if shape == "hexagon":  # pointy top: half-planes with normals (1, 0) and (1/2, √3/2)
        ax, ay = np.abs(x), np.abs(y)
        apothem = _HEX_R * math.cos(math.pi / 6)
        return np.maximum(ax - apothem, 0.5 * ax + (math.sqrt(3) / 2) * ay - apothem)
    if shape == "triangle":  # equilateral, tip up: base y = h/2, sides with normals (±√3/2, -1/2)
        return np.maximum(y - _TRI_H / 2, (math.sqrt(3) / 2) * np.abs(x) - 0.5 * y - _TRI_H / 4)
    if shape == "star":
        return _sd_star(x, y)
    if shape == "cross":
        return np.minimum(_sd_box(x, y, _CROSS_ARM, _CROSS_HALF), _sd_box(x, y, _CROSS_HALF, _CROSS_ARM))
    raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPE_NAMES)}")
