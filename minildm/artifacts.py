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
``<name>.partial/checkpoint.safetensors`` (exactly, see :mod:`minildm.train`).

The training recipe of the first stage (paper Sec. 3.1; CompVis ``autoencoder_kl_*`` /
``vq-f*`` configs) lives here too, in :func:`train_autoencoder`, shared by the CLI
(``python -m minildm train-ae``) and the notebooks. Variants:

=================  ================================================  ====================
variant            loss                                              discriminator
=================  ================================================  ====================
``l2``             ||x − x̂||²                                        none
``l1-lpips``       |x − x̂| + LPIPS(x, x̂)                             none
``l1-lpips-gan``   |x − x̂| + LPIPS(x, x̂) + λ·(−E[D(x̂)])              PatchGAN from disc_start
=================  ================================================  ====================

regularizer ``kl``: + 1e-6 · KL(q(z|x) || N(0, I)) (AutoencoderKL, learned log-variance);
``vq``: vector quantisation with codebook size ``preset.ae.n_embed``, β = 0.25 (VQModel).
"""
from __future__ import annotations

import contextvars
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_module_state, load_weights, minildm_version, save_weights
from .presets import Preset, get_device, get_preset, seed_everything

__all__ = [
    "ARTIFACTS",
    "ARTIFACTS_ENV",
    "VARIANTS",
    "REGULARIZERS",
    "Artifact",
    "AutoencoderSpec",
    "artifact_root",
    "artifact_dir",
    "list_artifacts",
    "load_artifact",
    "build_artifact",
    "load_or_train",
    "reevaluate_artifact",
    "autoencoder_recipe",
    "build_autoencoder",
    "train_autoencoder",
]

ARTIFACTS_ENV = "MINILDM_ARTIFACTS"
FILES = ("model.safetensors", "config.json", "metrics.json", "log.json")

#: loss settings of each variant (CompVis ``LPIPSWithDiscriminator`` / ``VQLPIPSWithDiscriminator`` args)
VARIANTS: dict[str, dict[str, Any]] = {
    "l2": {"pixel_loss": "l2", "perceptual_weight": 0.0, "gan": False},
    "l1-lpips": {"pixel_loss": "l1", "perceptual_weight": 1.0, "gan": False},
    "l1-lpips-gan": {"pixel_loss": "l1", "perceptual_weight": 1.0, "gan": True},
}
REGULARIZERS = ("kl", "vq")

# CompVis first-stage configs: KL disc_weight 0.5, kl_weight 1e-6; VQ disc_weight 0.75, codebook 1.0.
_DISC_WEIGHT = {"kl": 0.5, "vq": 0.75}
_KL_WEIGHT = 1e-6
_CODEBOOK_WEIGHT = 1.0
_VQ_BETA = 0.25
_BETAS = (0.5, 0.9)
_EVAL_LPIPS_NET = "alex"  # the metric is always LPIPS-alex, whatever net the loss trains with


def _check_choice(what: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(map(str, allowed))}")


def _check_steps(steps: Any) -> None:
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps must be a positive int or None (the preset's), got {steps!r}")


# ------------------------------------------------------------------------------------------
# the first-stage recipe
# ------------------------------------------------------------------------------------------

def autoencoder_recipe(variant: str, regularizer: str, preset: str | Preset | None = None,
                       steps: int | None = None, data: str = "shapes") -> dict[str, Any]:
    """Every hyperparameter of a first-stage run, as JSON (stored with checkpoints and artifacts).

    ``data`` names the training dataset (:func:`minildm.data.load_dataset`), shapes by default."""
    _check_choice("variant", variant, VARIANTS)
    _check_choice("regularizer", regularizer, REGULARIZERS)
    _check_steps(steps)
    p = get_preset(preset)
    ae = p.ae
    v = VARIANTS[variant]
    recipe: dict[str, Any] = {
        "kind": "autoencoder",
        "variant": variant,
        "regularizer": regularizer,
        "pixel_loss": v["pixel_loss"],
        "perceptual_weight": v["perceptual_weight"],
        "lpips_net": ae.lpips_net,
        "disc_weight": 0.0,
        "lr": ae.lr,
        "betas": list(_BETAS),
        "batch_size": ae.batch_size,
        "steps": steps if steps is not None else ae.steps,
        "seed": p.seed,
        "grad_clip": None,
        "data": {"name": data, "split": "train", "image_size": ae.image_size,
                 "length": ae.n_train, "seed": p.seed},
    }
    if v["gan"]:  # the discriminator's settings are part of the recipe only where it exists
        recipe.update(disc_weight=_DISC_WEIGHT[regularizer] * ae.disc_weight_scale, disc_start=ae.disc_start,
                      disc_ndf=ae.disc_ndf, disc_num_layers=3, disc_loss="hinge")
    if regularizer == "kl":
        recipe["kl_weight"] = _KL_WEIGHT
    else:
        recipe["codebook_weight"] = _CODEBOOK_WEIGHT
        recipe["beta"] = _VQ_BETA
    return recipe


def _model_config(regularizer: str, preset: Preset, overrides: Mapping[str, Any] | None = None):
    from .autoencoder import AutoencoderConfig

    values: dict[str, Any] = dict(embed_dim=preset.ae.z_channels)
    if regularizer == "kl":
        values.update(double_z=True, n_embed=None)
    else:
        values.update(double_z=False, beta=_VQ_BETA)
    values.update(overrides or {})
    return AutoencoderConfig.from_preset(preset.ae, **values)


def _model_from_config(model_class: str, config: Mapping[str, Any]) -> nn.Module:
    from .autoencoder import AutoencoderConfig, AutoencoderKL, VQModel

    classes = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}
    _check_choice("model class", model_class, classes)
    return classes[model_class](AutoencoderConfig.from_dict(config))


def _loss_from_recipe(recipe: Mapping[str, Any]) -> nn.Module:
    from .losses import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator

    common: dict[str, Any] = dict(pixel_loss=recipe["pixel_loss"], perceptual_weight=recipe["perceptual_weight"],
                                  disc_weight=recipe["disc_weight"], lpips_net=recipe["lpips_net"], disc_start=0)
    if recipe["disc_weight"] > 0:
        common.update(disc_start=recipe["disc_start"], disc_ndf=recipe["disc_ndf"],
                      disc_num_layers=recipe["disc_num_layers"], disc_loss=recipe["disc_loss"])
    if recipe["regularizer"] == "kl":
        return LPIPSWithDiscriminator(kl_weight=recipe["kl_weight"], **common)
    return VQLPIPSWithDiscriminator(codebook_weight=recipe["codebook_weight"], **common)


def build_autoencoder(variant: str, regularizer: str, preset: str | Preset | None = None,
                      model_overrides: Mapping[str, Any] | None = None) -> tuple[nn.Module, nn.Module]:
    """Fresh ``(model, loss)`` of a recipe, seeded with the preset's seed (same init every time)."""
    p = get_preset(preset)
    recipe = autoencoder_recipe(variant, regularizer, p)
    config = _model_config(regularizer, p, model_overrides)
    seed_everything(p.seed)
    model = _model_from_config("AutoencoderKL" if regularizer == "kl" else "VQModel", config.to_dict())
    return model, _loss_from_recipe(recipe)


def _train_data(recipe: Mapping[str, Any]):
    from .data import collate, load_dataset
    from .train import DatasetBatches

    d = recipe["data"]
    dataset = load_dataset(d["name"], d["split"], d["image_size"], length=d["length"], seed=d["seed"])
    return DatasetBatches(dataset, recipe["batch_size"], seed=recipe["seed"], collate_fn=collate)


def _trainer_config(identity: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: everything but the step count."""
    config = json.loads(json.dumps(dict(identity)))
    config["recipe"].pop("steps", None)
    return config


def _run_autoencoder(variant: str, regularizer: str, preset: Preset, *, steps: int | None,
                     device: str | torch.device | None, out_dir: str | os.PathLike | None, resume: bool,
                     progress: bool, model_overrides: Mapping[str, Any] | None = None, desc: str | None = None,
                     data: str = "shapes"):
    from .tasks import AutoencoderTask
    from .train import CHECKPOINT_NAME, Trainer

    recipe = autoencoder_recipe(variant, regularizer, preset, steps, data)
    model, loss = build_autoencoder(variant, regularizer, preset, model_overrides)
    identity = _identity(model, recipe, preset)
    task = AutoencoderTask(model, loss, lr=recipe["lr"], betas=tuple(recipe["betas"]))
    steps_total = recipe["steps"]
    checkpoint_every = max(50, steps_total // 10) if out_dir is not None else None
    trainer = Trainer(task, _train_data(recipe), device=device, max_steps=steps_total, seed=recipe["seed"],
                      out_dir=out_dir, checkpoint_every=checkpoint_every, grad_clip=recipe["grad_clip"],
                      progress=progress, desc=desc, config=_trainer_config(identity))
    if resume:
        if out_dir is None:
            raise ValueError("resume=True needs out_dir (where the checkpoint is)")
        checkpoint = Path(out_dir) / CHECKPOINT_NAME
        if checkpoint.is_file():
            trainer.resume(checkpoint)
            trainer.max_steps = steps_total
    trainer.fit()
    model.eval()
    return model, loss, trainer, identity


def train_autoencoder(variant: str, regularizer: str, preset: str | Preset | None = None, *,
                      steps: int | None = None, device: str | torch.device | None = None,
                      out_dir: str | os.PathLike | None = None, resume: bool = False,
                      progress: bool = True) -> tuple[nn.Module, nn.Module, list[dict[str, Any]]]:
    """Train a first-stage autoencoder with the shared recipe; return ``(model, loss, log)``.

    Args:
        variant: ``"l2"``, ``"l1-lpips"`` or ``"l1-lpips-gan"`` (see the module docstring).
        regularizer: ``"kl"`` (AutoencoderKL) or ``"vq"`` (VQModel).
        preset: preset name or :class:`~minildm.presets.Preset` (sizes, steps, lr, data size).
        steps: override the preset's step count.
        device: where to train (default :func:`minildm.presets.get_device`).
        out_dir: where periodic checkpoints go (None: none are written).
        resume: continue from ``out_dir/checkpoint.safetensors`` when it exists (exactly).
        progress: tqdm progress bar.

    The model is returned in eval mode, on ``device``. Same arguments, same result: the model
    init, data order and dropout/posterior noise are seeded by the preset's seed.
    """
    p = get_preset(preset)
    model, loss, trainer, _ = _run_autoencoder(variant, regularizer, p, steps=steps, device=device,
                                               out_dir=out_dir, resume=resume, progress=progress)
    return model, loss, trainer.log


def _identity(model: nn.Module, recipe: Mapping[str, Any], preset: Preset) -> dict[str, Any]:
    return {"model_class": type(model).__name__, "model": model.config.to_dict(), "recipe": dict(recipe),
            "preset": preset.name}


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AutoencoderSpec:
    """A named first-stage artifact: a (variant, regularizer) recipe, optionally with changed
    model sizes (``model_overrides``, e.g. another ``ch_mult`` for the f ablation)."""

    name: str
    variant: str
    regularizer: str
    description: str
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    cli: str = "train-ae --preset {preset} --variant {variant} --regularizer {regularizer}"
    data: str = "shapes"

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        """The config.json content (without version info) this spec produces under ``preset``."""
        config = _model_config(self.regularizer, preset, self.model_overrides)
        return {"model_class": "AutoencoderKL" if self.regularizer == "kl" else "VQModel",
                "model": config.to_dict(),
                "recipe": autoencoder_recipe(self.variant, self.regularizer, preset, steps, self.data),
                "preset": preset.name}

    def command(self, preset: Preset, steps: int | None = None) -> str:
        """The CLI command that rebuilds this artifact under ``preset`` (and ``steps``).

        A preset with changed sizes beyond the step count (``Preset.with_ae(...)``) has no CLI
        form; then this is the equivalent Python call.
        """
        steps = steps if steps is not None else preset.ae.steps
        base = get_preset(preset.name)
        changed = {k: v for k, v in vars(preset.ae).items() if k != "steps" and getattr(base.ae, k) != v}
        if changed or preset.seed != base.seed:
            sizes = ", ".join(f"{k}={v!r}" for k, v in {**changed, "steps": steps}.items())
            return (f"python -c \"from minildm.artifacts import load_or_train; from minildm.presets import "
                    f"get_preset; load_or_train({self.name!r}, get_preset({preset.name!r}).with_ae({sizes}), "
                    f"retrain=True)\"")
        cmd = "python -m minildm " + self.cli.format(preset=preset.name, variant=self.variant,
                                                     regularizer=self.regularizer, name=self.name)
        if steps != base.ae.steps:
            cmd += f" --steps {steps}"
        return cmd

    def train(self, preset: Preset, *, steps: int | None, device: Any, out_dir: Path | None, resume: bool,
              progress: bool) -> tuple[nn.Module, list[dict[str, Any]], float]:
        model, _, trainer, _ = _run_autoencoder(
            self.variant, self.regularizer, preset, steps=steps, device=device, out_dir=out_dir,
            resume=resume, progress=progress, model_overrides=self.model_overrides,
            desc=f"{self.name} ({preset.name})", data=self.data)
        return model, trainer.log, trainer.elapsed_s

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return _model_from_config(identity["model_class"], identity["model"])

    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, float]:
        from .data import load_dataset
        from .metrics import evaluate_reconstruction

        ae = preset.ae
        val = load_dataset(self.data, "val", ae.image_size, length=ae.n_eval, seed=preset.seed)
        return evaluate_reconstruction(model, val, n=ae.n_eval, batch_size=ae.batch_size, device=device,
                                       lpips_net=_EVAL_LPIPS_NET)


def _register_first_stage() -> dict[str, AutoencoderSpec]:
    text = {"l2": "pixel L2 only (blurry baseline)", "l1-lpips": "L1 + LPIPS perceptual loss",
            "l1-lpips-gan": "L1 + LPIPS + PatchGAN (the paper's first stage)"}
    reg = {"kl": "KL-regularised (AutoencoderKL)", "vq": "VQ-regularised (VQModel)"}
    specs = {}
    for r in REGULARIZERS:
        for v in VARIANTS:
            name = f"ae-{r}-{v}"
            specs[name] = AutoencoderSpec(name, v, r, f"{reg[r]}, {text[v]}, f from the preset")
    return specs


#: name -> spec. Later notebooks add entries, e.g. ``"ae-kl-f8"`` as an :class:`AutoencoderSpec` with
#: ``model_overrides={"ch_mult": ...}``, or other kinds of model: a spec needs ``identity(preset, steps)``,
#: ``command(preset, steps)``, ``train(preset, *, steps, device, out_dir, resume, progress) -> (model, log,
#: seconds)``, ``build_model(identity)`` and ``evaluate(model, preset, device) -> dict``.
ARTIFACTS: dict[str, Any] = _register_first_stage()


_REGISTERED_LATER = False


def _register_later() -> None:
    """Add the specs that live in other modules (imported on first use: they import this one)."""
    global _REGISTERED_LATER
    if _REGISTERED_LATER:
        return
    from .ablation import ablation_specs
    from .checker import CheckerSpec
    from .cond_train import cond_specs
    from .fid import FeatureNetSpec
    from .first_stage import first_stage_specs
    from .ldm_train import ldm_specs
    from .t2i_train import t2i_specs

    ARTIFACTS.update(ablation_specs())
    ARTIFACTS.update(first_stage_specs())
    ARTIFACTS.update(ldm_specs())
    ARTIFACTS.setdefault(FeatureNetSpec.name, FeatureNetSpec())
    ARTIFACTS.setdefault(CheckerSpec.name, CheckerSpec())
    ARTIFACTS.update(cond_specs())
    ARTIFACTS.update(t2i_specs())
    _REGISTERED_LATER = True


def list_artifacts() -> list[str]:
    """Names that :func:`load_or_train` knows."""
    _register_later()
    return sorted(ARTIFACTS)


def _spec(name: str) -> Any:
    _register_later()
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artifact {name!r}: known names are {', '.join(list_artifacts())}")
    return ARTIFACTS[name]


# ------------------------------------------------------------------------------------------
# artifact files
# ------------------------------------------------------------------------------------------

@dataclass
class Artifact:
    """A trained model from the cache: ``model`` (eval mode), its ``config`` (config.json),
    ``metrics`` (metrics.json, incl. ``"command"``), training ``log`` and directory ``path``."""

    name: str
    model: nn.Module
    config: dict[str, Any]
    metrics: dict[str, Any]
    log: list[dict[str, Any]]
    path: Path

    @property
    def command(self) -> str:
        """The CLI command that rebuilds this artifact."""
        return str(self.metrics.get("command", ""))


#: the root of the artifact being built: the artifacts it needs (a first stage, the feature
#: network) are looked up and cached under the same root
_BUILD_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("minildm_build_root", default=None)


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
    _spec(name)
    return artifact_root(root) / get_preset(preset).name / name


def _read_json(path: Path, rebuild: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"artifact file {str(path)!r} is missing; the artifact is incomplete. "
                         f"Rebuild it with `{rebuild}` (or load_or_train(..., retrain=True)).") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"artifact file {str(path)!r} is corrupted ({err}). "
                         f"Rebuild it with `{rebuild}` (or load_or_train(..., retrain=True)).") from err


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: saved {a!r}, expected {b!r}"]


def load_artifact(name: str, preset: str | Preset | None = None, *, device: str | torch.device | None = None,
                  root: str | os.PathLike | None = None, steps: int | None = None) -> Artifact:
    """Load a cached artifact; ValueError naming the file and the rebuild command if it is missing,
    corrupted, or was made with a different config than ``preset`` (and ``steps``) give now."""
    spec = _spec(name)
    p = get_preset(preset)
    path = artifact_dir(name, p, root)
    rebuild = spec.command(p, steps)
    if not path.is_dir():
        raise ValueError(f"artifact {name!r} not found at {str(path)!r}; build it with `{rebuild}` "
                         "or load_or_train(...)")
    config = _read_json(path / "config.json", rebuild)
    expected = spec.identity(p, steps)
    saved = {k: config.get(k) for k in expected}
    diffs = _differences(saved, json.loads(json.dumps(expected)))
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 6 else "")
        raise ValueError(f"mismatched artifact {str(path / 'config.json')!r}: it was made with a different "
                         f"config than preset {p.name!r} gives now ({shown}). Rebuild it with `{rebuild}` "
                         "(or load_or_train(..., retrain=True)).")
    metrics = _read_json(path / "metrics.json", rebuild)
    log = _read_json(path / "log.json", rebuild)
    weights_file = path / "model.safetensors"
    model = spec.build_model(config)
    try:
        state, weights_config = load_weights(weights_file)
        if weights_config.get("model") != config.get("model"):
            raise ValueError(f"mismatched checkpoint {str(weights_file)!r}: its config differs from config.json")
        load_module_state(model, state, source=str(weights_file))
    except ValueError as err:
        raise ValueError(f"artifact {name!r}: {err} Rebuild it with `{rebuild}` "
                         "(or load_or_train(..., retrain=True)).") from err
    model.to(get_device(device)).eval()
    return Artifact(name=name, model=model, config=config, metrics=metrics, log=log, path=path)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")


def _partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def build_artifact(name: str, preset: str | Preset | None = None, *, steps: int | None = None,
                   device: str | torch.device | None = None, progress: bool = True, resume: bool = True,
                   root: str | os.PathLike | None = None, options: Mapping[str, Any] | None = None) -> Artifact | None:
    """Train artifact ``name``, evaluate it on the val split and save it (replacing an old one).

    Periodic checkpoints go to ``<name>.partial/``; with ``resume`` an interrupted run continues
    from there (a checkpoint made with other settings raises ValueError: delete the folder or
    pass ``resume=False``). The artifact directory appears atomically when everything is written,
    with any ``samples/`` the training wrote. ``options``: run options passed to the spec's
    ``train`` (e.g. ``accumulate``, ``precision``), which do not change the artifact's identity.
    Under ``torchrun`` every rank trains; rank 0 alone evaluates and writes, the others return None.
    """
    from .distributed import barrier, dist_info

    spec = _spec(name)
    _check_steps(steps)
    p = get_preset(preset)
    dev = get_device(device)
    rank = dist_info().rank
    final = artifact_dir(name, p, root)
    partial = _partial_dir(final)
    if resume and partial.exists() and not _resumable(partial, spec.identity(p, steps)):
        resume = False
    if not resume and partial.exists() and rank == 0:
        shutil.rmtree(partial)
    barrier()
    token = _BUILD_ROOT.set(artifact_root(root))
    try:
        model, log, elapsed = spec.train(p, steps=steps, device=dev, out_dir=partial, resume=resume,
                                         progress=progress, **dict(options or {}))
        if rank != 0:
            return None
        from .distributed import local_only

        with local_only():  # rank 0 alone (anything it trains for the evaluation is not data-parallel)
            metrics: dict[str, Any] = dict(spec.evaluate(model, p, dev))
    finally:
        _BUILD_ROOT.reset(token)
    identity = spec.identity(p, steps)
    metrics.update({
        "train_time_s": round(elapsed, 3),
        "params": sum(t.numel() for t in model.parameters()),
        "steps": identity["recipe"]["steps"],
        "preset": p.name,
        "device": str(dev),
        "command": spec.command(p, steps),
    })
    config = {**identity, "name": name, "minildm_version": minildm_version()}

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=final.parent))
    try:
        save_weights(tmp / "model.safetensors", model, {"model_class": config["model_class"],
                                                        "model": config["model"]})
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "metrics.json", metrics)
        _write_json(tmp / "log.json", log)
        if (partial / "samples").is_dir():
            shutil.copytree(partial / "samples", tmp / "samples")
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return Artifact(name=name, model=model.eval(), config=config, metrics=metrics, log=log, path=final)


def _resumable(partial: Path, identity: Mapping[str, Any]) -> bool:
    """Whether ``partial`` holds a readable checkpoint of the same run (else warn: it is discarded)."""
    from .checkpoint import load_checkpoint
    from .train import CHECKPOINT_NAME

    path = partial / CHECKPOINT_NAME
    if not path.is_file():
        return True  # nothing to resume; the folder is reused
    try:
        _, metadata = load_checkpoint(path)
    except ValueError as err:
        warnings.warn(f"discarding unreadable checkpoint: {err}", stacklevel=3)
        return False
    if metadata.get("config") != _trainer_config(identity):
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
                  progress: bool = True, retrain: bool = False,
                  root: str | os.PathLike | None = None) -> Artifact:
    """The cached artifact ``name`` for ``preset``, training (and caching) it first if needed.

    ``retrain=True`` trains from scratch and replaces the cache. A corrupted or mismatched cache
    entry raises ValueError naming the file and the command that rebuilds it (or use retrain=True).
    Unknown names raise ValueError listing the known ones (:func:`list_artifacts`).
    """
    _spec(name)
    p = get_preset(preset)
    if not retrain and artifact_dir(name, p, root).is_dir():
        return load_artifact(name, p, device=device, root=root)
    return build_artifact(name, p, device=device, progress=progress, resume=not retrain, root=root)


def reevaluate_artifact(name: str, preset: str | Preset | None = None, *,
                        device: str | torch.device | None = None, root: str | os.PathLike | None = None,
                        steps: int | None = None) -> Artifact:
    """Evaluate the cached artifact ``name`` again with the evaluation settings ``preset`` gives now
    (e.g. more samples or other guidance scales; the weights are not touched) and rewrite its
    ``metrics.json`` atomically. What training recorded (``train_time_s``, ``params``, ``steps``,
    ``device``, ``command``) is kept; ``evaluated_by`` records this evaluation's command. The
    artifact must match ``preset`` (and ``steps``, if it was trained with another step count; see
    :func:`load_artifact`)."""
    spec = _spec(name)
    p = get_preset(preset)
    dev = get_device(device)
    art = load_artifact(name, p, device=dev, root=root, steps=steps)
    token = _BUILD_ROOT.set(artifact_root(root))
    try:
        metrics: dict[str, Any] = dict(spec.evaluate(art.model, p, dev))
    finally:
        _BUILD_ROOT.reset(token)
    kept = ("train_time_s", "params", "steps", "preset", "device", "command")
    metrics.update({k: art.metrics[k] for k in kept if k in art.metrics})
    metrics["evaluated_by"] = (f"python -m minildm reevaluate {name} --preset {p.name}"
                               + (f" --steps {steps}" if steps is not None else ""))
    tmp = art.path / ".metrics.json.tmp"
    _write_json(tmp, metrics)
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

