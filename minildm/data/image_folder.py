"""A folder of your own images, with optional captions.

Layout: image files (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.webp``,
``.tif``, ``.tiff``) anywhere below ``root``. Images in a first-level sub-folder
get that folder as their class (``label`` = index of the folder name in sorted
order, like ``torchvision.datasets.ImageFolder``); images directly in ``root`` have
label 0 and class name ``""``.

Captions (``captions=``): a ``dict`` {file: caption}, or the path of a file:

* ``.json``: one object mapping file names to captions, ``{"cat.png": "a cat"}``;
* ``.jsonl``: one object per line with ``file_name`` and ``text`` (or ``caption``),
  the Hugging Face ``imagefolder`` ``metadata.jsonl`` convention;
* ``.csv`` / ``.tsv``: two columns, file name and caption; a first row whose first
  cell is ``file_name``, ``filename``, ``file``, ``image`` or ``path`` is a header.

A file is looked up by its path relative to ``root`` (with ``/``), then by its
bare name. Without ``captions=``, ``captions.json``, ``captions.jsonl``,
``metadata.jsonl``, ``captions.csv`` or ``captions.tsv`` in ``root`` is used if
present. Images without a caption get "a photo of <class>" (or "a photo").

Each image is centre-cropped to a square and resized to ``image_size`` (bicubic,
antialiased). Split: the SHA-1 of the relative path puts a file in val (first
``val_fraction`` of the hash range), test (next ``test_fraction``) or train, so the
split is stable when files are added or removed; items are in sorted path order.

A damaged image (e.g. a truncated download) or a malformed captions file raises a one-line
ValueError naming the file (for JSON with the line and column). :func:`check_image_folder`
(``python -m minildm check-data FOLDER``) opens every image once and lists the unreadable ones
before a training run meets them.

For training on your own data with the recipes of notebooks 01–05.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from .registry import register_dataset
from .transforms import center_crop_box, check_channels, check_image_size, uint8_to_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CAPTION_FILES = ("captions.json", "captions.jsonl", "metadata.jsonl", "captions.csv", "captions.tsv")
_HEADER_WORDS = ("file_name", "filename", "file", "image", "path")
SPLITS = ("train", "val", "test")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048


def read_captions(source: str | os.PathLike[str] | Mapping[str, str]) -> dict[str, str]:
    """Read a captions mapping from a dict or a .json / .jsonl / .csv / .tsv file (see the module docstring)."""
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"captions file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"captions file {path} is not UTF-8 text ({err.reason} at byte {err.start}): "
                         "save it as UTF-8") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"captions file {path} is not valid JSON: {err.msg} at line {err.lineno}, column "
                             f"{err.colno}; fix it there (the file holds one object such as "
                             '{"cat.png": "a cat", "dog.png": "a dog"})') from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold one JSON object mapping file names to captions")
        return {str(k): str(v) for k, v in data.items()}
    if suffix == ".jsonl":
        out: dict[str, str] = {}
        need = "each line needs one JSON object with 'file_name' and 'text' (or 'caption')"
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON: {err.msg} at line {n}, column {err.colno}; "
                                 f"{need}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: {need}, got a {type(row).__name__}")
            name = row.get("file_name", row.get("filename"))
            caption = row.get("text", row.get("caption"))
            if name is None or caption is None:
                raise ValueError(f"{path}:{n}: {need}")
            out[str(name)] = str(caption)
        return out
    if suffix in (".csv", ".tsv"):
        try:
            rows = list(csv.reader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        except csv.Error as err:
            raise ValueError(f"captions file {path} is not valid {suffix[1:].upper()}: {err}") from None
        rows = [r for r in rows if r]
        if rows and rows[0][0].strip().lower() in _HEADER_WORDS:
            rows = rows[1:]
        bad = [r for r in rows if len(r) < 2]
        if bad:
            raise ValueError(f"{path}: every row needs two columns (file name, caption); got {bad[0]}")
        return {r[0].strip(): r[1].strip() for r in rows}
    raise ValueError(f"captions file {path} must end in .json, .jsonl, .csv or .tsv")


def list_images(root: str | os.PathLike[str]) -> list[str]:
    """The image files below ``root`` (relative paths with ``/``, sorted); ValueError if there are none."""
    root = Path(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return files


def _load_rgb(path: Path, image_size: int) -> np.ndarray:
    """Decode ``path``, centre-crop it to a square and resize it: (S, S, 3) uint8. Raises whatever
    the decoder raises for a damaged file."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        top, left, bottom, right = center_crop_box(im.height, im.width)
        bicubic = getattr(Image, "Resampling", Image).BICUBIC  # Pillow < 9.1 has no Resampling
        im = im.crop((left, top, right, bottom)).resize((image_size, image_size), bicubic)
        return np.asarray(im, dtype=np.uint8)


def _reason(err: BaseException) -> str:
    """One line saying why a file could not be decoded."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def read_image(path: str | os.PathLike[str], image_size: int, channels: int = 3,
               folder: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """The image at ``path`` as the dataset gives it: centre-cropped to a square, resized to
    ``image_size`` (bicubic, antialiased), (C, S, S) in [-1, 1]. A file that cannot be decoded
    (truncated, not an image, ...) raises a one-line ValueError naming it and pointing to
    ``python -m minildm check-data <folder>`` (``folder``: the dataset's root, else the file's folder)."""
    path = Path(path)
    try:
        array = _load_rgb(path, image_size)
    except Exception as err:  # any decoder failure is a damaged file: say which
        raise ValueError(f"cannot read image {path}: {_reason(err)}. Replace or delete the file; "
                         f"`python -m minildm check-data {Path(folder) if folder is not None else path.parent}` "
                         "lists every unreadable image of the folder") from err
    return uint8_to_tensor(array, channels)


@dataclass
class FolderCheck:
    """What :func:`check_image_folder` found: the ``files`` checked, the ``unreadable`` ones
    (relative path, reason), and the number of ``captions`` read from ``captions_file`` (or why not)."""

    root: Path
    files: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    captions_file: Path | None = None
    captions: int = 0
    captions_error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every image and the captions file (if any) can be read."""
        return not self.unreadable and self.captions_error is None

    def report(self) -> str:
        """The lines ``check-data`` prints."""
        n, bad = len(self.files), len(self.unreadable)
        plural = "s" if n != 1 else ""
        if not bad:
            lines = [f"{self.root}: {n} image{plural}, all readable"]
        else:
            verb = "is" if bad == 1 else "are"
            lines = [f"{self.root}: {n - bad} of {n} image{plural} are readable, {bad} {verb} not:"]
            lines += [f"  {rel}: {reason}" for rel, reason in self.unreadable]
        if self.captions_error is not None:
            lines.append(f"captions: {self.captions_error}")
        elif self.captions_file is not None:
            lines.append(f"captions: {self.captions} caption{'s' if self.captions != 1 else ''} "
                         f"in {self.captions_file}")
        return "\n".join(lines)


def check_image_folder(root: str | os.PathLike[str], captions: str | os.PathLike[str] | None = None,
                       image_size: int = 64) -> FolderCheck:
    """Open every image below ``root`` once, with the dataset's reader at ``image_size``, and read the
    captions file (``captions``, else one of :data:`CAPTION_FILES` in ``root``); collect what fails
    instead of raising. ValueError if ``root`` is not a folder or holds no images."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    image_size = check_image_size(image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, "check-data")
    result = FolderCheck(root=root, files=list_images(root))
    for rel in result.files:
        try:
            _load_rgb(root / rel, image_size)
        except Exception as err:  # report every damaged file, whatever the decoder raised
            result.unreadable.append((rel, _reason(err)))
    if captions is None:
        found = [root / n for n in CAPTION_FILES if (root / n).is_file()]
        captions = found[0] if found else None
    if captions is not None:
        result.captions_file = Path(captions)
        try:
            result.captions = len(read_captions(captions))
        except ValueError as err:
            result.captions_error = str(err)
    return result


def split_of(relative_path: str, val_fraction: float, test_fraction: float) -> str:
    """The split of a file from the SHA-1 of its relative path (a number u in [0, 1))."""
    u = int.from_bytes(hashlib.sha1(relative_path.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


class ImageFolder(Dataset):
    """Images from a folder with optional captions (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", image_size: int = 64,
                 channels: int = 3, captions: str | os.PathLike[str] | Mapping[str, str] | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, length: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        if root is None:
            raise ValueError("image_folder needs root=<folder with images>")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist or is not a folder")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got "
                             f"{val_fraction} and {test_fraction}")
        self.split = split
        self.image_size = check_image_size(image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, "image_folder")
        self.channels = check_channels(channels)
        files = list_images(self.root)
        self.class_names = tuple(sorted({f.split("/")[0] for f in files if "/" in f} | ({""} if any(
            "/" not in f for f in files) else set())))
        self.num_classes = len(self.class_names)
        counts = {s: 0 for s in SPLITS}
        mine = []
        for f in files:
            s = split_of(f, val_fraction, test_fraction)
            counts[s] += 1
            if s == split:
                mine.append(f)
        if not mine:
            raise ValueError(f"split {split!r} of {self.root} is empty (images per split: {counts}); "
                             f"add images or change val_fraction/test_fraction")
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= len(mine):
                raise ValueError(f"length must be an int in [1, {len(mine)}], got {length!r}")
            mine = mine[:length]
        self.files = mine
        if captions is None:
            found = [self.root / n for n in CAPTION_FILES if (self.root / n).is_file()]
            captions = found[0] if found else {}
        self.captions = read_captions(captions)

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, relative_path: str) -> str:
        """The caption of a file: by relative path, then by bare name, else "a photo of <class>"."""
        name = relative_path.rsplit("/", 1)[-1]
        if relative_path in self.captions:
            return self.captions[relative_path]
        if name in self.captions:
            return self.captions[name]
        folder = relative_path.split("/")[0] if "/" in relative_path else ""
        return f"a photo of {folder.replace('_', ' ')}" if folder else "a photo"

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of length {len(self)}")
        index = int(index) % len(self)
        rel = self.files[index]
        folder = rel.split("/")[0] if "/" in rel else ""
        return {
            "image": read_image(self.root / rel, self.image_size, self.channels, folder=self.root),
            "caption": self.caption(rel),
            "label": self.class_names.index(folder),
            "boxes": torch.zeros(0, 4),
            "objects": [],
            "index": index,
            "path": rel,
        }

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


@register_dataset("image_folder", options=("root", "captions", "channels", "val_fraction", "test_fraction", "length",
                                           "seed"))
def image_folder(split: str, image_size: int, root: str | os.PathLike[str] | None = None, seed: Any = None,
                 **options: Any) -> ImageFolder:
    """``load_dataset("image_folder", ...)``: ``root`` is required; ``seed`` is accepted and unused (the
    split is a hash of each file's path)."""
    if root is None:
        raise ValueError("image_folder needs root=<folder with images>")
    return ImageFolder(split=split, image_size=image_size, root=root, **options)
