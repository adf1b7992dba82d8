"""Shipping a cached artifact as weights that come with minildm (``python -m minildm ship NAME``).

:func:`ship_artifact` writes ``data/weights/<preset>/<name>/`` (see :mod:`minildm.recipes.shipped`, which
loads them): the weights in float16, config, metrics, the loss log and provenance. A run continued from
the shipped weights (``--init-from shipped``) adds a stretch to their provenance, so the steps and hours
behind a model add up over several sittings. Used to make the weights notebooks 01–05 load.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..engine.checkpoint import load_weights, non_finite_tensors, save_weights, umask_mode
from .artifact_files import config_differences, read_json, write_json
from .presets import Preset, get_preset
from .registry import get_spec
from .shipped import (SHIPPED_LOG, encoder_sha256, read_provenance, recipe_of, run_environment, sha256_file,
                      shared_weights, shipped_dir)
from .store import artifact_dir

__all__ = ["compact_log", "reevaluate_shipped", "ship_artifact"]

#: metrics entries that describe a run rather than the model; each stretch keeps the others
_RUN_KEYS = ("command", "run", "init_from", "steps", "train_time_s", "trained")


def _short(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    return value


#: loss rows a shipped log keeps at most (a plot needs no more; the shipped-weights budget is shared by every
#: model); evaluation rows and stretch marks all stay
MAX_LOSS_ROWS = 300


def _is_loss_row(row: dict[str, Any]) -> bool:
    return "stretch" not in row and not any(k.startswith("eval/") for k in row)


def compact_log(log: list[dict[str, Any]], max_loss_rows: int = MAX_LOSS_ROWS) -> str:
    """The loss log as JSON with one row per line and floats to 4 significant digits (what a plot needs;
    a 1,000-step log shrinks about 4×). Loss rows are thinned to every k-th (the smallest k that leaves at
    most ``max_loss_rows``, the last row always kept); every evaluation row and stretch mark stays."""
    loss = [i for i, row in enumerate(log) if _is_loss_row(row)]
    stride = max(1, math.ceil(len(loss) / max_loss_rows))
    keep = set(loss[::stride]) | set(loss[-1:])
    rows = [json.dumps({k: _short(v) for k, v in row.items()}, separators=(",", ":"), allow_nan=True)
            for i, row in enumerate(log) if i in keep or not _is_loss_row(row)]
    return "[\n" + ",\n".join(rows) + "\n]\n"


def _all_but_last_grid(directory: str, names: list[str]) -> list[str]:
    """``shutil.copytree`` ignore: every ``step_<k>.png`` but the last step's (a model whose grids no notebook
    shows ships only its final one)."""
    grids = sorted((n for n in names if n.startswith("step_") and n.endswith(".png")),
                   key=lambda n: int("".join(c for c in n if c.isdigit()) or 0))
    return grids[:-1]


def ship_artifact(name: str, preset: str | Preset | None = None, *, root: str | os.PathLike | None = None) -> Path:
    """Ship the cached artifact ``name`` (``<root>/<preset>/<name>``, see :mod:`minildm.recipes.store`): write
    its weights in float16 with config, metrics, log and provenance to :func:`shipped_dir`, atomically.

    A run continued from the shipped weights (``init_from`` in its metrics, same sha256) adds a stretch to
    their provenance; anything else starts a new one. The run's validation grids (``samples/``) ship too, all of
    them, or only the last where the spec's ``shipped_grids(preset)`` says ``"last"``. Shared weights (an LDM's
    first stage) must have the encoder of the shipped artifact they come from, which must be shipped first (its
    decoder may since have been trained further); they are left out and pinned by that artifact's sha256 and
    :func:`~minildm.recipes.shipped.encoder_sha256`. Returns the folder."""
    spec = get_spec(name)
    p = get_preset(preset)
    src = artifact_dir(name, p, root)
    rebuild = spec.command(p)
    if not src.is_dir():
        raise ValueError(f"nothing to ship: artifact {name!r} is not cached at {str(src)!r}; build it with `{rebuild}`")
    config = read_json(src / "config.json", rebuild, required=("model_class", "model"))
    diffs = config_differences(recipe_of({k: config.get(k) for k in spec.identity(p)}), recipe_of(spec.identity(p)))
    if diffs:
        raise ValueError(f"the cached {name!r} was made with another recipe than the code gives now "
                         f"({'; '.join(diffs[:4])}); rebuild it with `{rebuild}` before shipping")
    metrics = read_json(src / "metrics.json", rebuild, required=("command",))
    log = read_json(src / "log.json", rebuild, kind=list)
    state, _ = load_weights(src / "model.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    if non_finite_tensors(half):
        raise ValueError(f"{name!r}: weights overflow float16 ({', '.join(non_finite_tensors(half)[:4])})")
    shared: dict[str, Any] = {}
    for prefix, other in shared_weights(name, p).items():
        other_dir = shipped_dir(other, p)
        if not (other_dir / "provenance.json").is_file():
            raise ValueError(f"ship {other!r} before {name!r}: {name!r} holds its weights under {prefix!r}")
        other_state, _ = load_weights(other_dir / "model.safetensors")
        mine = {k[len(prefix):]: half.pop(k) for k in list(half) if k.startswith(prefix)}
        latents = encoder_sha256(other, p, other_state)
        # the same encoder is enough: a decoder refined since (--decoder-only) draws the same latents
        if set(mine) != set(other_state) or encoder_sha256(other, p, mine) != latents:
            raise ValueError(f"{name!r} was trained on another {other!r} than the shipped one: retrain it on the "
                             f"shipped {other!r} (`{rebuild}`) before shipping")
        shared[prefix] = {"artifact": other, "sha256": read_provenance(other_dir, other, p)["sha256"],
                          "encoder_sha256": latents}

    dest = shipped_dir(name, p)
    stretch = {"command": metrics.get("command"), "steps": metrics.get("steps"),
               "train_time_s": metrics.get("train_time_s"), **dict(metrics.get("run") or {}),
               # which part it trained, when not all (a first stage's decoder alone)
               **({"trained": metrics["trained"]} if "trained" in metrics else {}),
               # what the model measured at the end of this stretch: the points of its learning curve
               "metrics": {k: v for k, v in metrics.items() if k not in _RUN_KEYS}}
    init = metrics.get("init_from")
    stretches: list[dict[str, Any]] = []
    if init:
        stretch["init_from"] = init
        if (dest / "provenance.json").is_file():
            old = read_provenance(dest, name, p)
            if old.get("sha256") == init.get("sha256"):
                stretches = list(old["stretches"])
                if stretches and not stretches[-1].get("metrics"):  # shipped before stretches kept their metrics:
                    # the shipped metrics.json measured the weights this stretch ended with
                    old_metrics = read_json(dest / "metrics.json", rebuild)
                    stretches[-1] = {**stretches[-1],
                                     "metrics": {k: v for k, v in old_metrics.items() if k not in _RUN_KEYS}}
                # the new stretch's rows continue the old ones: steps, training time and compute count on
                old_log = list(read_json(dest / SHIPPED_LOG, rebuild, kind=list))
                offset = {"step": int(old.get("total_steps") or 0), "time_s": float(old.get("total_train_time_s") or 0),
                          "eval/compute": max((float(r["eval/compute"]) for r in old_log if "eval/compute" in r),
                                              default=0.0)}
                log = (old_log + [{"stretch": len(stretches)}]
                       + [{k: v + offset[k] if k in offset and isinstance(v, (int, float)) else v for k, v in row.items()}
                          for row in log])
    stretches.append(stretch)
    total_s = sum(float(s.get("train_time_s") or 0) for s in stretches)
    if len(stretches) > 1:  # the model's metrics describe all of its training; provenance keeps each stretch
        metrics = {**metrics, "steps": sum(int(s.get("steps") or 0) for s in stretches), "train_time_s": round(total_s, 3)}

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700
    try:
        save_weights(tmp / "model.safetensors", half, {"model_class": config["model_class"], "model": config["model"]})
        write_json(tmp / "config.json", config)
        write_json(tmp / "metrics.json", metrics)
        (tmp / SHIPPED_LOG).write_bytes(gzip.compress(compact_log(log).encode(), mtime=0))
        if (src / "samples").is_dir():  # the validation grids a run wrote (notebook 05 shows them)
            grids = spec.shipped_grids(p) if hasattr(spec, "shipped_grids") else "all"
            shutil.copytree(src / "samples", tmp / "samples", ignore=None if grids == "all" else _all_but_last_grid)
        write_json(tmp / "provenance.json", {
            "name": name, "preset": p.name, "dtype": "float16",
            "sha256": sha256_file(tmp / "model.safetensors"),
            "bytes": (tmp / "model.safetensors").stat().st_size,
            "total_steps": sum(int(s.get("steps") or 0) for s in stretches),
            "total_train_time_s": round(total_s, 1), "total_train_hours": round(total_s / 3600, 3),
            "stretches": stretches, "shared": shared,
            "shipped_with": f"python -m minildm ship {name} --preset {p.name}",
            "shipped_at": run_environment(torch.device("cpu"))["date"],
        })
        old_dir = dest.with_name(f".{name}.old")
        if dest.exists():
            shutil.rmtree(old_dir, ignore_errors=True)
            os.replace(dest, old_dir)
        os.replace(tmp, dest)
        shutil.rmtree(old_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def reevaluate_shipped(name: str, preset: str | Preset | None = None, *,
                       device: str | torch.device | None = None) -> dict[str, Any]:
    """Evaluate the shipped ``name`` again with the code's evaluation and rewrite its shipped ``metrics.json``
    (atomically; weights and provenance are untouched): after its first stage's decoder was refined
    (``train-first-stage --decoder-only``), the LDM's samples are drawn through the new decoder and its figures
    change. The evaluation replaces what it measures; ``evaluated_by`` records the command and
    ``evaluated_with`` the sha256 of each shipped artifact whose weights it shares. Returns the metrics."""
    from ..engine.device import get_device
    from .shipped import load_shipped

    spec = get_spec(name)
    p = get_preset(preset)
    dev = get_device(device)
    art = load_shipped(name, p, device=dev)
    if art is None:
        raise ValueError(f"no shipped weights of {name!r} for preset {p.name!r} under {str(shipped_dir(name, p))!r}")
    metrics = {**art.metrics, **dict(spec.evaluate(art.model, p, dev))}
    metrics["evaluated_by"] = f"python -m minildm reevaluate {name} --preset {p.name} --shipped"
    metrics["evaluated_with"] = {other: read_provenance(shipped_dir(other, p), other, p)["sha256"]
                                 for other in shared_weights(name, p).values()}
    dest = shipped_dir(name, p)
    tmp = dest / ".metrics.json.tmp"
    write_json(tmp, metrics)
    os.replace(tmp, dest / "metrics.json")
    return metrics
