"""Shipped weights: the long-trained models that come with minildm.

Training a model once and publishing its weights is how a course runs in minutes: the notebooks
load these and train only something small live. No model hub is reachable offline, so the weights
live in the repository, one folder per preset and artifact::

    data/weights/<preset>/<name>/
        model.safetensors   the (EMA) weights in float16, safetensors (never pickle)
        config.json         the artifact's identity: model config, recipe, preset
        metrics.json        what minildm measured on it, with the command that measured it
        log.json.gz         the training loss curve (every stretch), gzip-compressed JSON
        provenance.json     how it was made: each training stretch's command, code version, steps,
                            wall time, threads and CPU or GPU model; the sha256 of model.safetensors
        samples/            the validation grids the last run wrote, if any

:func:`~minildm.recipes.store.load_or_train` looks in the local cache, then here, then trains
(``$MINILDM_TRAIN=1``, or ``retrain=True``, skips the shipped weights). A shipped model is
trusted only if its sha256 matches and its recipe is the one the code gives now (the step count
aside: a run longer than one sitting adds stretches, :func:`init_state`); otherwise the error
says how to retrain it. :func:`minildm.recipes.ship.ship_artifact` (``python -m minildm ship NAME``)
turns a cached artifact into shipped weights.

An LDM's first stage is not stored twice: its ``first_stage_model.*`` weights are left out and
filled in from the shipped first stage, whose sha256 the provenance pins (:func:`shared_weights`), and
the sha256 of its encoder (:func:`encoder_sha256`): a first stage whose decoder alone was trained further
encodes the same latents, and the LDMs on it draw through the refined decoder.

``$MINILDM_WEIGHTS`` moves the folder (default: ``data/weights`` of the source tree). Taught in
notebook 01 (and used by every notebook).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..engine.checkpoint import load_module_state, load_weights, minildm_version, non_finite_tensors
from ..engine.device import get_device
from .artifact_files import Artifact, config_differences, read_json
from .presets import Preset, get_preset
from .registry import get_spec

__all__ = ["GROWTH_KEYS", "SHIPPED_BUDGET_BYTES", "SHIPPED_FILES", "SHIPPED_LOG", "TRAIN_ENV", "WEIGHTS_ENV",
           "encoder_sha256", "grown_state", "init_state", "learning_curve", "load_shipped", "read_provenance",
           "recipe_differences", "recipe_of", "retarget_changes", "retrain_hint", "run_environment",
           "sha256_file", "shared_weights", "shipped_dir", "shipped_sizes", "stale_shipped",
           "train_from_scratch", "weights_root"]

WEIGHTS_ENV = "MINILDM_WEIGHTS"
TRAIN_ENV = "MINILDM_TRAIN"
#: the shipped loss curve: compressed, since the budget counts every byte (JSON rows shrink about 8x)
SHIPPED_LOG = "log.json.gz"
SHIPPED_FILES = ("model.safetensors", "config.json", "metrics.json", SHIPPED_LOG, "provenance.json")
#: recipe keys a continued run may change: how long it trained
LENGTH_KEYS = ("steps", "budget_s")
#: what a continued run may add to the UNet: attention at more resolutions, the pooled condition in the
#: timestep embedding. Both add modules whose output layer is zero-initialised (a residual attention branch's
#: ``proj_out``, ``pooled_embed``'s last linear), so the grown network starts as the trained one computes
#: and learns only what the new modules add (the growth by zero-initialised residual branches of ADM's blocks
#: and ControlNet). The new modules' weights come from the grown model's own initialisation
#: (:func:`grown_state`); removing a module is not growth and fails as another model.
GROWTH_KEYS = (("model", "unet", "attention_resolutions"), ("model", "unet", "pooled_context"))
#: what a run continued from trained weights (``--init-from``) may change besides its length: what the UNet
#: predicts, how the loss weighs the timesteps, the noise schedule β_t and how many training images it draws
#: from. The network is the same and the new stretch teaches it the new target (Stable Diffusion 2's 768-v
#: model continued an ε model this way; Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
#: are Flawed", continued Stable Diffusion on a new schedule; every Stable Diffusion release continued the
#: last on more data); the stretch records the change.
#: A run may also grow the UNet (:data:`GROWTH_KEYS`).
RETARGET_KEYS = (("model", "diffusion", "parameterization"), ("recipe", "loss_weighting"),
                 ("model", "diffusion", "schedule"), ("model", "diffusion", "linear_start"),
                 ("model", "diffusion", "linear_end"), ("recipe", "n_train")) + GROWTH_KEYS


def weights_root() -> Path:
    """``$MINILDM_WEIGHTS``, else ``data/weights`` beside the ``minildm`` package (the source tree)."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data" / "weights"


def shipped_dir(name: str, preset: str | Preset | None = None) -> Path:
    """``<weights root>/<preset>/<name>``; ValueError for unknown names or presets."""
    get_spec(name)
    return weights_root() / get_preset(preset).name / name


def train_from_scratch() -> bool:
    """Whether ``$MINILDM_TRAIN`` asks to train instead of loading shipped weights (1, true, yes)."""
    return os.environ.get(TRAIN_ENV, "").strip().lower() in ("1", "true", "yes")


def recipe_of(identity: Mapping[str, Any], retarget: bool = False) -> dict[str, Any]:
    """An identity without its length (``recipe.steps``, ``recipe.budget_s``): what stays the same when a
    run is continued from its weights (:func:`init_state`); ``retarget``: also without :data:`RETARGET_KEYS`."""
    config = json.loads(json.dumps(dict(identity)))
    for key in LENGTH_KEYS:
        config.get("recipe", {}).pop(key, None)
    for *path, key in RETARGET_KEYS if retarget else ():
        node = config
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return config


def retarget_changes(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """The :data:`RETARGET_KEYS` on which two identities differ (``"path: saved x, expected y"``)."""
    def part(identity: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for *path, key in RETARGET_KEYS:
            node: Any = identity
            for step in path:
                node = node.get(step) if isinstance(node, Mapping) else None
            out[".".join([*path, key])] = node.get(key) if isinstance(node, Mapping) else None
        return out
    return config_differences(part(saved), part(expected))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shared_weights(name: str, preset: Preset) -> dict[str, str]:
    """State-dict prefixes of artifact ``name`` that are another artifact's weights (an LDM's
    ``first_stage_model.`` is its first stage's): prefix -> artifact name. Shipped once, with that artifact."""
    spec = get_spec(name)
    first_stage = getattr(spec, "first_stage_name", None)
    return {"first_stage_model.": first_stage(preset)} if callable(first_stage) else {}


def encoder_sha256(name: str, preset: Preset, state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the weights of first stage ``name`` that define its latent space (its model's
    ``encoder_prefixes``: E and ``quant_conv``), over names, dtypes, shapes and values in name order.

    An LDM pins it beside its first stage's file sha256: a first stage whose decoder alone was trained
    further (``train-first-stage --decoder-only``) encodes the same latents, so the LDM stays valid and
    draws through the refined decoder."""
    config = read_json(shipped_dir(name, preset) / "config.json", retrain_hint(name, preset),
                       required=("model_class", "model"))
    prefixes = getattr(get_spec(name).build_model(config), "encoder_prefixes", None)
    if prefixes is None:
        raise ValueError(f"{name!r} has no encoder to pin (not a first stage)")
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith(prefixes)):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _code_version() -> str:
    """The git commit of the source tree (``+dirty`` with uncommitted changes), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "minildm"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return minildm_version()


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_environment(device: torch.device) -> dict[str, Any]:
    """Where a training run ran: code version, torch version, device, its model name, CPU threads, date."""
    return {"code_version": _code_version(), "torch": torch.__version__, "device": str(device),
            "hardware": _hardware(device), "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def retrain_hint(name: str, preset: Preset) -> str:
    command = get_spec(name).command(preset)
    return (f"Retrain it with `{command}` (or MINILDM_TRAIN=1 / load_or_train(..., retrain=True)) and ship it "
            f"again with `python -m minildm ship {name} --preset {preset.name}`.")


def read_provenance(path: Path, name: str, preset: Preset) -> dict[str, Any]:
    return read_json(path / "provenance.json", retrain_hint(name, preset), required=("sha256", "stretches"))


def recipe_differences(name: str, preset: Preset, config: Mapping[str, Any], retarget: bool = False) -> list[str]:
    """How the identity ``config`` of shipped ``name`` differs from the one the code gives now, apart from
    the run's length (``retarget``: and the :data:`RETARGET_KEYS`); ``[]`` when the weights are current."""
    identity = get_spec(name).identity(preset)
    return config_differences(recipe_of({k: config.get(k) for k in identity}, retarget), recipe_of(identity, retarget))


def stale_shipped(preset: str | Preset | None = None) -> dict[str, list[str]]:
    """The shipped artifacts of ``preset`` that the code would no longer load (a preset or recipe changed
    since they were trained), each with its differences; ``{}`` when every shipped model is current."""
    p = get_preset(preset)
    stale = {}
    for name in shipped_sizes(p):
        path = shipped_dir(name, p)
        diffs = recipe_differences(name, p, read_json(path / "config.json", retrain_hint(name, p),
                                                      required=("model_class", "model")))
        if diffs:
            stale[name] = diffs
    return stale


def load_shipped(name: str, preset: str | Preset | None = None, *,
                 device: str | torch.device | None = None, retarget: bool = False) -> Artifact | None:
    """The shipped weights of ``name`` under ``preset`` as an :class:`Artifact` (weights cast to float32),
    or None if none are shipped. ValueError, saying how to retrain, if the files are corrupted
    (sha256), or were made with another recipe than the code gives now (``retarget``: apart from the
    :data:`RETARGET_KEYS`, for weights to continue from; the model is then built from the shipped config)."""
    spec = get_spec(name)
    p = get_preset(preset)
    path = shipped_dir(name, p)
    if not (path / "provenance.json").is_file():
        return None
    hint = retrain_hint(name, p)
    provenance = read_provenance(path, name, p)
    weights_file = path / "model.safetensors"
    if not weights_file.is_file() or sha256_file(weights_file) != provenance["sha256"]:
        raise ValueError(f"shipped weights {str(weights_file)!r} are missing or do not match the sha256 in "
                         f"provenance.json (a corrupted or partial file; `git checkout -- {path}` restores it). {hint}")
    config = read_json(path / "config.json", hint, required=("model_class", "model"))
    diffs = recipe_differences(name, p, config, retarget)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 6 else "")
        raise ValueError(f"the shipped weights of {name!r} ({str(path)!r}) were made with another recipe than the "
                         f"code gives now ({shown}). {hint}")
    metrics = read_json(path / "metrics.json", hint)
    log = read_json(path / SHIPPED_LOG, hint, kind=list)
    state, _ = load_weights(weights_file)
    model = spec.build_model(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for prefix, other in shared_weights(name, p).items():
        state.update(_shared_state(name, prefix, other, p, provenance))
    try:
        load_module_state(model, state, source=str(weights_file))
    except ValueError as err:
        raise ValueError(f"shipped {name!r}: {err} {hint}") from err
    if non_finite_tensors(state):
        raise ValueError(f"shipped weights {str(weights_file)!r} hold non-finite values. {hint}")
    model.to(get_device(device)).eval()
    return Artifact(name=name, model=model, config=config, metrics=metrics, log=log, path=path,
                    provenance=provenance)


def _shared_state(name: str, prefix: str, other: str, preset: Preset,
                  provenance: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights under ``prefix`` of shipped ``name``: those of the shipped ``other``, whose sha256 must be
    the one ``name`` was trained with, or whose encoder must be (``encoder_sha256``: the decoder alone was
    trained further, :func:`encoder_sha256`)."""
    pin = provenance.get("shared", {}).get(prefix, {})
    expected = pin.get("sha256")
    other_dir = shipped_dir(other, preset)
    found = read_provenance(other_dir, other, preset)["sha256"] if (other_dir / "provenance.json").is_file() else None
    state = load_weights(other_dir / "model.safetensors")[0] if found is not None else {}
    same_latents = (found is not None and found != expected and pin.get("encoder_sha256") is not None
                    and encoder_sha256(other, preset, state) == pin["encoder_sha256"])
    if found is None or (found != expected and not same_latents):
        raise ValueError(f"the shipped {name!r} was trained on {other!r} with sha256 {expected}, but the shipped "
                         f"{other!r} is {'missing' if found is None else 'another one (' + found[:12] + '...)'}"
                         f"{' with another encoder' if pin.get('encoder_sha256') else ''}. " + retrain_hint(name, preset))
    return {prefix + k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def init_state(name: str, preset: str | Preset | None, source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights to continue training ``name`` from: ``source`` = ``"shipped"`` (its shipped weights) or a path
    (an artifact folder or its ``model.safetensors``). Returns ``(state_dict, info)``; ``info`` (source,
    sha256, the steps and hours behind the weights) goes into the new artifact's metrics as ``init_from``,
    so that :func:`ship_artifact` adds the stretches up; with ``retargeted``, the :data:`RETARGET_KEYS` the
    new run changes (e.g. ε to v). ValueError if the weights are of another recipe."""
    spec = get_spec(name)
    p = get_preset(preset)
    expected = spec.identity(p)
    if str(source) == "shipped":
        art = load_shipped(name, p, device="cpu", retarget=True)
        if art is None:
            raise ValueError(f"no shipped weights of {name!r} for preset {p.name!r} under {str(shipped_dir(name, p))!r}: "
                             "train it from scratch first (leave out --init-from)")
        prov = art.provenance or {}
        info = {"source": "shipped", "sha256": prov.get("sha256"), "steps": prov.get("total_steps"),
                "train_time_s": prov.get("total_train_time_s")}
        changes = retarget_changes(art.config, expected)
        state = grown_state(name, p, art.model.state_dict(), changes)
        return state, {**info, **({"retargeted": changes} if changes else {})}
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    weights = folder / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise ValueError(f"--init-from {str(source)!r}: no such weights file (give 'shipped', an artifact folder "
                         "or its model.safetensors)")
    state, saved = load_weights(weights)
    if recipe_of({"model": saved.get("model")}, True) != recipe_of({"model": expected["model"]}, True):
        raise ValueError(f"--init-from {str(weights)!r}: its model config differs from {name!r}'s under preset "
                         f"{p.name!r}; continue only from weights of the same model")
    config_file = folder / "config.json"
    if config_file.is_file():
        saved_config = json.loads(config_file.read_text())
        diffs = config_differences(recipe_of({k: saved_config.get(k) for k in expected}, True),
                                   recipe_of(expected, True))
        if diffs:
            raise ValueError(f"--init-from {str(folder)!r} was trained with another recipe ({'; '.join(diffs[:4])})")
    changes = retarget_changes({"model": saved.get("model"), "recipe": saved_config.get("recipe")}
                               if config_file.is_file() else {"model": saved.get("model")}, expected)
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    info = {"source": str(weights), "sha256": sha256_file(weights), "steps": metrics.get("steps"),
            "train_time_s": metrics.get("train_time_s"), **({"retargeted": changes} if changes else {})}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return grown_state(name, p, state, changes), info


def grown_state(name: str, preset: Preset, state: Mapping[str, torch.Tensor],
                changes: list[str]) -> dict[str, torch.Tensor]:
    """``state`` completed for the model that ``preset`` builds now, where ``changes`` (:func:`retarget_changes`)
    grow its UNet (:data:`GROWTH_KEYS`): the weights the grown model has and ``state`` lacks are its own
    initialisation under the preset's seed; their branches output zeros, so the grown model computes what the
    trained one did. Without growth, ``state`` unchanged; a grown model that drops any of ``state``'s weights or
    reshapes one is a ValueError."""
    grown = {".".join(k) for k in GROWTH_KEYS}
    if not any(change.split(":")[0] in grown for change in changes):
        return dict(state)
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.seed)
        fresh = spec.build_model(spec.identity(preset)).state_dict()
    dropped = [k for k in state if k not in fresh]
    reshaped = [k for k in state if k in fresh and fresh[k].shape != state[k].shape]
    if dropped or reshaped:
        raise ValueError(f"--init-from: the UNet of {name!r} under preset {preset.name!r} is not a growth of the "
                         f"saved one (weights it would drop or reshape: {', '.join((dropped + reshaped)[:4])}); "
                         "a continued run may only add attention resolutions or the pooled context")
    return {k: state[k] if k in state else v for k, v in fresh.items()}


def learning_curve(name: str, preset: str | Preset | None = None) -> list[dict[str, Any]]:
    """The shipped ``name``'s training, one point per stretch: the steps and core-hours (wall time × threads)
    accumulated by the end of the stretch (and its wall time ``train_time_s``, also accumulated, and its
    ``threads``), the ``metrics`` measured then (``{}`` for stretches shipped before they were recorded) and
    what the stretch changed of the target (``retargeted``: e.g. ε to v, see :data:`RETARGET_KEYS`; ``[]`` if
    nothing) and what it trained (``trained``: ``"all"``, or e.g. a first stage's decoder alone). Empty if
    ``name`` is not shipped for ``preset``."""
    p = get_preset(preset)
    folder = shipped_dir(name, p)
    if not (folder / "provenance.json").is_file():
        return []
    points, steps, seconds, hours = [], 0, 0.0, 0.0
    for s in read_provenance(folder, name, p)["stretches"]:
        threads = int(s.get("threads") or 1)
        steps += int(s.get("steps") or 0)
        seconds += float(s.get("train_time_s") or 0)
        hours += float(s.get("train_time_s") or 0) * threads / 3600
        points.append({"steps": steps, "train_time_s": seconds, "core_hours": hours, "threads": threads,
                       "metrics": dict(s.get("metrics") or {}),
                       "retargeted": list((s.get("init_from") or {}).get("retargeted") or []),
                       "trained": s.get("trained", "all")})
    return points


#: what all of a preset's shipped artifacts may take in the repository (every file, bytes)
SHIPPED_BUDGET_BYTES = 60_000_000


def shipped_sizes(preset: str | Preset | None = None) -> dict[str, int]:
    """Bytes on disk of every shipped artifact of ``preset`` (all its files), by name."""
    folder = weights_root() / get_preset(preset).name
    if not folder.is_dir():
        return {}
    return {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}
