"""The files of a trained-model artifact, shared by the cache (:mod:`minildm.recipes.store`) and the
shipped weights (:mod:`minildm.recipes.shipped`): the :class:`Artifact` a load returns, JSON files read
with one clear error, and the comparison of a saved config with the one the code gives now.

Taught in notebook 01 (and used by every notebook).
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["Artifact", "config_differences", "read_json", "write_json"]


@dataclass
class Artifact:
    """A trained model from the cache: ``model`` (eval mode), its ``config`` (config.json),
    ``metrics`` (metrics.json, incl. ``"command"``), training ``log``, directory ``path`` and, for shipped
    weights, their ``provenance`` (provenance.json; None for a cached artifact)."""

    name: str
    model: nn.Module
    config: dict[str, Any]
    metrics: dict[str, Any]
    log: list[dict[str, Any]]
    path: Path
    provenance: dict[str, Any] | None = None

    @property
    def command(self) -> str:
        """The CLI command that rebuilds this artifact."""
        return str(self.metrics.get("command", ""))


def read_json(path: Path, rebuild: str, kind: type = dict, required: tuple[str, ...] = ()) -> Any:
    """The JSON file ``path`` of an artifact (gzip-compressed if it ends in ``.gz``), which must hold a ``kind``
    (with the ``required`` keys); ValueError naming the file and the rebuild command otherwise."""
    try:
        value = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())
        if not isinstance(value, kind):
            raise ValueError(f"it holds a {type(value).__name__}, not a JSON {'object' if kind is dict else 'list'}")
        missing = [k for k in required if k not in value]
        if missing:
            raise ValueError(f"it lacks {', '.join(map(repr, missing))}")
        return value
    except FileNotFoundError as err:
        raise ValueError(f"artifact file {str(path)!r} is missing; the artifact is incomplete. "
                         f"Rebuild it with `{rebuild}` (or load_or_train(..., retrain=True)).") from err
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, OSError, EOFError) as err:  # OSError: bad gzip
        raise ValueError(f"artifact file {str(path)!r} is corrupted ({err}). "
                         f"Rebuild it with `{rebuild}` (or load_or_train(..., retrain=True)).") from err


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Where the nested configs ``a`` (saved) and ``b`` (expected) differ: ``"path: saved x, expected y"``."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += config_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: saved {a!r}, expected {b!r}"]


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")
