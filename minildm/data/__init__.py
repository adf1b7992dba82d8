"""Datasets for minildm: one loader, one item format, deterministic splits.

``load_dataset(name, split, image_size, **options)`` returns a
``torch.utils.data.Dataset`` whose items are dicts

* ``"image"``: float32 (C, H, W) in [-1, 1] (C = ``channels``, 3 by default);
* ``"caption"``: str;
* ``"label"``: int (see each dataset's ``class_names`` / ``num_classes``);
* ``"boxes"``: float32 (N, 4) normalised (x0, y0, x1, y1) in [0, 1] (N = 0 except for shapes);
* ``"objects"``: list of attribute dicts (shapes only; empty otherwise);
* ``"index"``: the item's index, plus dataset-specific extras.

Names (:data:`DATASET_NAMES`, registered with :func:`~minildm.data.registry.register_dataset`): ``"shapes"`` (procedural captioned shapes, embedded,
the default of every notebook), ``"fashion_mnist"``, ``"photos"`` (crops of photographs
bundled with scikit-image / scikit-learn), ``"image_folder"`` and ``"shapes+photos"`` (the two
halves alternating, notebook 06). Splits: ``"train"``,
``"val"``, ``"test"``; they never share an image. Use ``DataLoader(ds,
collate_fn=collate)`` to batch items.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

# the datasets register themselves on import, in this order (that of DATASET_NAMES)
from . import shapes
from .fashion_mnist import FashionMNIST
from .photos import PhotoCrops
from .image_folder import ImageFolder
from .mixture import ShapesAndPhotos
from .registry import DATASETS, register_dataset
from .shapes import (BACKGROUND_NAMES, COLOUR_NAMES, COLOURS, LABEL_KINDS, POSITION_NAMES, RELATIONS, SHAPE_NAMES,
                     SHAPE_SYNONYMS, SIZE_NAMES, Background, Scene, ShapeObject, ShapesDataset, ShapesStream,
                     label_names, relation, render_scene)

#: registered datasets (:mod:`minildm.data.registry`)
DATASET_NAMES = tuple(DATASETS)
SPLITS = ("train", "val", "test")


def load_dataset(name: str, split: str = "train", image_size: int = 64, **options: Any) -> Dataset:
    """Build dataset ``name`` for ``split`` at ``image_size`` x ``image_size`` pixels.

    Options per dataset (anything else raises ValueError):

    * shapes: ``length`` (default 10 000 train / 1 000 val / 1 000 test; ``None``
      gives an endless :class:`ShapesStream` that also takes ``start``, ``rank``,
      ``world_size``), ``seed``, ``channels``, ``label`` (one of :data:`LABEL_KINDS`),
      ``cache``, ``cache_mb``, ``holdout`` ("colour shape" pairs the train split never shows).
      image_size 32..256.
    * fashion_mnist: ``root`` (a folder with the IDX files or a torchvision root;
      default Debian's), ``download`` (torchvision, only when True), ``channels``,
      ``length`` (first n items), ``seed`` (caption phrasing). image_size 8..512.
    * photos: ``length`` (default 5 000 / 500 / 500), ``seed``, ``channels``, ``flip``,
      ``split_by`` ("region" or "image"), ``sources``. image_size 16..512.
    * image_folder: ``root`` (required), ``captions``, ``channels``, ``val_fraction``,
      ``test_fraction``, ``length``; ``seed`` is accepted and unused (the split is a
      hash of each file's path). image_size 8..2048.
    * shapes+photos: ``length`` (default 1 000 / 1 000 / 1 000... twice the photos' default), ``seed``,
      ``channels``; even items are shapes, odd ones photo crops (``domain``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    entry = DATASETS[name]
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                         f"allowed: {', '.join(entry.options)}")
    return entry.build(split=split, image_size=image_size, **options)


def load_images(name: str, split: str, n: int, image_size: int = 64, **options: Any) -> torch.Tensor:
    """The images of the first ``n`` items of :func:`load_dataset` ``(name, split, image_size, length=n,
    **options)``, stacked: (n, C, H, W) in [-1, 1]."""
    ds = load_dataset(name, split, image_size, length=n, **options)
    return torch.stack([ds[i]["image"] for i in range(n)])


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: images -> (B, C, H, W), labels and indices -> (B,) int64, captions -> list[str].

    ``boxes`` stays a list of (N_i, 4) tensors and ``objects`` a list of lists (the
    number of objects varies); :func:`pad_boxes` turns boxes into a padded tensor.
    Any other key becomes a list.
    """
    if len(items) == 0:
        raise ValueError("collate needs at least one item")
    keys = list(items[0].keys())
    for it in items:
        if list(it.keys()) != keys:
            raise ValueError(f"items have different keys: {keys} vs {list(it.keys())}")
    shapes_ = {tuple(it["image"].shape) for it in items}
    if len(shapes_) != 1:
        raise ValueError(f"images of different shapes cannot be batched: {sorted(shapes_)}")
    out: dict[str, Any] = {}
    for key in keys:
        values = [it[key] for it in items]
        if key == "image":
            out[key] = torch.stack(values)
        elif key in ("label", "index"):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = list(values)
    return out


def pad_boxes(boxes: Sequence[torch.Tensor], max_objects: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (N_i, 4) boxes -> padded (B, M, 4) and a bool mask (B, M) of real boxes.

    M = ``max_objects`` (default: the largest N_i); more boxes than M -> ValueError.
    """
    n = [int(b.shape[0]) for b in boxes]
    m = max(n, default=0) if max_objects is None else int(max_objects)
    if any(k > m for k in n):
        raise ValueError(f"an item has {max(n)} boxes, more than max_objects={m}")
    out = torch.zeros(len(boxes), m, 4)
    mask = torch.zeros(len(boxes), m, dtype=torch.bool)
    for i, b in enumerate(boxes):
        out[i, : n[i]] = b
        mask[i, : n[i]] = True
    return out, mask


__all__ = [
    "BACKGROUND_NAMES", "COLOURS", "COLOUR_NAMES", "DATASETS", "DATASET_NAMES", "LABEL_KINDS", "POSITION_NAMES",
    "RELATIONS", "SHAPE_NAMES", "SHAPE_SYNONYMS", "SIZE_NAMES", "SPLITS", "Background", "FashionMNIST",
    "ImageFolder", "PhotoCrops", "Scene", "ShapeObject", "ShapesDataset", "ShapesStream", "collate",
    "label_names", "load_dataset", "load_images", "pad_boxes", "register_dataset", "relation", "render_scene", "shapes",
]
