"""Random crops of the photographs bundled with scikit-image and scikit-learn.

Natural images with real textures (fur, wood grain, brick, gravel, grass, fabric,
galaxies) for evaluating autoencoders beyond the procedural shapes. The sources
are read from files inside the installed wheels (``skimage.data`` functions whose
images ship with scikit-image, and ``sklearn.datasets.load_sample_images``);
nothing is downloaded. See ``data/README.md`` for credits and licences.

Each item is a square crop of one source, resized (bilinear, antialiased) to
``image_size``. Item ``i`` of split ``s`` is a pure function of (seed, s, i,
image_size): a ``numpy.random.SeedSequence`` draws the source (uniformly), the crop
side (log-uniform in [image_size / 2, 2 image_size], clipped to the split's region)
and its position, and, with ``flip=True``, a horizontal flip.

Splits (``split_by``):
* ``"region"`` (default): every source is cut along its longer axis into three
  disjoint bands, train = the first 60 %, val = the next 20 %, test = the last 20 %.
  All sources appear in all splits and no pixel is shared between splits.
* ``"image"``: whole sources are held out: val = chelsea and gravel, test = flower
  and camera, train = the others.

``label`` is the source's index in :data:`SOURCE_NAMES`; ``boxes`` is empty;
``crop`` gives the crop (x0, y0, x1, y1) in source pixels and ``source`` its name.

Natural textures for the first stage's perceptual loss (notebook 01).
"""
from __future__ import annotations

import math
import zlib
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .registry import register_dataset
from .transforms import check_channels, check_image_size, check_seed, resize, to_channels

VERSION = 1
SPLITS = ("train", "val", "test")
DEFAULT_LENGTHS = {"train": 5_000, "val": 500, "test": 500}
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512
#: Fractions of the longer axis of each source used by the train, val and test splits.
REGION_FRACTIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
#: Sources held out with ``split_by="image"``.
HELD_OUT = {"val": ("chelsea", "gravel"), "test": ("flower", "camera")}
SPLIT_BY = ("region", "image")


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


#: name -> (loader, caption description). All ship inside the scikit-image / scikit-learn wheels.
SOURCES: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (_skimage("astronaut"), "an astronaut"),
    "chelsea": (_skimage("chelsea"), "a cat"),
    "coffee": (_skimage("coffee"), "a cup of coffee"),
    "rocket": (_skimage("rocket"), "a rocket launch"),
    "hubble_deep_field": (_skimage("hubble_deep_field"), "galaxies in deep space"),
    "immunohistochemistry": (_skimage("immunohistochemistry"), "stained tissue under a microscope"),
    "brick": (_skimage("brick"), "a brick wall"),
    "grass": (_skimage("grass"), "grass"),
    "gravel": (_skimage("gravel"), "gravel"),
    "camera": (_skimage("camera"), "a man with a camera"),
    "china": (_sklearn(0), "a temple in China"),
    "flower": (_sklearn(1), "a flower"),
}
SOURCE_NAMES = tuple(SOURCES)
CAPTION_TEMPLATES = ("a photo crop of {}", "a close-up photo of {}", "a crop of a photograph of {}",
                     "part of a photo of {}")


@lru_cache(maxsize=None)
def load_source(name: str) -> np.ndarray:
    """Source ``name`` as a uint8 RGB array (H, W, 3) (grey sources repeated to 3 channels)."""
    if name not in SOURCES:
        raise ValueError(f"unknown photo source {name!r}; allowed: {', '.join(SOURCE_NAMES)}")
    try:
        img = np.asarray(SOURCES[name][0]())
    except (ImportError, OSError) as err:  # e.g. a scikit-image build without the bundled file
        raise ValueError(f"photo source {name!r} cannot be read offline here ({err}); leave it out with "
                         f"sources=(...) from {', '.join(SOURCE_NAMES)}") from err
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        raise ValueError(f"photo source {name!r} is {img.dtype}, expected uint8")
    return np.ascontiguousarray(img)


def split_region(name: str, split: str, split_by: str = "region") -> tuple[int, int, int, int] | None:
    """The part (x0, y0, x1, y1) of source ``name`` that ``split`` may crop from, or None if none."""
    h, w = load_source(name).shape[:2]
    if split_by == "image":
        held = [s for s, names in HELD_OUT.items() if name in names]
        mine = (held[0] == split) if held else (split == "train")
        return (0, 0, w, h) if mine else None
    lo, hi = REGION_FRACTIONS[split]
    if w >= h:
        return (round(lo * w), 0, round(hi * w), h)
    return (0, round(lo * h), w, round(hi * h))


@register_dataset("photos", options=("length", "seed", "channels", "flip", "split_by", "sources"))
class PhotoCrops(Dataset):
    """Seeded square crops of bundled photographs (see the module docstring)."""

    class_names = SOURCE_NAMES
    num_classes = len(SOURCE_NAMES)

    def __init__(self, split: str = "train", image_size: int = 64, length: int | None = None, seed: int = 0,
                 channels: int = 3, flip: bool = False, split_by: str = "region",
                 sources: tuple[str, ...] | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        if split_by not in SPLIT_BY:
            raise ValueError(f"unknown split_by {split_by!r}; allowed: {', '.join(SPLIT_BY)}")
        self.split, self.split_by = split, split_by
        self.image_size = check_image_size(image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, "photos")
        self.seed = check_seed(seed)
        self.channels = check_channels(channels)
        self.flip = bool(flip)
        length = DEFAULT_LENGTHS[split] if length is None else length
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.length = length
        names = SOURCE_NAMES if sources is None else tuple(sources)
        unknown = [n for n in names if n not in SOURCES]
        if unknown or not names:
            raise ValueError(f"unknown photo sources {unknown}; allowed: {', '.join(SOURCE_NAMES)}")
        self.regions = {n: r for n in names if (r := split_region(n, split, split_by)) is not None}
        if not self.regions:
            raise ValueError(f"no photo source is available to split {split!r} with split_by={split_by!r} "
                             f"among {names}")
        self.source_names = tuple(self.regions)

    def __len__(self) -> int:
        return self.length

    def crop(self, index: int) -> tuple[str, tuple[int, int, int, int], bool]:
        """(source name, crop (x0, y0, x1, y1) in source pixels, flipped) of item ``index``."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [VERSION, self.seed, zlib.crc32(f"minildm.photos/{self.split}/{self.split_by}".encode()), index])))
        name = self.source_names[int(rng.integers(len(self.source_names)))]
        x0, y0, x1, y1 = self.regions[name]
        hi = min(x1 - x0, y1 - y0, 2 * self.image_size)
        lo = min(hi, max(8, self.image_size // 2))
        side = int(round(lo * math.exp(rng.uniform(0.0, math.log(hi / lo))))) if hi > lo else hi
        cx = x0 + int(rng.integers(x1 - x0 - side + 1))
        cy = y0 + int(rng.integers(y1 - y0 - side + 1))
        flipped = bool(rng.random() < 0.5) if self.flip else False
        return name, (cx, cy, cx + side, cy + side), flipped

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        index = int(index) + (self.length if index < 0 else 0)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        name, (x0, y0, x1, y1), flipped = self.crop(index)
        patch = load_source(name)[y0:y1, x0:x1]
        x = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        x = resize(x, self.image_size).clamp_(-1.0, 1.0)
        if flipped:
            x = x.flip(-1)
        template = CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)]
        return {
            "image": to_channels(x, self.channels),
            "caption": template.format(SOURCES[name][1]),
            "label": SOURCE_NAMES.index(name),
            "boxes": torch.zeros(0, 4),
            "objects": [],
            "index": index,
            "source": name,
            "crop": (x0, y0, x1, y1),
        }

    def __repr__(self) -> str:
        return (f"PhotoCrops(split={self.split!r}, image_size={self.image_size}, length={self.length}, "
                f"split_by={self.split_by!r}, sources={len(self.source_names)})")
