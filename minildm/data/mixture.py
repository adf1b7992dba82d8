"""``shapes+photos``: procedural scenes and photo crops, alternating (notebook 06).

The image-to-image models of notebook 06 (super-resolution, inpainting) are trained and measured on
both kinds of image: the shapes scenes (flat colours, sharp edges, fine textures) and crops of real
photographs (:mod:`minildm.data.photos`). Item ``i`` is shapes item ``i // 2`` for even ``i`` and
photos item ``i // 2`` for odd ``i``, so any prefix of the split holds both halves equally; items
keep the common keys (``image``, ``caption``, ``boxes``, ``objects``, ``index``) and add ``domain``
(``"shapes"`` or ``"photos"``); ``label`` is the domain's index in :data:`DOMAINS`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .photos import DEFAULT_LENGTHS as PHOTO_LENGTHS
from .photos import PhotoCrops
from .registry import register_dataset
from .shapes import ShapesDataset

__all__ = ["DOMAINS", "ShapesAndPhotos"]

#: the two halves, in the order of the items
DOMAINS = ("shapes", "photos")


@register_dataset("shapes+photos", options=("length", "seed", "channels"))
class ShapesAndPhotos(Dataset):
    """Shapes scenes and photo crops alternating (see the module docstring)."""

    class_names = DOMAINS
    num_classes = len(DOMAINS)

    def __init__(self, split: str = "train", image_size: int = 64, length: int | None = None, seed: int = 0,
                 channels: int = 3) -> None:
        if length is None:
            length = 2 * PHOTO_LENGTHS.get(split, 500)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.length = int(length)
        half = (self.length + 1) // 2
        self.parts = (ShapesDataset(split, image_size, length=half, seed=seed, channels=channels),
                      PhotoCrops(split, image_size, length=max(1, self.length // 2), seed=seed, channels=channels,
                                 flip=split == "train"))
        self.split, self.image_size = split, image_size

    def __len__(self) -> int:
        return self.length

    def domain(self, index: int) -> str:
        """``"shapes"`` or ``"photos"``: the half item ``index`` comes from."""
        return DOMAINS[int(index) % 2]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        index = int(index) + (self.length if index < 0 else 0)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        item = self.parts[index % 2][index // 2]
        return {"image": item["image"], "caption": item["caption"], "label": index % 2, "boxes": item["boxes"],
                "objects": item["objects"], "index": index, "domain": DOMAINS[index % 2]}

    def __repr__(self) -> str:
        return f"ShapesAndPhotos(split={self.split!r}, image_size={self.image_size}, length={self.length})"
