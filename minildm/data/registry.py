"""The dataset registry behind :func:`minildm.data.load_dataset`.

A dataset module registers a builder (usually its Dataset class) with the options it accepts::

    @register_dataset("photos", options=("length", "seed", "channels", "flip", "split_by", "sources"))
    class PhotoCrops(Dataset): ...

and :func:`minildm.data.load_dataset` calls ``builder(split=..., image_size=..., **options)`` after
checking the name, the split and the option names. A new dataset is one module plus its import in
``minildm/data/__init__.py``. Used by every notebook (01–05).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DATASETS", "DatasetEntry", "register_dataset"]

B = TypeVar("B", bound=Callable[..., Any])


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: ``build(split=..., image_size=..., **options)`` and the option names it takes."""

    build: Callable[..., Any]
    options: tuple[str, ...]


#: dataset name -> entry, in registration order
DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, options: tuple[str, ...]) -> Callable[[B], B]:
    """Decorator: make ``load_dataset(name, split, image_size, **options)`` build with the decorated
    class or function (``options`` are the keyword options it accepts besides split and image_size)."""
    def decorate(build: B) -> B:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        DATASETS[name] = DatasetEntry(build, tuple(options))
        return build
    return decorate
