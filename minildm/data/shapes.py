"""Procedural captioned shapes: the embedded default dataset.

Each image shows 1 to 3 flat, outlined objects (circle, square, triangle, star,
diamond, hexagon, cross) in 8 named colours and 3 sizes on a low-contrast,
fine-grained textured background (stripes, checkerboard, dot grid, grain, waves).
The objects carry the *semantics* (class, layout, caption) that the conditional
latent diffusion models of the later notebooks learn; the background carries
*high-frequency detail* of a few pixels' period, the part of an image that an
autoencoder trained with a pixel-wise L2 loss alone blurs away and a perceptual
(LPIPS) + adversarial loss keeps (Rombach et al. 2022, Sec. 3.1; Esser et al. 2021).

Ground truth per image
----------------------
* ``objects``: one dict per object, largest first: ``shape``, ``colour``, ``size``
  (``small``/``medium``/``large``), ``position`` (one of :data:`POSITION_NAMES`, by
  thirds of the image), ``box`` (x0, y0, x1, y1) and ``centre`` (cx, cy), both
  normalised to [0, 1] with (0, 0) the top-left corner, ``radius`` (the object's
  scale as a fraction of the image side) and integer ids ``shape_id``,
  ``colour_id``, ``size_id``.
* ``boxes``: the objects' boxes as a float32 tensor (N, 4).
* ``label``: by default the **shape kind of the main object**. The main object is
  ``objects[0]``; when there are several objects its size class is strictly larger
  than every other object's (a ``large`` object among ``medium``/``small`` ones, or a
  ``medium`` one among ``small`` ones), so "the largest object" is never ambiguous.
  Other label kinds (option ``label=``): ``"colour"`` (colour of the main object),
  ``"shape_colour"`` (shape_id * 8 + colour_id, 56 classes), ``"count"`` (number of
  objects - 1).
* ``caption``: an English sentence naming every object's colour and shape (with
  a few synonyms: disc, rhombus, plus sign), sometimes its size, position, the
  background texture and a spatial relation ("to the left of", "above", ...) that
  is used only where it is unambiguous (the boxes are separated along that axis
  and the centres are further apart along it than across it).

Held-out combinations (option ``holdout``): a list of "colour shape" pairs (e.g. ``["red star"]``)
that the **train** split never shows: train items whose scene has such an object are skipped
(item i is the i-th accepted scene, still a pure function of the arguments). The val and test
splits are unchanged, so they test whether a model composes attributes it saw only apart.

Placement rules make attributes easy to check: colours within an image are all
different, objects stay inside the image with a margin, and two boxes may overlap
by at most 10 % of the smaller box's area.

Determinism
-----------
Item ``i`` of split ``s`` is a pure function of (``seed``, ``s``, ``i``,
``image_size``): its random numbers come from ``numpy.random.SeedSequence([VERSION,
seed, crc32(split), i])``, a stable hash, so the data are identical across runs,
processes and machines, and the three splits draw from disjoint streams. The
scene (objects, colours, background kind, angle, phase) does not depend on
``image_size``: item ``i`` at 64 px and at 128 px shows the same scene. Texture
periods grow slowly with the image size (∝ sqrt(size / 64)) so that they stay a
few pixels wide at every resolution.

Rendering
---------
Vectorised NumPy over the pixel grid. Every object is drawn from its signed
distance function d(p) (in pixels, negative inside); the coverage of a pixel is
clip(0.5 - d, 0, 1), which gives anti-aliased edges without supersampling. The
outline is the band -w < d < 0. Images are quantised to 8 bits (like real
photographs) and mapped to [-1, 1] with x = u / 127.5 - 1.
"""
from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .transforms import check_channels, check_image_size, check_seed, uint8_to_tensor

#: Bumped whenever the generator changes, so cached data from an older version never mixes in.
VERSION = 1

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 256

SPLITS = ("train", "val", "test")
#: Default number of items per split when ``length`` is not given.
DEFAULT_LENGTHS = {"train": 10_000, "val": 1_000, "test": 1_000}

SHAPE_NAMES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
#: Words a caption may use for each shape.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
    "cross": ("cross", "plus sign"),
}
_PLURALS = {"cross": "crosses", "plus sign": "plus signs", "rhombus": "rhombi"}

#: Named object colours (sRGB, 0..255): saturated and well apart in hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (222, 38, 38),
    "orange": (247, 134, 20),
    "yellow": (250, 222, 40),
    "green": (40, 176, 62),
    "cyan": (36, 208, 224),
    "blue": (36, 76, 226),
    "purple": (138, 56, 206),
    "pink": (250, 112, 196),
}
COLOUR_NAMES = tuple(COLOURS)

SIZE_NAMES = ("small", "medium", "large")
#: Object scale ("radius") as a fraction of the image side for each size word.
SIZE_RADII: dict[str, tuple[float, float]] = {
    "small": (0.085, 0.105),
    "medium": (0.125, 0.155),
    "large": (0.18, 0.22),
}

POSITION_NAMES = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
_POSITION_PHRASES = {
    "top left": ("in the top left", "in the top left corner"),
    "top": ("at the top",),
    "top right": ("in the top right", "in the top right corner"),
    "left": ("on the left",),
    "centre": ("in the centre", "in the middle"),
    "right": ("on the right",),
    "bottom left": ("in the bottom left", "in the bottom left corner"),
    "bottom": ("at the bottom",),
    "bottom right": ("in the bottom right", "in the bottom right corner"),
}

BACKGROUND_NAMES = ("stripes", "checker", "dots", "grain", "waves")
#: Adjective used in captions for each background texture.
BACKGROUND_WORDS = {"stripes": "striped", "checker": "checkered", "dots": "dotted", "grain": "grainy",
                    "waves": "wavy"}

LABEL_KINDS = ("shape", "colour", "shape_colour", "count")
COUNT_WORDS = ("one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
_RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}

#: Largest allowed overlap of two boxes, as a fraction of the smaller box's area.
MAX_OVERLAP = 0.10
#: Distance kept between a box and the image border (fraction of the side).
MARGIN = 0.02

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


# --------------------------------------------------------------------------- scene description


@dataclass(frozen=True)
class ShapeObject:
    """One object: shape, colour, size word, centre (cx, cy) and radius, in [0, 1] image units."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Tight bounding box (x0, y0, x1, y1), normalised to [0, 1]."""
        ex, ey = HALF_EXTENTS[self.shape]
        r = self.radius
        return (self.cx - ex * r, self.cy - ey * r, self.cx + ex * r, self.cy + ey * r)

    @property
    def position(self) -> str:
        """Position word by thirds of the image: "top left", "top", ..., "bottom right"."""
        col = 0 if self.cx < 1 / 3 else (2 if self.cx > 2 / 3 else 1)
        row = 0 if self.cy < 1 / 3 else (2 if self.cy > 2 / 3 else 1)
        return POSITION_NAMES[3 * row + col]

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position,
            "box": tuple(float(v) for v in self.box), "centre": (float(self.cx), float(self.cy)),
            "radius": float(self.radius), "shape_id": SHAPE_NAMES.index(self.shape),
            "colour_id": COLOUR_NAMES.index(self.colour), "size_id": SIZE_NAMES.index(self.size),
        }


@dataclass(frozen=True)
class Background:
    """A two-colour texture: ``kind`` in :data:`BACKGROUND_NAMES`, colours in [0, 1] RGB.

    ``period`` is the texture period in pixels at 64 px (scaled by sqrt(size/64)),
    ``angle`` its orientation in radians, ``phase`` a phase in radians, and
    ``noise_seed`` seeds the per-pixel grain of the ``grain`` kind.
    """

    kind: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    period: float
    angle: float
    phase: float
    noise_seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "word": BACKGROUND_WORDS[self.kind], "colour_a": self.colour_a,
                "colour_b": self.colour_b, "period": self.period, "angle": self.angle}


@dataclass(frozen=True)
class Scene:
    """Objects (main object first) on a background."""

    objects: tuple[ShapeObject, ...]
    background: Background
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------- random scenes


def split_code(split: str) -> int:
    """A stable 32-bit code for a split name (CRC-32, unlike Python's salted ``hash``)."""
    return zlib.crc32(f"minildm.shapes/{split}".encode())


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of item ``index`` of ``split``: a stable hash of (VERSION, seed, split, index)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([VERSION, seed, split_code(split), index])))


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection area of boxes a and b over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    area = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / area


def sample_background(rng: np.random.Generator) -> Background:
    """A random low-contrast, fine-grained two-colour texture."""
    kind = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.32, 0.72)
    contrast = rng.uniform(0.12, 0.24) * (1 if rng.random() < 0.5 else -1)
    val_b = float(np.clip(val + contrast, 0.1, 0.9))
    colour_a = tuple(float(c) for c in colorsys.hsv_to_rgb(hue, sat, val))
    colour_b = tuple(float(c) for c in colorsys.hsv_to_rgb(hue, sat, val_b))
    return Background(kind=kind, colour_a=colour_a, colour_b=colour_b, period=float(rng.uniform(3.0, 6.0)),
                      angle=float(rng.uniform(0, math.pi)), phase=float(rng.uniform(0, 2 * math.pi)),
                      noise_seed=int(rng.integers(2**62)))


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene: 1-3 objects of distinct colours, main (largest) object first.

    Counts 1, 2, 3 with probabilities 0.3, 0.35, 0.35. Sizes: one object has any
    size (small/medium/large with probabilities 0.3/0.4/0.3); with several, the main object is medium or
    large and all others are of a strictly smaller size class. Positions are drawn
    uniformly and rejected while a box overlaps an earlier one by more than
    :data:`MAX_OVERLAP`; an object that finds no place in 40 tries is dropped.
    """
    u = rng.random()
    n = 1 if u < 0.3 else (2 if u < 0.65 else 3)
    if n == 1:
        u = rng.random()
        sizes = [SIZE_NAMES[0 if u < 0.3 else (1 if u < 0.7 else 2)]]
    else:
        main = 1 + int(rng.integers(2))  # medium or large
        sizes = [SIZE_NAMES[main]] + [SIZE_NAMES[int(rng.integers(main))] for _ in range(n - 1)]
    colours = rng.permutation(len(COLOUR_NAMES))[:n]
    shapes = rng.integers(len(SHAPE_NAMES), size=n)
    objects: list[ShapeObject] = []
    for k in range(n):
        lo, hi = SIZE_RADII[sizes[k]]
        r = float(rng.uniform(lo, hi))
        shape = SHAPE_NAMES[int(shapes[k])]
        ex, ey = HALF_EXTENTS[shape]
        for _ in range(40):
            cx = float(rng.uniform(ex * r + MARGIN, 1 - ex * r - MARGIN))
            cy = float(rng.uniform(ey * r + MARGIN, 1 - ey * r - MARGIN))
            obj = ShapeObject(shape, COLOUR_NAMES[int(colours[k])], sizes[k], cx, cy, r)
            if all(_overlap(obj.box, o.box) <= MAX_OVERLAP for o in objects):
                objects.append(obj)
                break
    return Scene(objects=tuple(objects), background=sample_background(rng))


# --------------------------------------------------------------------------- rendering


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


def outline_width(size: int, radius_px: float) -> float:
    """Outline width in pixels: a tenth of the object's radius, between 0.5 px and size / 64 px.

    Thin enough that small objects keep most of their area in the fill colour.
    """
    return float(np.clip(0.1 * radius_px, 0.5, max(0.5, size / 64)))


def draw_object(canvas: np.ndarray, obj: ShapeObject) -> None:
    """Composite one object onto ``canvas`` (size, size, 3) float32 in place.

    Coverage α = clip(1/2 - d, 0, 1) from the signed distance d in pixels; the body
    (coverage of d + w) has the object's colour, the outline band of width w a darker
    shade: c = c_canvas (1 - α) + c_outline (α - α_body) + c_body α_body.
    """
    size = canvas.shape[0]
    r_px = obj.radius * size
    cx, cy = obj.cx * size, obj.cy * size
    ex, ey = HALF_EXTENTS[obj.shape]
    x0, x1 = max(0, int(cx - ex * r_px) - 2), min(size, int(math.ceil(cx + ex * r_px)) + 2)
    y0, y1 = max(0, int(cy - ey * r_px) - 2), min(size, int(math.ceil(cy + ey * r_px)) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    gx, gy = _pixel_grid(size)
    px = (gx[y0:y1, x0:x1] - cx) / r_px
    py = (gy[y0:y1, x0:x1] - cy) / r_px
    d = shape_sdf(obj.shape, px, py) * r_px
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


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def relation(a: ShapeObject, b: ShapeObject) -> str | None:
    """The relation of ``a`` to ``b`` ("left of", "right of", "above", "below") when unambiguous, else None.

    ``a`` is left of ``b`` when a's box ends before b's box starts along x and the
    centres are further apart along x than along y; likewise for above/below.
    """
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) > abs(dy):
        if ax1 < bx0:
            return "left of"
        if bx1 < ax0:
            return "right of"
    elif abs(dy) > abs(dx):
        if ay1 < by0:
            return "above"
        if by1 < ay0:
            return "below"
    return None


def _noun_phrase(obj: ShapeObject, rng: np.random.Generator, size: bool, position: bool) -> str:
    words = ([obj.size] if size else []) + [obj.colour, _pick(rng, SHAPE_SYNONYMS[obj.shape])]
    phrase = f"{_article(words[0])} {' '.join(words)}"
    if position:
        phrase += " " + _pick(rng, _POSITION_PHRASES[obj.position])
    return phrase


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A caption that names every object's colour and shape, with varied templates.

    Templates choose among: a plain list ("a red circle and a small blue star"),
    counting ("three shapes: ..."), sizes, positions ("in the top left"), the
    background ("on a striped background") and one spatial relation between the
    main object and another when :func:`relation` finds it unambiguous.
    """
    objs = scene.objects
    bg = BACKGROUND_WORDS[scene.background.kind]
    backdrop = _pick(rng, ("background", "backdrop"))
    if not objs:
        return f"an empty {bg} {backdrop}"
    with_size = rng.random() < 0.5
    with_pos = rng.random() < 0.35
    nps = [_noun_phrase(o, rng, with_size, with_pos) for o in objs]
    n = len(objs)
    if n == 1:
        template = int(rng.integers(5))
        if template == 0:
            return nps[0]
        if template == 1:
            return f"{nps[0]} on a {bg} {backdrop}"
        if template == 2:
            return f"{_pick(rng, ('a picture', 'an image', 'a drawing'))} of {nps[0]}"
        if template == 3:
            return f"one {objs[0].colour} {_pick(rng, SHAPE_SYNONYMS[objs[0].shape])} " \
                   f"{_pick(rng, _POSITION_PHRASES[objs[0].position])}"
        return f"a {bg} {backdrop} with {nps[0]}"
    rels = [(j, relation(objs[0], objs[j])) for j in range(1, n)]
    rels = [(j, r) for j, r in rels if r is not None]
    template = int(rng.integers(6))
    if template == 0 and rels:
        j, rel = rels[int(rng.integers(len(rels)))]
        text = f"{nps[0]} {_pick(rng, _RELATION_PHRASES[rel])} {nps[j]}"
        rest = [nps[k] for k in range(1, n) if k != j]
        return text + (f", and {rest[0]}" if rest else "")
    if template == 1:
        return f"{COUNT_WORDS[n - 1]} {_pick(rng, ('shapes', 'objects'))}: {_join(nps)}"
    if template == 2:
        return f"{_join(nps)} on a {bg} {backdrop}"
    if template == 3:
        return f"a {bg} {backdrop} with {COUNT_WORDS[n - 1]} {_pick(rng, ('shapes', 'objects'))}: {_join(nps)}"
    shapes = [o.shape for o in objs]
    repeated = [s for s in SHAPE_NAMES if shapes.count(s) >= 2]
    if template == 4 and repeated:
        s = repeated[0]
        same = [o for o in objs if o.shape == s]
        noun = SHAPE_SYNONYMS[s][0]
        plural = _PLURALS.get(noun, noun + "s")
        text = f"{COUNT_WORDS[len(same) - 1]} {plural}, " + _join([f"{_article(o.colour)} {o.colour} one"
                                                                     for o in same])
        rest = [nps[k] for k, o in enumerate(objs) if o.shape != s]
        return text + (f", and {rest[0]}" if rest else "")
    return _join(nps)


# --------------------------------------------------------------------------- items


def label_names(kind: str = "shape") -> tuple[str, ...]:
    """Class names for a label kind (see the module docstring)."""
    if kind == "shape":
        return SHAPE_NAMES
    if kind == "colour":
        return COLOUR_NAMES
    if kind == "shape_colour":
        return tuple(f"{c} {s}" for s in SHAPE_NAMES for c in COLOUR_NAMES)
    if kind == "count":
        return COUNT_WORDS
    raise ValueError(f"unknown label kind {kind!r}; allowed: {', '.join(LABEL_KINDS)}")


def scene_label(scene: Scene, kind: str = "shape") -> int:
    """The class label of a scene (default: the shape id of the main, i.e. largest, object)."""
    if not scene.objects:
        raise ValueError("a scene without objects has no label")
    main = scene.objects[0]
    if kind == "shape":
        return SHAPE_NAMES.index(main.shape)
    if kind == "colour":
        return COLOUR_NAMES.index(main.colour)
    if kind == "shape_colour":
        return SHAPE_NAMES.index(main.shape) * len(COLOUR_NAMES) + COLOUR_NAMES.index(main.colour)
    if kind == "count":
        return len(scene.objects) - 1
    raise ValueError(f"unknown label kind {kind!r}; allowed: {', '.join(LABEL_KINDS)}")


def _make_item(image: np.ndarray, scene: Scene, caption: str, channels: int, label_kind: str) -> dict[str, Any]:
    boxes = torch.tensor([o.box for o in scene.objects], dtype=torch.float32).reshape(-1, 4)
    return {
        "image": uint8_to_tensor(image, channels),
        "caption": caption,
        "label": scene_label(scene, label_kind),
        "boxes": boxes,
        "objects": [o.to_dict() for o in scene.objects],
        "background": scene.background.kind,
    }


def generate(split: str, index: int, image_size: int = 64, seed: int = 0) -> tuple[np.ndarray, Scene, str]:
    """Item ``index`` of ``split`` as (uint8 image (H, W, 3), scene, caption); a pure function of its arguments."""
    rng = item_rng(seed, split, index)
    scene = sample_scene(rng)
    caption = caption_scene(scene, rng)
    return render(scene, image_size), scene, caption


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return split


def _check_label(kind: str) -> str:
    if kind not in LABEL_KINDS:
        raise ValueError(f"unknown label kind {kind!r}; allowed: {', '.join(LABEL_KINDS)}")
    return kind


def make_object(spec: Mapping[str, Any] | ShapeObject) -> ShapeObject:
    """Build a :class:`ShapeObject` from a dict (as in an item's ``objects``, or hand-written).

    Required: ``shape`` and ``colour``. Place it with ``centre`` (cx, cy) plus
    ``size`` (word; the middle of its radius range is used) or ``radius``, or with a
    ``box`` (x0, y0, x1, y1) that the shape is fitted into (largest scale that fits,
    centred). Coordinates are fractions of the image side.
    """
    if isinstance(spec, ShapeObject):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"an object must be a dict or ShapeObject, got {type(spec).__name__}")
    shape, colour = spec.get("shape"), spec.get("colour", spec.get("color"))
    if shape not in SHAPE_NAMES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPE_NAMES)}")
    if colour not in COLOUR_NAMES:
        raise ValueError(f"unknown colour {colour!r}; allowed: {', '.join(COLOUR_NAMES)}")
    ex, ey = HALF_EXTENTS[shape]
    if spec.get("box") is not None:
        x0, y0, x1, y1 = (float(v) for v in spec["box"])
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {spec['box']}")
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        radius = min((x1 - x0) / (2 * ex), (y1 - y0) / (2 * ey))
    else:
        if spec.get("centre", spec.get("center")) is None:
            raise ValueError("an object needs a 'centre' (cx, cy) or a 'box' (x0, y0, x1, y1)")
        cx, cy = (float(v) for v in spec.get("centre", spec.get("center")))
        if spec.get("radius") is not None:
            radius = float(spec["radius"])
        else:
            size = spec.get("size", "medium")
            if size not in SIZE_NAMES:
                raise ValueError(f"unknown size {size!r}; allowed: {', '.join(SIZE_NAMES)}")
            radius = sum(SIZE_RADII[size]) / 2
    if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
        raise ValueError(f"object centre must lie in [0, 1]^2, got ({cx}, {cy})")
    if not 0.0 < radius <= 0.5:
        raise ValueError(f"object radius must be in (0, 0.5] of the image side, got {radius}")
    size = spec.get("size")
    if size is None or spec.get("radius") is not None or spec.get("box") is not None:
        size = size_word(radius)
    return ShapeObject(shape, colour, size, cx, cy, radius)


def size_word(radius: float) -> str:
    """The size word whose radius range is nearest to ``radius``."""
    mids = {s: sum(r) / 2 for s, r in SIZE_RADII.items()}
    return min(SIZE_NAMES, key=lambda s: abs(mids[s] - radius))


def render_scene(objects: Sequence[Mapping[str, Any] | ShapeObject], image_size: int = 64,
                 background_seed: int = 0, background: str | Background | None = None,
                 channels: int = 3, label: str = "shape", caption_seed: int | None = None) -> dict[str, Any]:
    """Render a requested layout as a dataset item (same keys as :class:`ShapesDataset` items).

    ``objects`` is a list of dicts accepted by :func:`make_object`, main object
    first (it defines the label). The background texture is drawn from
    ``background_seed``; ``background`` may force its kind (a name in
    :data:`BACKGROUND_NAMES`) or give a full :class:`Background`. The caption is
    drawn from ``caption_seed`` (default: ``background_seed``).
    """
    image_size = check_image_size(image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, "shapes")
    channels = check_channels(channels)
    _check_label(label)
    background_seed = check_seed(background_seed)
    if isinstance(objects, Mapping) or not isinstance(objects, Sequence) or len(objects) == 0:
        raise ValueError("objects must be a non-empty list of object dicts")
    objs = tuple(make_object(o) for o in objects)
    if isinstance(background, Background):
        bg = background
    else:
        bg = sample_background(np.random.Generator(np.random.PCG64(
            np.random.SeedSequence([VERSION, background_seed, split_code("render")]))))
        if background is not None:
            if background not in BACKGROUND_NAMES:
                raise ValueError(f"unknown background {background!r}; allowed: {', '.join(BACKGROUND_NAMES)}")
            bg = Background(background, bg.colour_a, bg.colour_b, bg.period, bg.angle, bg.phase, bg.noise_seed)
    scene = Scene(objects=objs, background=bg)
    cseed = background_seed if caption_seed is None else check_seed(caption_seed)
    caption = caption_scene(scene, np.random.Generator(np.random.PCG64(
        np.random.SeedSequence([VERSION, cseed, split_code("caption")]))))
    return _make_item(render(scene, image_size), scene, caption, channels, label)


def parse_holdout(holdout: Sequence[str] | None) -> frozenset[tuple[str, str]]:
    """``["red star", ...]`` -> {("red", "star"), ...}; ValueError for unknown colours or shapes."""
    out = set()
    for pair in holdout or ():
        words = str(pair).lower().split()
        if len(words) != 2 or words[0] not in COLOUR_NAMES or words[1] not in SHAPE_NAMES:
            raise ValueError(f"held-out combination {pair!r} must be 'colour shape' with a colour in "
                             f"{', '.join(COLOUR_NAMES)} and a shape in {', '.join(SHAPE_NAMES)}")
        out.add((words[0], words[1]))
    return frozenset(out)


def scene_has(scene: Scene, combinations: frozenset[tuple[str, str]]) -> bool:
    """Whether any object of ``scene`` is one of the (colour, shape) ``combinations``."""
    return any((o.colour, o.shape) in combinations for o in scene.objects)


class _ShapesBase:
    holdout: frozenset[tuple[str, str]] = frozenset()

    def _accepted(self, raw: int) -> bool:
        """Whether raw index ``raw`` survives the held-out filter (always outside the train split)."""
        return not (self.holdout and self.split == "train" and scene_has(self.scene(raw), self.holdout))

    def _init_common(self, split: str, image_size: int, seed: int, channels: int, label: str,
                     holdout: Sequence[str] | None = None) -> None:
        self.holdout = parse_holdout(holdout)
        self.split = _check_split(split)
        self.image_size = check_image_size(image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, "shapes")
        self.seed = check_seed(seed)
        self.channels = check_channels(channels)
        self.label_kind = _check_label(label)
        self.class_names = label_names(label)
        self.num_classes = len(self.class_names)

    def scene(self, index: int) -> Scene:
        """The scene of item ``index`` (no rendering)."""
        return sample_scene(item_rng(self.seed, self.split, int(index)))

    def _render_item(self, index: int) -> dict[str, Any]:
        image, scene, caption = generate(self.split, index, self.image_size, self.seed)
        item = _make_item(image, scene, caption, self.channels, self.label_kind)
        item["index"] = index
        return item


class ShapesDataset(_ShapesBase, Dataset):
    """A fixed-length map-style split of the shapes data (see the module docstring).

    Items are cached in memory after their first rendering (as uint8 images plus
    their annotations) up to ``cache_mb`` megabytes; ``cache=False`` turns it off.
    """

    def __init__(self, split: str = "train", image_size: int = 64, length: int | None = None, seed: int = 0,
                 channels: int = 3, label: str = "shape", cache: bool = True, cache_mb: int = 1024,
                 holdout: Sequence[str] | None = None) -> None:
        self._init_common(split, image_size, seed, channels, label, holdout)
        if length is None:
            length = DEFAULT_LENGTHS[split]
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
            raise ValueError(f"length must be a positive int (or None for an endless stream), got {length!r}")
        self.length = int(length)
        self.cache = bool(cache)
        self._cache: dict[int, tuple[np.ndarray, Scene, str]] = {}
        self._cache_capacity = int(cache_mb * 2**20 // (3 * self.image_size**2)) if self.cache else 0
        self._raw: list[int] | None = None
        if self.holdout and self.split == "train":
            self._raw, raw = [], 0
            while len(self._raw) < self.length:
                if self._accepted(raw):
                    self._raw.append(raw)
                raw += 1

    def raw_index(self, index: int) -> int:
        """The index in the unfiltered split of item ``index`` (the same unless ``holdout``)."""
        return self._raw[index] if self._raw is not None else index

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        hit = self._cache.get(index)
        if hit is None:
            hit = generate(self.split, self.raw_index(index), self.image_size, self.seed)
            if len(self._cache) < self._cache_capacity:
                self._cache[index] = hit
        image, scene, caption = hit
        item = _make_item(image, scene, caption, self.channels, self.label_kind)
        item["index"] = self.raw_index(index)
        return item

    def __repr__(self) -> str:
        return (f"ShapesDataset(split={self.split!r}, image_size={self.image_size}, length={self.length}, "
                f"seed={self.seed}, channels={self.channels}, label={self.label_kind!r}"
                + (f", holdout={sorted(' '.join(p) for p in self.holdout)}" if self.holdout else "") + ")")


class ShapesStream(_ShapesBase, IterableDataset):
    """An endless stream of shapes items: indices start, start + 1, start + 2, ...

    The stream is sharded over DataLoader workers (``torch.utils.data.get_worker_info``)
    and over ``world_size`` processes: shard k = rank * num_workers + worker_id of
    K = world_size * num_workers yields indices start + k, start + k + K, ...; the
    shards partition the indices. To resume exactly after ``n`` items were consumed
    in order (one process, ``num_workers=0``), pass ``start=start + n``. Each item
    carries its ``"index"``. With ``holdout``, train indices showing a held-out combination
    are skipped (so resume from the index of the last item seen plus one).
    """

    def __init__(self, split: str = "train", image_size: int = 64, seed: int = 0, channels: int = 3,
                 label: str = "shape", start: int = 0, rank: int = 0, world_size: int = 1,
                 holdout: Sequence[str] | None = None) -> None:
        self._init_common(split, image_size, seed, channels, label, holdout)
        for name, value, low in (("start", start, 0), ("rank", rank, 0), ("world_size", world_size, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.start, self.rank, self.world_size = int(start), int(rank), int(world_size)

    def shard(self) -> tuple[int, int]:
        """(shard id, number of shards) of the calling worker/process."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def __iter__(self) -> Iterator[dict[str, Any]]:
        k, n = self.shard()
        index = self.start + k
        while True:
            if self._accepted(index):
                yield self._render_item(index)
            index += n

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Random access to item ``index`` (the same item the stream yields for it)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative int, got {index!r}")
        return self._render_item(int(index))

    def __repr__(self) -> str:
        return (f"ShapesStream(split={self.split!r}, image_size={self.image_size}, seed={self.seed}, "
                f"start={self.start}, rank={self.rank}, world_size={self.world_size})")


def caption_corpus(n: int, split: str = "train", seed: int = 0) -> list[str]:
    """The captions of the first ``n`` items of a shapes split (without rendering the images)."""
    out = []
    for i in range(n):
        rng = item_rng(seed, split, i)
        out.append(caption_scene(sample_scene(rng), rng))
    return out
