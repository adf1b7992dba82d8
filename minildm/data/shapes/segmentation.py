"""Segmentation maps of the shapes data: one class per shape kind plus background (notebook 06).

The map is drawn from the same signed distance functions d(p) as the image
(:mod:`~minildm.data.shapes.render`): a pixel belongs to an object where d < 0 (its anti-aliased
coverage clip(1/2 − d, 0, 1) exceeds 1/2), and the main object, drawn last, wins where objects
overlap. Classes: 0 = background, 1 + shape_id for :data:`SEGMENTATION_CLASSES` [1:] (the order of
:data:`~minildm.data.shapes.vocabulary.SHAPE_NAMES`).

The semantic synthesis model of notebook 06 (paper Sec. 4.3.2, Fig. 9) turns such a map into an
image; the checker then reads back each region's shape.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .render import object_sdf
from .scene import ShapeObject, make_object
from .vocabulary import SHAPE_NAMES

__all__ = ["SEGMENTATION_CLASSES", "segmentation_map", "segmentation_from_objects"]

#: class names of the maps: background, then the shapes
SEGMENTATION_CLASSES = ("background", *SHAPE_NAMES)


def segmentation_map(objects: Sequence[ShapeObject], image_size: int) -> np.ndarray:
    """The class of every pixel, int64 (image_size, image_size): 0 = background, 1 + shape_id inside an
    object (d < 0); ``objects`` main object first, as in a :class:`~minildm.data.shapes.scene.Scene`."""
    size = int(image_size)
    seg = np.zeros((size, size), dtype=np.int64)
    for obj in reversed(tuple(objects)):  # main object last, i.e. on top (as render() draws them)
        window = object_sdf(obj, size)
        if window is None:
            continue
        (y0, y1, x0, x1), d = window
        seg[y0:y1, x0:x1][d < 0] = 1 + SHAPE_NAMES.index(obj.shape)
    return seg


def segmentation_from_objects(objects: Sequence[Mapping[str, Any] | ShapeObject], image_size: int) -> torch.Tensor:
    """:func:`segmentation_map` of object dicts (a dataset item's ``objects``, or hand-written ones accepted by
    :func:`~minildm.data.shapes.scene.make_object`) as a LongTensor (image_size, image_size)."""
    return torch.from_numpy(segmentation_map([make_object(o) for o in objects], image_size))
