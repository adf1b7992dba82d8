"""The shapes datasets: items, labels, a fixed-length split and an endless stream.

An item is a dict: ``"image"`` float32 (C, H, W) in [-1, 1] (C = ``channels``),
``"caption"`` (str), ``"label"`` (int, see :func:`scene_label`), ``"boxes"`` float32
(N, 4) normalised (x0, y0, x1, y1), ``"objects"`` (list of attribute dicts, see
:meth:`~minildm.data.shapes.scene.ShapeObject.to_dict`), ``"background"`` (texture
kind) and ``"index"``. :func:`generate` makes item ``i`` of a split as a pure function
of (seed, split, i, image_size); :class:`ShapesDataset` is a cached map-style split of
fixed length, :class:`ShapesStream` an endless, sharded iterable one; both skip train
scenes with a held-out "colour shape" pair (``holdout``). :func:`render_scene` renders
a requested layout as an item.

Notebooks 01 to 05 train on these items, loaded with ``minildm.data.load_dataset("shapes", ...)``
(directly or through :mod:`minildm.recipes`).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..registry import register_dataset
from ..transforms import check_channels, check_image_size, check_seed, uint8_to_tensor
from .captions import caption_scene
from .render import render
from .scene import (VERSION, Background, Scene, ShapeObject, item_rng, make_object, parse_holdout, sample_background,
                    sample_scene, scene_has, split_code)
from .vocabulary import BACKGROUND_NAMES, COLOUR_NAMES, LABEL_KINDS, SHAPE_NAMES, label_names

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 256

SPLITS = ("train", "val", "test")
#: Default number of items per split when ``length`` is not given.
DEFAULT_LENGTHS = {"train": 10_000, "val": 1_000, "test": 1_000}


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
    """A fixed-length map-style split of the shapes data (see :mod:`minildm.data.shapes`).

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


@register_dataset("shapes", options=("length", "seed", "channels", "label", "cache", "cache_mb", "start", "rank",
                                     "world_size", "holdout"))
def shapes_dataset(split: str, image_size: int, **options: Any) -> ShapesDataset | ShapesStream:
    """``load_dataset("shapes", ...)``: a :class:`ShapesDataset`, or with ``length=None`` an endless
    :class:`ShapesStream` (which alone takes ``start``, ``rank``, ``world_size``)."""
    if "length" in options and options["length"] is None:
        opts = {k: v for k, v in options.items() if k not in ("length", "cache", "cache_mb")}
        return ShapesStream(split=split, image_size=image_size, **opts)
    stream_only = [k for k in ("start", "rank", "world_size") if k in options]
    if stream_only:
        raise ValueError(f"option(s) {', '.join(stream_only)} apply only to the endless stream (length=None)")
    return ShapesDataset(split=split, image_size=image_size, **options)
