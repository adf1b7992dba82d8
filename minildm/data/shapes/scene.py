"""Scene description and random scenes: objects, backgrounds, placement, relations.

A :class:`Scene` is the ground truth of one image: 1 to 3 :class:`ShapeObject`
(shape, colour, size word, centre and radius in [0, 1] image units, with (0, 0) the
top-left corner; main object first) on a two-colour textured :class:`Background`.

Determinism: item ``i`` of split ``s`` draws all its random numbers from
:func:`item_rng`, ``numpy.random.SeedSequence([VERSION, seed, crc32(split), i])``, a
stable hash, so the data are identical across runs, processes and machines, and the
splits draw from disjoint streams. The scene does not depend on the image size.

Placement rules (:func:`sample_scene`) make attributes easy to check: colours
within an image are all different, objects stay inside the image with a margin
(:data:`MARGIN`), two boxes may overlap by at most :data:`MAX_OVERLAP` of the smaller
box's area, and with several objects the main one is of a strictly larger size
class than every other. :func:`relation` names the spatial relation of two objects
where it is unambiguous; :func:`parse_holdout` / :func:`scene_has` implement the
held-out "colour shape" pairs of notebook 05. :func:`make_object` builds an object
from a hand-written dict (requested layouts, as scored by the checker of notebook 04).
"""
from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import HALF_EXTENTS
from .vocabulary import (BACKGROUND_NAMES, BACKGROUND_WORDS, COLOUR_NAMES, POSITION_NAMES, SHAPE_NAMES, SIZE_NAMES,
                         SIZE_RADII)

#: Bumped whenever the generator changes, so cached data from an older version never mixes in.
VERSION = 1

#: Largest allowed overlap of two boxes, as a fraction of the smaller box's area.
MAX_OVERLAP = 0.10
#: Distance kept between a box and the image border (fraction of the side).
MARGIN = 0.02


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
        """The object's entry of an item's ``objects``: its attributes, box, centre, radius and integer ids."""
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
        """The texture's kind, caption word, colours, period and angle."""
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


def box_overlap(a: Sequence[float], b: Sequence[float]) -> float:
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
            if all(box_overlap(obj.box, o.box) <= MAX_OVERLAP for o in objects):
                objects.append(obj)
                break
    return Scene(objects=tuple(objects), background=sample_background(rng))


# --------------------------------------------------------------------------- relations


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


# --------------------------------------------------------------------------- hand-written objects


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


# --------------------------------------------------------------------------- held-out combinations


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
