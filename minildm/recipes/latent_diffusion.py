"""The shared recipe of every latent diffusion model in minildm (notebooks 03, 04 and 05).

Training an LDM (paper Sec. 3.2–3.3) is the same pipeline whatever the condition:

1. load the frozen first stage (an artifact of its own) and any measuring networks;
2. build the :class:`~minildm.diffusion.ldm.LatentDiffusion` (seeded) and copy the first stage in;
3. compute the scale factor s = 1 / std(z) on training images and encode the training set once
   into latents z = s · E(x) with their conditions y (:class:`~minildm.engine.batches.LatentBatches`);
4. train ε_θ (and τ_θ) with EMA weights, resuming exactly from a checkpoint;
5. copy the EMA weights into the model.

:class:`LatentDiffusionRecipe.train` runs it once. A recipe subclass says only what differs: its
identity (model config and training recipe), the latents and conditions it trains on
(:meth:`~LatentDiffusionRecipe.latent_batches`), its evaluation, and optionally its training schedule
(:meth:`~LatentDiffusionRecipe.trainer_settings`), callbacks and the run facts they measure
(:meth:`~LatentDiffusionRecipe.add_callbacks`), or a fit loop of its own (:meth:`~LatentDiffusionRecipe.fit`).
A new conditional task is one such subclass plus a ``@register("name")`` line.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..conditioning import build_concat_conditioner, build_conditioner
from ..diffusion.ldm import LatentDiffusion
from ..diffusion.process import GaussianDiffusion
from ..engine.batches import LatentBatches
from ..engine.device import get_device, seed_everything
from ..engine.ema import EMA
from ..engine.tasks import LatentDiffusionTask, lr_schedule
from ..engine.trainer import Trainer
from ..models.unet import UNetConfig, UNetModel
from .autoencoder import model_from_config
from .presets import Preset
from .registry import TrainResult, warm_start
from .store import load_or_train, resume_config

__all__ = ["LatentDiffusionRecipe", "build_latent_diffusion", "latent_channels"]


def latent_channels(first_stage_identity: Mapping[str, Any]) -> int:
    """Channels c of the latent z (c, H/f, W/f) of a first-stage artifact's identity (3 for pixel space)."""
    m = first_stage_identity["model"]
    return int(m.get("embed_dim") or m.get("in_channels"))


def schedule_ends(linear_start: float | None, linear_end: float | None) -> dict[str, float]:
    """The identity's ``diffusion`` entries for β_1 and β_T: none when both are the schedule's defaults, so
    that identities made before a preset named them stay the same."""
    ends = {"linear_start": linear_start, "linear_end": linear_end}
    return {k: v for k, v in ends.items() if v is not None}


def build_latent_diffusion(identity: Mapping[str, Any]) -> LatentDiffusion:
    """An untrained :class:`~minildm.diffusion.ldm.LatentDiffusion` from an LDM artifact's identity:
    ``model`` holds ``first_stage`` (the first stage artifact's identity), ``unet`` (a
    :class:`~minildm.models.unet.UNetConfig` dict), ``diffusion`` (schedule, T, parameterization and,
    optionally, β_1 and β_T as ``linear_start`` / ``linear_end``),
    ``image_size`` and, for a conditional model, ``cond_stage`` (a conditioner config), for a "concat"
    model ``concat_stage`` (a :mod:`~minildm.conditioning.concat` config; notebook 06)."""
    m = identity["model"]
    fs = m["first_stage"]
    first_stage = model_from_config(fs["model_class"], fs["model"])
    d = m["diffusion"]
    diffusion = GaussianDiffusion(d["schedule"], d["num_timesteps"], d["parameterization"],
                                  linear_start=d.get("linear_start"), linear_end=d.get("linear_end"))
    cond_stage = build_conditioner(m["cond_stage"]) if m.get("cond_stage") else None
    concat_stage = build_concat_conditioner(m["concat_stage"]) if m.get("concat_stage") else None
    key = ("hybrid" if cond_stage is not None else "concat") if concat_stage is not None else "crossattn"
    return LatentDiffusion(first_stage, UNetModel(UNetConfig.from_dict(m["unet"])), diffusion, m["image_size"],
                           cond_stage_model=cond_stage, conditioning_key=key, concat_stage_model=concat_stage)


class LatentDiffusionRecipe(ABC):
    """Base of the LDM artifact specs (:class:`~minildm.recipes.registry.ArtifactSpec`).

    A subclass sets ``name`` and ``description`` and gives ``identity``, ``command``, ``evaluate``,
    :meth:`first_stage_name` and :meth:`latent_batches`; the identity's ``recipe`` holds at least
    ``batch_size``, ``lr``, ``ema_decay``, ``seed`` and ``steps`` (or a subclass's own schedule).
    """

    name: str
    description: str

    # ------------------------------------------------------------------ what a subclass gives
    @abstractmethod
    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        """The artifact's config.json: ``model`` (see :func:`build_latent_diffusion`), ``recipe``, ``preset``."""

    @abstractmethod
    def command(self, preset: Preset, steps: int | None = None) -> str:
        """The CLI command that rebuilds the artifact."""

    @abstractmethod
    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        """The artifact's metrics."""

    @abstractmethod
    def first_stage_name(self, preset: Preset) -> str:
        """The first-stage artifact this model is trained on."""

    @abstractmethod
    def latent_batches(self, ldm: LatentDiffusion, preset: Preset, recipe: Mapping[str, Any],
                       progress: bool) -> LatentBatches:
        """Compute ``ldm``'s scale factor on training images and encode the training set (with its
        conditions) into :class:`~minildm.engine.batches.LatentBatches`."""

    # ------------------------------------------------------------------ what a subclass may change
    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return build_latent_diffusion(identity)

    def dependencies(self, preset: Preset, device: torch.device, progress: bool) -> dict[str, nn.Module]:
        """The trained networks the run needs: at least ``"first_stage"``."""
        return {"first_stage": load_or_train(self.first_stage_name(preset), preset, device=device,
                                             progress=progress).model}

    def prepare_model(self, ldm: LatentDiffusion, recipe: Mapping[str, Any], **options: Any) -> None:
        """Run options that change how the model computes, not what it is (e.g. gradient checkpointing)."""

    def trained_modules(self, ldm: LatentDiffusion) -> nn.Module:
        """What the optimizer and the EMA see: ε_θ, and τ_θ when there is one (paper Eq. 3), and κ when it has
        weights."""
        concat = ldm.concat_stage_model
        if concat is not None and not any(True for _ in concat.parameters()):
            concat = None
        if ldm.cond_stage_model is None and concat is None:
            return ldm.model
        mods = {"unet": ldm.model}
        if ldm.cond_stage_model is not None:
            mods["cond_stage"] = ldm.cond_stage_model
        if concat is not None:  # a κ with weights (a SpatialRescaler's channel mapper)
            mods["concat_stage"] = concat
        return nn.ModuleDict(mods)

    def task(self, ldm: LatentDiffusion, recipe: Mapping[str, Any]) -> LatentDiffusionTask:
        """The training objective: the LDM loss with the recipe's conditioning dropout, loss weighting
        and learning-rate schedule."""
        return LatentDiffusionTask(ldm, recipe["lr"], p_uncond=recipe.get("p_uncond", 0.1),
                                   snr_gamma=recipe.get("snr_gamma"),
                                   loss_weighting=recipe.get("loss_weighting", "min_snr"), **lr_schedule(recipe))

    def trainer_settings(self, preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None,
                         **options: Any) -> dict[str, Any]:
        """Keyword arguments of the :class:`~minildm.engine.trainer.Trainer` that depend on the recipe
        (``options``: the run options and the training ``device``)."""
        return {"max_steps": recipe["steps"], "log_every": 10,
                "checkpoint_every": max(100, recipe["steps"] // 10) if out_dir is not None else None}

    def add_callbacks(self, trainer: Trainer, ldm: LatentDiffusion, ema: EMA, deps: Mapping[str, nn.Module],
                      preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None) -> dict[str, Any]:
        """Add measuring callbacks to ``trainer``; return the run facts the artifact's metrics keep."""
        return {}

    def fit(self, trainer: Trainer, ldm: LatentDiffusion, ema: EMA, deps: Mapping[str, nn.Module],
            preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None) -> None:
        """Train to the end of the schedule."""
        trainer.fit()

    # ------------------------------------------------------------------ the pipeline, once
    def train(self, preset: Preset, *, steps: int | None, device: Any, out_dir: Path | None, resume: bool,
              progress: bool, init_state: Mapping[str, torch.Tensor] | None = None, **options: Any) -> TrainResult:
        """Steps 1–5 of the module docstring; ``options`` are run options (see the subclass)."""
        identity = self.identity(preset, steps)
        recipe = identity["recipe"]
        dev = get_device(device)
        deps = self.dependencies(preset, dev, progress)
        seed_everything(preset.seed)
        ldm = self.build_model(identity)
        ldm.first_stage_model.load_state_dict(deps["first_stage"].state_dict())
        warmup = warm_start(ldm, init_state)
        ldm.to(dev)
        self.prepare_model(ldm, recipe, **options)
        data = self.latent_batches(ldm, preset, recipe, progress)
        trained = self.trained_modules(ldm)
        ema = EMA(trained, decay=recipe["ema_decay"])
        settings = self.trainer_settings(preset, recipe, out_dir, device=dev, **options)
        settings.setdefault("desc", f"{self.name} ({preset.name})")
        settings.setdefault("warmup_steps", warmup)
        trainer = Trainer(self.task(ldm, recipe), data, device=dev, seed=recipe["seed"], out_dir=out_dir,
                          grad_clip=1.0, progress=progress, config=resume_config(identity), callbacks=[ema],
                          **settings)
        facts = self.add_callbacks(trainer, ldm, ema, deps, preset, recipe, out_dir)
        trainer.resume_if_present(resume)
        self.fit(trainer, ldm, ema, deps, preset, recipe, out_dir)
        ema.copy_to(trained)
        return TrainResult(ldm.eval(), trainer.log, trainer.elapsed_s, {"steps": trainer.step, **facts})
