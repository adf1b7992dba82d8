"""The first-stage recipe (notebook 01, ``python -m minildm train-ae``): artifacts ``ae-{kl,vq}-{variant}``.

The training recipe of the first stage (paper Sec. 3.1; CompVis ``autoencoder_kl_*`` /
``vq-f*`` configs) is :func:`train_autoencoder`, shared by the CLI
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

from abc import ABC, abstractmethod

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.device import seed_everything
from .presets import Preset, get_preset
from .registry import TrainResult, register, warm_start
from .store import check_choice, check_steps, resume_config

__all__ = ["REGULARIZERS", "VARIANTS", "AutoencoderSpec", "DerivedAutoencoderSpec", "autoencoder_model_config", "autoencoder_recipe", "build_autoencoder", "model_from_config", "train_autoencoder"]

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


def autoencoder_recipe(variant: str, regularizer: str, preset: str | Preset | None = None,
                       steps: int | None = None, data: str = "shapes") -> dict[str, Any]:
    """Every hyperparameter of a first-stage run, as JSON (stored with checkpoints and artifacts).

    ``data`` names the training dataset (:func:`minildm.data.load_dataset`), shapes by default."""
    check_choice("variant", variant, VARIANTS)
    check_choice("regularizer", regularizer, REGULARIZERS)
    check_steps(steps)
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


def autoencoder_model_config(regularizer: str, preset: Preset, overrides: Mapping[str, Any] | None = None):

    values: dict[str, Any] = dict(embed_dim=preset.ae.z_channels)
    if regularizer == "kl":
        values.update(double_z=True, n_embed=None)
    else:
        values.update(double_z=False, beta=_VQ_BETA)
    values.update(overrides or {})
    return preset.ae.model_config(**values)


def model_from_config(model_class: str, config: Mapping[str, Any]) -> nn.Module:
    """An untrained first stage from an artifact's ``model_class`` and ``model`` config:
    ``AutoencoderKL``, ``VQModel`` or ``IdentityFirstStage`` (pixel space, f = 1)."""
    from ..models.autoencoder import AutoencoderKL, IdentityConfig, IdentityFirstStage, VQModel
    from ..models.encoder_decoder import AutoencoderConfig

    classes = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel, "IdentityFirstStage": IdentityFirstStage}
    check_choice("model class", model_class, classes)
    if model_class == "IdentityFirstStage":
        return IdentityFirstStage(IdentityConfig.from_dict(config))
    return classes[model_class](AutoencoderConfig.from_dict(config))


def _loss_from_recipe(recipe: Mapping[str, Any]) -> nn.Module:
    from ..losses.perceptual import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator

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
    config = autoencoder_model_config(regularizer, p, model_overrides)
    seed_everything(p.seed)
    model = model_from_config("AutoencoderKL" if regularizer == "kl" else "VQModel", config.to_dict())
    return model, _loss_from_recipe(recipe)


def _train_data(recipe: Mapping[str, Any]):
    from ..data import collate, load_dataset
    from ..engine.batches import DatasetBatches

    d = recipe["data"]
    dataset = load_dataset(d["name"], d["split"], d["image_size"], length=d["length"], seed=d["seed"])
    return DatasetBatches(dataset, recipe["batch_size"], seed=recipe["seed"], collate_fn=collate)


def _run_autoencoder(variant: str, regularizer: str, preset: Preset, *, steps: int | None,
                     device: str | torch.device | None, out_dir: str | os.PathLike | None, resume: bool,
                     progress: bool, model_overrides: Mapping[str, Any] | None = None, desc: str | None = None,
                     data: str = "shapes", init_state: Mapping[str, torch.Tensor] | None = None,
                     decoder_only: bool = False):
    from ..engine.tasks import AutoencoderTask
    from ..engine.trainer import Trainer

    recipe = autoencoder_recipe(variant, regularizer, preset, steps, data)
    model, loss = build_autoencoder(variant, regularizer, preset, model_overrides)
    identity = _identity(model, recipe, preset)
    warmup = warm_start(model, init_state)
    if decoder_only:
        if init_state is None:
            raise ValueError("training the decoder only continues a trained first stage: give --init-from "
                             "(shipped or a path)")
        model.freeze_encoder()
    task = AutoencoderTask(model, loss, lr=recipe["lr"], betas=tuple(recipe["betas"]))
    steps_total = recipe["steps"]
    checkpoint_every = max(50, steps_total // 10) if out_dir is not None else None
    trainer = Trainer(task, _train_data(recipe), device=device, max_steps=steps_total, seed=recipe["seed"],
                      out_dir=out_dir, checkpoint_every=checkpoint_every, grad_clip=recipe["grad_clip"],
                      progress=progress, desc=desc, config=resume_config(identity), warmup_steps=warmup)
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (where the checkpoint is)")
    trainer.resume_if_present(resume)
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
        preset: preset name or :class:`~minildm.recipes.presets.Preset` (sizes, steps, lr, data size).
        steps: override the preset's step count.
        device: where to train (default :func:`minildm.engine.device.get_device`).
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


@register("ae-kl-l2", name="ae-kl-l2", variant="l2", regularizer="kl")
@register("ae-kl-l1-lpips", name="ae-kl-l1-lpips", variant="l1-lpips", regularizer="kl")
@register("ae-kl-l1-lpips-gan", name="ae-kl-l1-lpips-gan", variant="l1-lpips-gan", regularizer="kl")
@register("ae-vq-l2", name="ae-vq-l2", variant="l2", regularizer="vq")
@register("ae-vq-l1-lpips", name="ae-vq-l1-lpips", variant="l1-lpips", regularizer="vq")
@register("ae-vq-l1-lpips-gan", name="ae-vq-l1-lpips-gan", variant="l1-lpips-gan", regularizer="vq")
@dataclass(frozen=True)
class AutoencoderSpec:
    """A named first-stage artifact: a (variant, regularizer) recipe, optionally with changed
    model sizes (``model_overrides``, e.g. another ``ch_mult`` for the f ablation)."""

    name: str
    variant: str
    regularizer: str
    description: str = ""
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    cli: str = "train-ae --preset {preset} --variant {variant} --regularizer {regularizer}"
    data: str = "shapes"

    def __post_init__(self) -> None:
        if not self.description:
            losses = {"l2": "pixel L2 only (blurry baseline)", "l1-lpips": "L1 + LPIPS perceptual loss",
                      "l1-lpips-gan": "L1 + LPIPS + PatchGAN (the paper's first stage)"}
            regularizers = {"kl": "KL-regularised (AutoencoderKL)", "vq": "VQ-regularised (VQModel)"}
            object.__setattr__(self, "description", f"{regularizers.get(self.regularizer, self.regularizer)}, "
                                                    f"{losses.get(self.variant, self.variant)}, f from the preset")

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        """The config.json content (without version info) this spec produces under ``preset``."""
        config = autoencoder_model_config(self.regularizer, preset, self.model_overrides)
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
            return (f"python -c \"from minildm.recipes.store import load_or_train; from minildm.recipes.presets import "
                    f"get_preset; load_or_train({self.name!r}, get_preset({preset.name!r}).with_ae({sizes}), "
                    f"retrain=True)\"")
        cmd = "python -m minildm " + self.cli.format(preset=preset.name, variant=self.variant,
                                                     regularizer=self.regularizer, name=self.name)
        if steps != base.ae.steps:
            cmd += f" --steps {steps}"
        return cmd

    def train(self, preset: Preset, *, steps: int | None, device: Any, out_dir: Path | None, resume: bool,
              progress: bool, init_state: Mapping[str, torch.Tensor] | None = None,
              decoder_only: bool = False) -> TrainResult:
        """Train under ``preset``; ``decoder_only`` (with ``init_state``): the encoder stays frozen
        (:meth:`~minildm.models.autoencoder.AutoencoderKL.freeze_encoder`) and the run records it."""
        model, _, trainer, _ = _run_autoencoder(
            self.variant, self.regularizer, preset, steps=steps, device=device, out_dir=out_dir,
            resume=resume, progress=progress, model_overrides=self.model_overrides,
            desc=f"{self.name} ({preset.name})", data=self.data, init_state=init_state, decoder_only=decoder_only)
        return TrainResult(model, trainer.log, trainer.elapsed_s,
                           {"trained": "decoder only (encoder frozen)"} if decoder_only else {})

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return model_from_config(identity["model_class"], identity["model"])

    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, float]:
        from ..data import load_dataset
        from ..eval.metrics import evaluate_reconstruction

        ae = preset.ae
        val = load_dataset(self.data, "val", ae.image_size, length=ae.n_eval, seed=preset.seed)
        return evaluate_reconstruction(model, val, n=ae.n_eval, batch_size=ae.batch_size, device=device,
                                       lpips_net=_EVAL_LPIPS_NET)


class DerivedAutoencoderSpec(ABC):
    """A first-stage artifact made by the autoencoder recipe with other sizes or data: the ablation's
    ``ae-kl-f{f}`` (notebook 02), the conditional models' ``kl-f{f}`` (notebooks 04, 05) and
    ``ae-kl-fashion`` (notebook 03). A subclass names the :class:`AutoencoderSpec` it runs
    (:meth:`autoencoder_spec`) and the preset whose ``ae`` sizes it runs under (:meth:`recipe_preset`)."""

    name: str
    description: str

    @abstractmethod
    def autoencoder_spec(self, preset: Preset) -> AutoencoderSpec:
        """The recipe: variant, regularizer, model overrides, data."""

    @abstractmethod
    def recipe_preset(self, preset: Preset) -> Preset:
        """``preset`` with the autoencoder sizes (image size, steps, lr, ...) of this artifact."""

    @abstractmethod
    def command(self, preset: Preset, steps: int | None = None) -> str:
        """The CLI command that rebuilds the artifact."""

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        return self.autoencoder_spec(preset).identity(self.recipe_preset(preset), steps)

    def train(self, preset: Preset, *, steps: int | None, device: Any, out_dir: Path | None, resume: bool,
              progress: bool, init_state: Mapping[str, torch.Tensor] | None = None,
              decoder_only: bool = False) -> TrainResult:
        return self.autoencoder_spec(preset).train(self.recipe_preset(preset), steps=steps, device=device,
                                                   out_dir=out_dir, resume=resume, progress=progress,
                                                   init_state=init_state, decoder_only=decoder_only)

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return model_from_config(identity["model_class"], identity["model"])

    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        return dict(self.autoencoder_spec(preset).evaluate(model, self.recipe_preset(preset), device))
