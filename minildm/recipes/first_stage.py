"""The first stage of the conditional LDMs: artifact ``kl-f{f}`` (notebooks 04 and 05).

Notebook 02 trains one autoencoder per downsampling factor, briefly, to compare them. A model that
must draw *content* (a hexagon, not a roundish blob) needs a first stage that keeps it: the LDM
generates latents z and the decoder D draws them, so D(E(x)) bounds what any LDM on it can show
(:func:`minildm.eval.checker.reconstruction_ceiling`). ``kl-f{f}`` is the same architecture for that f
(``ch_mult`` from the ablation), trained by the recipe of :class:`~minildm.recipes.presets.FirstStagePreset`
(CompVis names its pretrained first stages ``kl-f4``, ``kl-f8``, ...).

Build it with ``python -m minildm train-first-stage --preset cpu`` (or ``load_or_train("kl-f4")``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .presets import Preset
from .registry import register
from ..models.encoder_decoder import AutoencoderConfig, check_downsampling_factor
from .autoencoder import AutoencoderSpec, DerivedAutoencoderSpec

__all__ = ["first_stage_name", "first_stage_preset", "FirstStageSpec"]

#: downsampling factors with a ``kl-f{f}`` artifact
FACTORS = (2, 4, 8, 16, 32)


def first_stage_name(f: int) -> str:
    """Artifact name of the conditional LDMs' first stage for factor ``f``: ``kl-f{f}``."""
    return f"kl-f{f}"


def first_stage_preset(preset: Preset) -> Preset:
    """``preset`` with the autoencoder sizes of :class:`~minildm.recipes.presets.FirstStagePreset`."""
    fs = preset.first_stage
    return preset.with_ae(image_size=fs.image_size, steps=fs.steps, batch_size=fs.batch_size, lr=fs.lr)


@register("kl-f2", f=2)
@register("kl-f4", f=4)
@register("kl-f8", f=8)
@register("kl-f16", f=16)
@register("kl-f32", f=32)
@dataclass(frozen=True)
class FirstStageSpec(DerivedAutoencoderSpec):
    """Artifact ``kl-f{f}`` (the artifact-spec interface of :mod:`minildm.recipes.registry`)."""

    f: int

    @property
    def name(self) -> str:
        return first_stage_name(self.f)

    @property
    def description(self) -> str:
        return f"first stage of the conditional LDMs: KL autoencoder, f = {self.f}"

    def autoencoder_spec(self, preset: Preset) -> AutoencoderSpec:
        check_downsampling_factor(self.f)
        z = preset.first_stage.z_channels
        return AutoencoderSpec(self.name, preset.first_stage.variant, "kl", self.description,
                               model_overrides={"ch_mult": AutoencoderConfig.for_factor(self.f).ch_mult,
                                                "z_channels": z, "embed_dim": z})

    def recipe_preset(self, preset: Preset) -> Preset:
        return first_stage_preset(preset)

    def command(self, preset: Preset, steps: int | None = None) -> str:
        return (f"python -m minildm train-first-stage --preset {preset.name} --f {self.f}"
                + (f" --steps {steps}" if steps is not None else ""))

    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        """Reconstruction metrics on validation images and, as ``ceiling``, the content checker's
        accuracy on the reconstructions: what the LDMs on this first stage can at best be credited."""
        from ..data import load_dataset
        from ..eval.checker import reconstruction_ceiling
        from .store import load_or_train

        p = first_stage_preset(preset)
        metrics = super().evaluate(model, preset, device)
        checker = load_or_train("checker", preset, device=device).model
        val = load_dataset("shapes", "val", p.ae.image_size, length=p.ae.n_eval, seed=preset.seed)
        metrics["ceiling"] = reconstruction_ceiling(checker, model.to(device), val, p.ae.n_eval)
        return metrics


def photo_first_stage_name(f: int) -> str:
    """Artifact name of the first stage of notebook 06's super-resolution and inpainting models: ``kl-f{f}-photos``."""
    return f"kl-f{f}-photos"


@register("kl-f4-photos", f=4)
@dataclass(frozen=True)
class PhotoFirstStageSpec(DerivedAutoencoderSpec):
    """Artifact ``kl-f{f}-photos``: ``kl-f{f}`` trained ``preset.i2i.photo_first_stage_steps`` more steps on
    ``shapes+photos`` (scenes and photo crops alternating). ``kl-f{f}`` has seen only the flat colours of
    the shapes data: it redraws a photo crop as flat patches, which bounds any super-resolution or
    inpainting model on it (notebook 06 shows both first stages on the same photos)."""

    f: int

    @property
    def name(self) -> str:
        return photo_first_stage_name(self.f)

    @property
    def description(self) -> str:
        return f"first stage of the image-to-image LDMs: kl-f{self.f} trained further on shapes and photo crops"

    def autoencoder_spec(self, preset: Preset) -> AutoencoderSpec:
        base = FirstStageSpec(self.f).autoencoder_spec(preset)
        return AutoencoderSpec(self.name, base.variant, "kl", self.description, model_overrides=base.model_overrides,
                               data="shapes+photos")

    def recipe_preset(self, preset: Preset) -> Preset:
        return first_stage_preset(preset).with_ae(steps=preset.i2i.photo_first_stage_steps)

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        identity = super().identity(preset, steps)
        identity["recipe"]["init"] = first_stage_name(self.f)  # continues kl-f{f}
        return identity

    def command(self, preset: Preset, steps: int | None = None) -> str:
        return (f"python -m minildm train-first-stage --preset {preset.name} --f {self.f} --data shapes+photos"
                + (f" --steps {steps}" if steps is not None else ""))

    def train(self, preset: Preset, *, steps: int | None, device: Any, out_dir: Any, resume: bool,
              progress: bool, init_state: Any = None, decoder_only: bool = False) -> Any:
        """Continue ``kl-f{f}`` (its cached or shipped weights, trained if neither exists) unless ``init_state``
        gives other weights."""
        from .store import load_or_train

        if init_state is None:
            init_state = load_or_train(first_stage_name(self.f), preset, device=device, progress=progress).model.state_dict()
        return super().train(preset, steps=steps, device=device, out_dir=out_dir, resume=resume, progress=progress,
                             init_state=init_state, decoder_only=decoder_only)

    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        """Reconstruction on each half of the validation split (``shapes`` and ``photos``) and the checker's
        ceiling on the shapes reconstructions."""
        from ..data import load_dataset
        from ..eval.checker import reconstruction_ceiling
        from ..eval.metrics import evaluate_reconstruction
        from .store import load_or_train

        p = self.recipe_preset(preset)
        n, size = p.ae.n_eval, p.ae.image_size
        metrics: dict[str, Any] = {}
        for domain in ("shapes", "photos"):
            val = load_dataset(domain, "val", size, length=n, seed=preset.seed)
            metrics[domain] = evaluate_reconstruction(model.to(device), val, n, 32, device=device,
                                                      lpips_net=p.ae.lpips_net)
        checker = load_or_train("checker", preset, device=device).model
        val = load_dataset("shapes", "val", size, length=n, seed=preset.seed)
        metrics["ceiling"] = reconstruction_ceiling(checker, model.to(device), val, n)
        metrics["n"] = n
        return metrics
