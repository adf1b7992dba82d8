"""Checkpoints as single safetensors files, written atomically.

A training checkpoint is a *nested* Python state: module ``state_dict`` s, optimizer
``state_dict`` s (with integer keys, tuples such as Adam's ``betas`` and per-parameter
tensors), RNG states (uint8 tensors), the step counter, the loss log, ... safetensors
stores only a flat ``{name: tensor}`` map plus string metadata, and never executes code
when loading (unlike ``pickle``/``torch.load``). So :func:`flatten_state` splits the state
into

* ``tensors``: every tensor leaf under a readable path name
  (``modules/model/encoder.conv_in.weight``), contiguous and not sharing memory;
* ``structure``: a JSON description of the nesting, in which containers are objects
  ``{"t": "dict"|"list"|"tuple", ...}``, tensors are ``{"t": "tensor", "k": name}`` and
  Python scalars (None, bool, int, float, str) are stored as themselves, so an ``int``
  comes back as an ``int`` and a ``tuple`` as a ``tuple``.

:func:`unflatten_state` inverts it exactly. :func:`save_checkpoint` writes the file via a
temporary file in the same directory, ``fsync`` and ``os.replace``: a crash mid-write leaves
the previous checkpoint intact. :func:`load_checkpoint` turns every way a file can be bad
(missing, not safetensors, truncated, written by something else) into a ``ValueError``
that names the file.

Plain model weights (for the artifact cache) use :func:`save_weights` / :func:`load_weights`:
a flat ``state_dict`` plus the model's config as JSON.

Used by every training run (notebooks 01–05); exact resume is shown in notebook 01.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "check_finite_weights",
    "umask_mode",
    "non_finite_tensors",
    "flatten_state",
    "unflatten_state",
    "save_checkpoint",
    "load_checkpoint",
    "save_weights",
    "load_weights",
    "load_module_state",
    "atomic_write_bytes",
    "minildm_version",
]

FORMAT_VERSION = "1"
_CHECKPOINT_FORMAT = "minildm.engine.checkpoint"
_WEIGHTS_FORMAT = "minildm.weights"


def minildm_version() -> str:
    """The installed minildm version (``0+unknown`` when run from a plain source tree)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("minildm")
    except (ImportError, PackageNotFoundError):  # pragma: no cover - source tree without install
        return "0+unknown"


# --------------------------------------------------------------------------------------
# nested state <-> flat tensors + JSON structure
# --------------------------------------------------------------------------------------

def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def _standalone(t: torch.Tensor, seen: set[tuple[str, int]]) -> torch.Tensor:
    """A detached, contiguous CPU tensor that owns its whole storage (what safetensors needs).

    A tensor that is a view of a larger storage, or shares its storage with a tensor seen
    before (tied weights, ``expand``-ed buffers), is cloned.
    """
    t = t.detach()
    key = _storage_key(t)
    shares = key in seen
    seen.add(key)
    if t.device.type != "cpu":
        return t.to("cpu").contiguous()  # a fresh copy already
    owns_storage = (t.is_contiguous() and t.storage_offset() == 0
                    and t.numel() * t.element_size() == t.untyped_storage().nbytes())
    if shares or not owns_storage:
        return t.contiguous().clone()
    return t


def flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Split a nested state into ``(tensors, structure_json)``.

    Supported leaves: ``torch.Tensor``, ``numpy.ndarray``, ``None``, ``bool``, ``int``,
    ``float``, ``str``; containers: ``dict`` (keys ``str``/``int``/``float``/``bool``/``None``),
    ``list``, ``tuple``. Anything else raises ``TypeError`` naming its path.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()

    def name_for(path: list[str]) -> str:
        base = "/".join(path) or "tensor"
        name, n = base, 1
        while name in tensors:
            name = f"{base}#{n}"
            n += 1
        return name

    def enc(obj: Any, path: list[str]) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, torch.Tensor):
            name = name_for(path)
            tensors[name] = _standalone(obj, seen)
            return {"t": "tensor", "k": name}
        if isinstance(obj, np.ndarray):
            name = name_for(path)
            arr = np.ascontiguousarray(obj)
            # torch has no full uint16/32/64 support everywhere: widen to int64 losslessly
            # (uint64 above 2**63 would not fit; such arrays do not occur in states we store).
            if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:
                arr = arr.astype(np.int64)
            tensors[name] = torch.from_numpy(arr.copy())
            return {"t": "ndarray", "k": name, "dtype": obj.dtype.str}
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, (np.integer,)):
            return int(obj)
        if isinstance(obj, (np.floating,)):
            return float(obj)
        if isinstance(obj, Mapping):
            items = []
            for k, v in obj.items():
                if not (k is None or isinstance(k, (str, int, float, bool))):
                    raise TypeError(f"checkpoint state: dict key {k!r} at {'/'.join(path) or '<root>'} "
                                    "must be str, int, float, bool or None")
                items.append([k, enc(v, path + [str(k)])])
            return {"t": "dict", "items": items}
        if isinstance(obj, (list, tuple)):
            kind = "tuple" if isinstance(obj, tuple) else "list"
            return {"t": kind, "items": [enc(v, path + [str(i)]) for i, v in enumerate(obj)]}
        raise TypeError(f"checkpoint state: cannot store {type(obj).__name__} at "
                        f"{'/'.join(path) or '<root>'}; allowed are tensors, numpy arrays, "
                        "None/bool/int/float/str and dict/list/tuple of them")

    structure = enc(state, [])
    return tensors, json.dumps(structure, allow_nan=True)


def unflatten_state(tensors: Mapping[str, torch.Tensor], structure: str | Any) -> Any:
    """Inverse of :func:`flatten_state`: rebuild the nested state from tensors + structure."""
    if isinstance(structure, str):
        structure = json.loads(structure)

    def dec(node: Any) -> Any:
        if not isinstance(node, dict):
            return node  # JSON scalar: None, bool, int, float, str
        kind = node.get("t")
        if kind == "tensor":
            return tensors[node["k"]]
        if kind == "ndarray":
            return tensors[node["k"]].numpy().astype(np.dtype(node["dtype"]))
        if kind == "dict":
            return {k: dec(v) for k, v in node["items"]}
        if kind == "list":
            return [dec(v) for v in node["items"]]
        if kind == "tuple":
            return tuple(dec(v) for v in node["items"])
        raise KeyError(f"unknown node type {kind!r}")

    return dec(structure)


# --------------------------------------------------------------------------------------
# atomic files
# --------------------------------------------------------------------------------------

def umask_mode(mode: int) -> int:
    """``mode`` with the process's umask applied: what ``open`` or ``mkdir`` would give a new file or
    folder (``tempfile`` makes them 0600 / 0700 instead, unreadable by others in a shared cache)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    Readers see either the old file or the complete new one, never a partial file; on any
    error the temp file is removed and the old file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, umask_mode(0o666))  # mkstemp makes 0600; a shared cache must stay readable
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _serialize(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=header)


# --------------------------------------------------------------------------------------
# reading, with clear errors
# --------------------------------------------------------------------------------------

def _read(path: str | os.PathLike, device: str | torch.device, expected_format: str,
          what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist; check the path "
                         "(or train/save it first)")
    size = path.stat().st_size
    try:
        with safe_open(str(path), framework="pt", device=str(torch.device(device))) as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError / OSError / ...
        raise ValueError(f"{what} file {str(path)!r} ({size} bytes) is not a readable safetensors "
                         f"file (truncated or corrupted?): {err}. Delete it and save/train again.") from err
    fmt = header.get("format")
    if fmt != expected_format:
        raise ValueError(f"{what} file {str(path)!r} is a safetensors file but not a minildm "
                         f"{what} (metadata 'format' is {fmt!r}, expected {expected_format!r}); "
                         f"it was written by another tool. Use the matching loader or save it again.")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{what} file {str(path)!r} has format version {version!r}; this minildm "
                         f"({minildm_version()}) reads version {FORMAT_VERSION!r}. Save it again with "
                         "this version.")
    return tensors, header


def _json_field(header: Mapping[str, str], key: str, path: str | os.PathLike, what: str) -> Any:
    if key not in header:
        raise ValueError(f"{what} file {str(path)!r} has no {key!r} metadata; it is incomplete. "
                         "Save it again.")
    try:
        return json.loads(header[key])
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {str(path)!r}: {key!r} metadata is not valid JSON ({err}); "
                         "the file is corrupted. Save it again.") from err


# --------------------------------------------------------------------------------------
# public API: checkpoints
# --------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any],
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Save a nested training ``state`` to one safetensors file, atomically.

    Args:
        path: destination (``.safetensors``); parent directories are created.
        state: nested dict of tensors, state_dicts, Python scalars, lists, tuples, numpy arrays.
        metadata: JSON-serialisable dict (e.g. the run's config) returned by
            :func:`load_checkpoint`.

    Returns the path. On failure nothing at ``path`` changes.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    tensors, structure = flatten_state(dict(state))
    header = {
        "format": _CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "minildm_version": minildm_version(),
        "structure": structure,
        "metadata": json.dumps(dict(metadata or {}), allow_nan=True),
    }
    return atomic_write_bytes(path, _serialize(tensors, header))


def load_checkpoint(path: str | os.PathLike,
                    device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(state, metadata)`` written by :func:`save_checkpoint`; tensors land on ``device``.

    Raises ValueError naming the file when it is missing, not safetensors, truncated,
    written by something else or by an incompatible format version.
    """
    tensors, header = _read(path, device, _CHECKPOINT_FORMAT, "checkpoint")
    structure = _json_field(header, "structure", path, "checkpoint")
    metadata = _json_field(header, "metadata", path, "checkpoint") if "metadata" in header else {}
    try:
        state = unflatten_state(tensors, structure)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint file {str(path)!r}: its structure metadata does not match its "
                         f"tensors ({err!r}); the file is corrupted. Save it again.") from err
    metadata = dict(metadata)
    metadata.setdefault("minildm_version", header.get("minildm_version"))
    return state, metadata


# --------------------------------------------------------------------------------------
# public API: plain weights + config, and loading into modules
# --------------------------------------------------------------------------------------

def save_weights(path: str | os.PathLike, module: nn.Module | Mapping[str, torch.Tensor],
                 config: Mapping[str, Any] | None = None) -> Path:
    """Save a module's ``state_dict`` (or a ready state_dict) plus ``config`` (JSON) atomically."""
    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    seen: set[tuple[str, int]] = set()
    tensors = {k: _standalone(v, seen) for k, v in state.items()}
    header = {
        "format": _WEIGHTS_FORMAT,
        "format_version": FORMAT_VERSION,
        "minildm_version": minildm_version(),
        "config": json.dumps(dict(config or {}), allow_nan=True),
    }
    return atomic_write_bytes(path, _serialize(tensors, header))


def load_weights(path: str | os.PathLike,
                 device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(state_dict, config)`` written by :func:`save_weights`; ValueError if unusable."""
    tensors, header = _read(path, device, _WEIGHTS_FORMAT, "weights")
    config = _json_field(header, "config", path, "weights")
    return tensors, config


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` (a state dict, nested dicts flattened by the
    caller) that hold a NaN or an infinity. Weights like that must never be saved or published: a
    model with them draws black images without any error."""
    bad = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def check_finite_weights(module_or_state: nn.Module | Mapping[str, Any], what: str) -> None:
    """FloatingPointError naming ``what`` and the first non-finite tensors, if there are any."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    bad = non_finite_tensors(state)
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad)} of {len(state)} tensors)" if len(bad) > 4 else "")
        raise FloatingPointError(f"{what} has non-finite weights ({shown})")


def load_module_state(module: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                      *, source: str | None = None) -> None:
    """``module.load_state_dict`` with one readable ValueError for a mismatched checkpoint.

    Lists missing keys, unexpected keys (only when ``strict``) and shape mismatches (always:
    copying a wrongly shaped tensor is never meaningful). ``source`` names the file in the message.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = []

    def show(items: list[str]) -> str:
        head = ", ".join(items[:8])
        return head + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

    if strict and missing:
        problems.append(f"missing keys: {show(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {show(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {show(shapes)}")
    if problems:
        where = f" from {source!r}" if source else ""
        raise ValueError(f"mismatched checkpoint{where} for {type(module).__name__}: "
                         + "; ".join(problems)
                         + ". The checkpoint was made for a different model configuration; "
                           "build the model with the checkpoint's config or retrain.")
    module.load_state_dict(dict(state_dict), strict=strict)
