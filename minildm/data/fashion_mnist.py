"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70 000 grey 28x28 images of 10 clothing classes.

Read from the IDX files (``*-ubyte.gz`` or uncompressed) that Debian's
``dataset-fashion-mnist`` package installs in ``/usr/share/datasets/fashion-mnist/``,
or from a torchvision root (``<root>/FashionMNIST/raw/``). Nothing is downloaded
unless ``download=True`` is passed, in which case ``torchvision.datasets.FashionMNIST``
fetches the files into ``root``.

Splits: ``train`` = the first 55 000 images of the training file, ``val`` = its
last 5 000, ``test`` = the 10 000 images of the test file. Images are resized to
``image_size`` (bilinear with antialiasing) and mapped to [-1, 1]; ``channels=3``
repeats the grey channel. The IDX format: a big-endian header (magic 0x0000080X
where X is the number of dimensions, then one uint32 per dimension) followed by
the raw uint8 data.

Used in notebook 03 (the latent DDPM on real images).
"""
from __future__ import annotations

import gzip
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .registry import register_dataset
from .transforms import check_channels, check_image_size, resize, to_channels

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
#: Noun phrases used in captions, one per class.
CAPTION_NOUNS = ("a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt",
                 "a sneaker", "a bag", "an ankle boot")
CAPTION_TEMPLATES = ("a photo of {}", "a picture of {}", "a black and white photo of {}", "{}")
NUM_VAL = 5_000
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("train", "val", "test")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512

_HOW_TO_GET = ("install Debian's package (`sudo apt-get install dataset-fashion-mnist`, files in "
               f"{DEBIAN_ROOT}), or pass root=<folder> with download=True to fetch it with torchvision")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) of uint8 data into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError(f"{path}: header says {dims} ({count} bytes) but the file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_files(root: str | os.PathLike[str] | None = None) -> dict[str, tuple[Path, Path]] | None:
    """Locate the four IDX files in ``root`` (or ``root/FashionMNIST/raw``), default Debian's folder."""
    candidates = [DEBIAN_ROOT] if root is None else [Path(root), Path(root) / "FashionMNIST" / "raw"]
    for folder in candidates:
        found = {split: (_find(folder, img), _find(folder, lab)) for split, (img, lab) in FILES.items()}
        if all(p is not None for pair in found.values() for p in pair):
            return found  # type: ignore[return-value]
    return None


@lru_cache(maxsize=4)
def _load_arrays(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"unexpected IDX shapes {x.shape} and {y.shape} in {images.parent}")
    return x, y


@register_dataset("fashion_mnist", options=("root", "download", "channels", "length", "seed"))
class FashionMNIST(Dataset):
    """Fashion-MNIST items: image (channels, image_size, image_size) in [-1, 1], caption, label 0..9."""

    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)

    def __init__(self, split: str = "train", image_size: int = 64, channels: int = 3,
                 root: str | os.PathLike[str] | None = None, download: bool = False,
                 length: int | None = None, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        self.split = split
        self.image_size = check_image_size(image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, "fashion_mnist")
        self.channels = check_channels(channels)
        self.seed = int(seed)
        files = find_files(root)
        if files is None and download:
            if root is None:
                raise ValueError("download=True needs root=<folder> to download Fashion-MNIST into")
            import torchvision

            for train in (True, False):
                torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
            files = find_files(root)
        if files is None:
            where = DEBIAN_ROOT if root is None else f"{root} (or {Path(root) / 'FashionMNIST' / 'raw'})"
            raise ValueError(f"Fashion-MNIST files not found in {where}: {_HOW_TO_GET}")
        x, y = _load_arrays(*files["test" if split == "test" else "train"])
        if split == "train":
            x, y = x[:-NUM_VAL], y[:-NUM_VAL]
        elif split == "val":
            x, y = x[-NUM_VAL:], y[-NUM_VAL:]
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= len(x):
                raise ValueError(f"length for fashion_mnist/{split} must be an int in [1, {len(x)}], got {length!r}")
            x, y = x[:length], y[:length]
        self.images, self.labels = x, y

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of length {len(self)}")
        index = int(index) % len(self)
        label = int(self.labels[index])
        img = torch.from_numpy(self.images[index].astype(np.float32)).unsqueeze(0).div_(127.5).sub_(1.0)
        img = resize(img, self.image_size).clamp_(-1.0, 1.0)
        template = CAPTION_TEMPLATES[(index * 7 + self.seed) % len(CAPTION_TEMPLATES)]
        return {
            "image": to_channels(img, self.channels),
            "caption": template.format(CAPTION_NOUNS[label]),
            "label": label,
            "boxes": torch.zeros(0, 4),
            "objects": [],
            "index": index,
        }

    def __repr__(self) -> str:
        return f"FashionMNIST(split={self.split!r}, image_size={self.image_size}, n={len(self)})"
