"""Trained models cached per preset: load them, or train them once.

A notebook that needs a first-stage autoencoder calls::

    ae = load_or_train("ae-kl-l1-lpips-gan")        # preset from $MINILDM_PRESET
    ae.model, ae.metrics["psnr"], ae.command

The first call trains it (with a progress bar) and saves an *artifact* directory
``<root>/<preset>/<name>/`` (root: ``$MINILDM_ARTIFACTS``, else ``./artifacts``) holding

* ``model.safetensors`` — the model's weights (plus its config in the safetensors metadata);
* ``config.json`` — model config, training recipe and preset name: the artifact's identity;
* ``metrics.json`` — PSNR / SSIM / LPIPS on the val split, training wall time, parameter count
  and ``command``, the CLI command that rebuilds it;
* ``log.json`` — the training loss curve.

Later calls load it. The directory is written to a temporary folder and renamed into place, so a
crash never leaves a half-written artifact. A crashed *training* run resumes from
``<name>.partial/checkpoint.safetensors`` (exactly, see :mod:`minildm.engine.trainer`).

A build holds the lock ``<root>/<preset>/.<name>.lock`` (:class:`~minildm.engine.filelock.FileLock`)
from training to the final rename, so two runs of the same artifact (two notebooks, a notebook and
the CLI) never write over each other: the second waits, saying which process it waits for, and
:func:`load_or_train` then loads what the first one built instead of training again.

Recipes register their specs with :func:`minildm.recipes.registry.register`; this module only
stores, loads and builds what the registry names. Taught in notebook 01 (and used by every notebook).
"""
from __future__ import annotations

import contextvars
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..engine.checkpoint import (
    check_finite_weights,
    load_module_state,
    load_weights,
    minildm_version,
    non_finite_tensors,
    save_weights,
    umask_mode,
)
from ..engine.device import get_device
from ..engine.filelock import FileLock
from .artifact_files import Artifact, config_differences, read_json, write_json
from .presets import Preset, get_preset
from .registry import get_spec
from .shipped import init_state, load_shipped, recipe_of, run_environment, train_from_scratch

__all__ = [
    "ARTIFACTS_ENV",
    "Artifact",
    "artifact_root",
    "artifact_dir",
    "load_artifact",
    "build_artifact",
    "load_or_train",
    "load_trained",
    "reevaluate_artifact",
]

ARTIFACTS_ENV = "MINILDM_ARTIFACTS"
FILES = ("model.safetensors", "config.json", "metrics.json", "log.json")
#: in ``<name>.partial/``: the weights the run started from (``--init-from``), or null
INIT_FILE = "init_from.json"


def check_choice(what: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(map(str, allowed))}")


def check_steps(steps: Any) -> None:
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps must be a positive int or None (the preset's), got {steps!r}")


# ------------------------------------------------------------------------------------------
# the first-stage recipe
# ------------------------------------------------------------------------------------------


def resume_config(identity: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: everything but the step count."""
    config = json.loads(json.dumps(dict(identity)))
    config["recipe"].pop("steps", None)
    return config


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------
# artifact files
# ------------------------------------------------------------------------------------------

#: the root of the artifact being built: the artifacts it needs (a first stage, the feature
#: network) are looked up and cached under the same root
_BUILD_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("minildm_build_root", default=None)
#: whether the artifact being built shows progress bars: the artifacts it needs follow it (``--no-progress``)
_BUILD_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("minildm_build_progress", default=True)


def artifact_root(root: str | os.PathLike | None = None) -> Path:
    """The cache root: ``root``, else that of the artifact being built (its dependencies live
    beside it), else ``$MINILDM_ARTIFACTS``, else ``./artifacts``."""
    if root is not None:
        return Path(root)
    building = _BUILD_ROOT.get()
    if building is not None:
        return building
    return Path(os.environ.get(ARTIFACTS_ENV) or "artifacts")


def artifact_dir(name: str, preset: str | Preset | None = None, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<preset>/<name>``; ValueError for unknown names or presets."""
    get_spec(name)
    return artifact_root(root) / get_preset(preset).name / name


def load_artifact(name: str, preset: str | Preset | None = None, *, device: str | torch.device | None = None,
                  root: str | os.PathLike | None = None, steps: int | None = None) -> Artifact:
    """Load a cached artifact; ValueError naming the file and the rebuild command if it is missing,
    corrupted, or was made with a different config than ``preset`` (and ``steps``) give now. A stretch
    continued from other weights (its metrics record ``init_from``) has its own length: without ``steps``
    it loads whatever its ``recipe.steps``."""
    spec = get_spec(name)
    p = get_preset(preset)
    path = artifact_dir(name, p, root)
    rebuild = spec.command(p, steps)
    if not path.is_dir():
        raise ValueError(f"artifact {name!r} not found at {str(path)!r}; build it with `{rebuild}` "
                         "or load_or_train(...)")
    config = read_json(path / "config.json", rebuild, required=("model_class", "model"))
    metrics = read_json(path / "metrics.json", rebuild, required=("command",))
    expected = json.loads(json.dumps(spec.identity(p, steps)))
    saved = {k: config.get(k) for k in expected}
    if steps is None and metrics.get("init_from"):  # a stretch continued from weights (--init-from): any length
        saved, expected = recipe_of(saved), recipe_of(expected)
    diffs = config_differences(saved, expected)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 6 else "")
        raise ValueError(f"mismatched artifact {str(path / 'config.json')!r}: it was made with a different "
                         f"config than preset {p.name!r} gives now ({shown}). Rebuild it with `{rebuild}` "
                         "(or load_or_train(..., retrain=True)).")
    log = read_json(path / "log.json", rebuild, kind=list)
    weights_file = path / "model.safetensors"
    model = spec.build_model(config)
    try:
        state, weights_config = load_weights(weights_file)
        if weights_config.get("model") != config.get("model"):
            raise ValueError(f"mismatched checkpoint {str(weights_file)!r}: its config differs from config.json")
        load_module_state(model, state, source=str(weights_file))
        if non_finite_tensors(state):
            raise ValueError(f"{str(weights_file)!r} holds non-finite weights ({len(non_finite_tensors(state))} "
                             "tensors with NaN or inf): the model would draw blank images.")
    except ValueError as err:
        raise ValueError(f"artifact {name!r}: {err} Rebuild it with `{rebuild}` "
                         "(or load_or_train(..., retrain=True)).") from err
    model.to(get_device(device)).eval()
    return Artifact(name=name, model=model, config=config, metrics=metrics, log=log, path=path)


def _partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _artifact_lock(path: Path) -> FileLock:
    """The lock of the artifact at ``path``; a process that has to wait for it says so on stderr."""
    lock = _lock_path(path)

    def waiting(pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        print(f"artifact {path.name!r} is being built by another run (lock {str(lock)!r} held by {holder}); "
              "waiting for it to finish", file=sys.stderr, flush=True)

    return FileLock(lock, on_wait=waiting)


def _remove_leftovers(path: Path) -> None:
    """Delete the temporary ``.<name>.*.tmp`` and ``.<name>.old`` folders a crashed build of the artifact
    at ``path`` left (call with its lock held: no other build of it is running)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]+\.tmp|\.{re.escape(path.name)}\.old")
    if path.parent.is_dir():
        for leftover in path.parent.iterdir():
            if leftover.is_dir() and pattern.fullmatch(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)


def build_artifact(name: str, preset: str | Preset | None = None, *, steps: int | None = None,
                   device: str | torch.device | None = None, progress: bool = True, resume: bool = True,
                   root: str | os.PathLike | None = None, options: Mapping[str, Any] | None = None,
                   reuse: bool = False, init_from: str | os.PathLike | None = None) -> Artifact | None:
    """Train artifact ``name``, evaluate it on the val split and save it (replacing an old one).

    The build holds the artifact's lock ``<root>/<preset>/.<name>.lock`` from training to the final
    rename: another build of the same artifact waits for it (printing one line on stderr naming the
    process it waits for). With ``reuse``, an artifact that exists once the lock is taken (another run
    built it meanwhile) is loaded (:func:`load_artifact`) instead of trained again. Temporary folders
    a crashed build left are removed when the lock is taken.

    Periodic checkpoints go to ``<name>.partial/``; with ``resume`` an interrupted run continues
    from there (a checkpoint made with other settings raises ValueError: delete the folder or
    pass ``resume=False``). The artifact directory appears atomically when everything is written,
    with any ``samples/`` the training wrote. ``options``: run options passed to the spec's
    ``train`` (e.g. ``accumulate``, ``precision``), which do not change the artifact's identity; those set to
    True are switches (``decoder_only``) that the recorded command gives as flags (``--decoder-only``).

    ``init_from`` = ``"shipped"`` or a path (an artifact folder or its weights) continues training from
    those weights (:func:`~minildm.recipes.shipped.init_state`) for ``steps`` more steps (default: the
    preset's) with a fresh optimizer and learning-rate warm-up; the metrics record it (``init_from``), so
    that shipping the result adds the stretch to the shipped provenance (:mod:`minildm.recipes.ship`).
    Under ``torchrun`` every rank trains; rank 0 alone evaluates and writes, the others return None.
    """
    from ..engine.distributed import dist_info

    get_spec(name)
    check_steps(steps)
    p = get_preset(preset)
    dev = get_device(device)
    start = init_state(name, p, init_from) if init_from is not None else None
    rank = dist_info().rank
    final = artifact_dir(name, p, root)
    lock = _artifact_lock(final)
    if rank == 0:  # rank 0 alone writes; the other ranks wait for its decision below
        lock.acquire()
    try:
        return _build_locked(name, p, final, steps=steps, dev=dev, progress=progress, resume=resume, root=root,
                             options=options, reuse=reuse, start=start)
    finally:
        lock.release()


def _build_locked(name: str, p: Preset, final: Path, *, steps: int | None, dev: torch.device, progress: bool,
                  resume: bool, root: str | os.PathLike | None, options: Mapping[str, Any] | None,
                  reuse: bool, start: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Artifact | None:
    """:func:`build_artifact` once rank 0 holds the artifact's lock."""
    from ..engine.distributed import all_reduce_max, barrier, dist_info

    spec = get_spec(name)
    rank = dist_info().rank
    if rank == 0:
        _remove_leftovers(final)
    built = rank == 0 and reuse and final.is_dir()
    if all_reduce_max(float(built), dev) > 0:  # every rank follows rank 0
        return load_artifact(name, p, device=dev, root=root, steps=steps) if rank == 0 else None
    partial = _partial_dir(final)
    init_info = start[1] if start is not None else None
    # switches of the run (e.g. decoder_only): its command's flags; a checkpoint resumes only under the same ones
    flags = sorted(k for k, v in (options or {}).items() if v is True)
    run_start = {**(init_info or {}), **({"flags": flags} if flags else {})} or None
    if resume and partial.exists() and not _resumable(partial, spec.identity(p, steps), run_start):
        resume = False
    if not resume and partial.exists() and rank == 0:
        shutil.rmtree(partial)
    if rank == 0:
        partial.mkdir(parents=True, exist_ok=True)
        write_json(partial / INIT_FILE, run_start)
    barrier()
    token = _BUILD_ROOT.set(artifact_root(root))
    progress_token = _BUILD_PROGRESS.set(progress)
    try:
        run_options = dict(options or {})
        if start is not None:
            run_options["init_state"] = start[0]
        result = spec.train(p, steps=steps, device=dev, out_dir=partial, resume=resume,
                            progress=progress, **run_options)
        model, log = result.model, result.log
        check_finite_weights(model, f"the trained {name!r} (nothing was saved)")
        if rank != 0:
            return None
        from ..engine.distributed import local_only

        with local_only():  # rank 0 alone (anything it trains for the evaluation is not data-parallel)
            metrics: dict[str, Any] = dict(spec.evaluate(model, p, dev))
    finally:
        _BUILD_PROGRESS.reset(progress_token)
        _BUILD_ROOT.reset(token)
    identity = spec.identity(p, steps)
    metrics.update(result.facts)
    metrics.update({
        "train_time_s": round(result.elapsed_s, 3),
        "params": sum(t.numel() for t in model.parameters()),
        "steps": identity["recipe"].get("steps", result.facts.get("steps")),
        "preset": p.name,
        "device": str(dev),
        "command": spec.command(p, steps) + (f" --init-from {init_from_arg(init_info)}" if init_info else "")
                   + "".join(f" --{flag.replace('_', '-')}" for flag in flags),
        "run": run_environment(dev),
    })
    if init_info:
        metrics["init_from"] = init_info
    config = {**identity, "name": name, "minildm_version": minildm_version()}

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700: a shared cache must stay readable
    try:
        save_weights(tmp / "model.safetensors", model, {"model_class": config["model_class"],
                                                        "model": config["model"]})
        write_json(tmp / "config.json", config)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "log.json", log)
        if (partial / "samples").is_dir():
            shutil.copytree(partial / "samples", tmp / "samples")
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return Artifact(name=name, model=model.eval(), config=config, metrics=metrics, log=log, path=final)


def init_from_arg(info: Mapping[str, Any]) -> str:
    """The ``--init-from`` argument that gave the starting weights ``info`` (``init_from`` of the metrics)."""
    return "shipped" if info.get("source") == "shipped" else str(info.get("source"))


def _resumable(partial: Path, identity: Mapping[str, Any], init_info: Mapping[str, Any] | None = None) -> bool:
    """Whether ``partial`` holds a readable checkpoint of the same run, started from the same weights
    (else warn: it is discarded)."""
    from ..engine.checkpoint import load_checkpoint
    from ..engine.trainer import CHECKPOINT_NAME

    path = partial / CHECKPOINT_NAME
    if not path.is_file():
        return True  # nothing to resume; the folder is reused
    started = json.loads((partial / INIT_FILE).read_text()) if (partial / INIT_FILE).is_file() else None
    if (started or {}).get("sha256") != (init_info or {}).get("sha256"):
        warnings.warn(f"discarding checkpoint {str(path)!r}: it started from other weights "
                      "(--init-from); training starts anew", stacklevel=3)
        return False
    if (started or {}).get("flags", []) != (init_info or {}).get("flags", []):
        warnings.warn(f"discarding checkpoint {str(path)!r}: it was made with other switches "
                      f"({', '.join((started or {}).get('flags', [])) or 'none'}); training starts anew", stacklevel=3)
        return False
    try:
        _, metadata = load_checkpoint(path)
    except ValueError as err:
        warnings.warn(f"discarding unreadable checkpoint: {err}", stacklevel=3)
        return False
    if metadata.get("config") != resume_config(identity):
        warnings.warn(f"discarding checkpoint {str(path)!r}: it was made with other settings; "
                      "training starts from scratch", stacklevel=3)
        return False
    return True


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory ``src`` to ``dst``, replacing an existing one."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def load_or_train(name: str, preset: str | Preset | None = None, *, device: str | torch.device | None = None,
                  progress: bool | None = None, retrain: bool = False,
                  root: str | os.PathLike | None = None) -> Artifact:
    """The cached artifact ``name`` for ``preset``, training (and caching) it first if needed.

    Looks in the cache (``<root>/<preset>/<name>``), then in the shipped weights
    (:func:`~minildm.recipes.shipped.load_shipped`: sha256-checked; a recipe that no longer matches the
    code is a ValueError saying how to retrain), then trains. ``retrain=True`` (or ``$MINILDM_TRAIN=1``
    for the shipped weights) trains from scratch and replaces the cache. If another run (another process) is
    building the same artifact, this call waits for it and then loads its result (see
    :func:`build_artifact`); with ``retrain=True`` it waits and then trains anew. A corrupted or mismatched cache
    entry raises ValueError naming the file and the command that rebuilds it (or use retrain=True).
    Unknown names raise ValueError listing the known ones (:func:`list_artifacts`). ``progress``:
    progress bars while training (default: those of the artifact being built, if this one is its
    dependency, else shown).
    """
    get_spec(name)
    p = get_preset(preset)
    if progress is None:
        progress = _BUILD_PROGRESS.get()
    if not retrain and artifact_dir(name, p, root).is_dir():
        return load_artifact(name, p, device=device, root=root)
    if not retrain and not train_from_scratch():
        shipped = load_shipped(name, p, device=device)
        if shipped is not None:
            return shipped
    return build_artifact(name, p, device=device, progress=progress, resume=not retrain, root=root,
                          reuse=not retrain)


def load_trained(name: str, preset: str | Preset | None = None, *, device: str | torch.device | None = None,
                 root: str | os.PathLike | None = None) -> Artifact:
    """The trained artifact ``name`` from the cache, else from the shipped weights (as :func:`load_or_train`),
    but never training it: ValueError naming the command that builds it if there is neither."""
    get_spec(name)
    p = get_preset(preset)
    if artifact_dir(name, p, root).is_dir():
        return load_artifact(name, p, device=device, root=root)
    shipped = None if train_from_scratch() else load_shipped(name, p, device=device)
    if shipped is None:
        raise ValueError(f"artifact {name!r} is neither cached at {str(artifact_dir(name, p, root))!r} nor shipped; "
                         f"build it with `{get_spec(name).command(p)}` or load_or_train(...)")
    return shipped


def reevaluate_artifact(name: str, preset: str | Preset | None = None, *,
                        device: str | torch.device | None = None, root: str | os.PathLike | None = None,
                        steps: int | None = None) -> Artifact:
    """Evaluate the cached artifact ``name`` again with the evaluation settings ``preset`` gives now
    (e.g. more samples or other guidance scales; the weights are not touched) and rewrite its
    ``metrics.json`` atomically. The evaluation replaces the figures it measures; everything else the
    file holds, i.e. what training recorded (``train_time_s``, ``params``, ``steps``, ``device``,
    ``command`` and the run's facts, such as FLOPs per step), is kept; ``evaluated_by`` records this evaluation's command. The
    artifact must match ``preset`` (and ``steps``, if it was trained with another step count; see
    :func:`load_artifact`)."""
    spec = get_spec(name)
    p = get_preset(preset)
    dev = get_device(device)
    art = load_artifact(name, p, device=dev, root=root, steps=steps)
    token = _BUILD_ROOT.set(artifact_root(root))
    try:
        metrics: dict[str, Any] = dict(spec.evaluate(art.model, p, dev))
    finally:
        _BUILD_ROOT.reset(token)
    metrics = {**art.metrics, **metrics}
    metrics["evaluated_by"] = (f"python -m minildm reevaluate {name} --preset {p.name}"
                               + (f" --steps {steps}" if steps is not None else ""))
    tmp = art.path / ".metrics.json.tmp"
    write_json(tmp, metrics)
    os.replace(tmp, art.path / "metrics.json")
    return Artifact(name=name, model=art.model, config=art.config, metrics=metrics, log=art.log, path=art.path)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A small text table of an artifact's metrics (what the CLI prints)."""
    rows = [("PSNR (dB) ↑", "psnr", "{:.2f}"), ("SSIM ↑", "ssim", "{:.4f}"), ("LPIPS ↓", "lpips", "{:.4f}"),
            ("val images", "n", "{}"), ("train steps", "steps", "{}"), ("train time (s)", "train_time_s", "{:.1f}"),
            ("parameters", "params", "{:,}")]
    lines = []
    for label, key, fmt in rows:
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            text = fmt.format(value) if not (isinstance(value, float) and math.isnan(value)) else "nan"
            lines.append(f"  {label:<16}{text:>14}")
    return "\n".join(lines)

