"""The first stage of the conditional and text-to-image LDMs (notebooks 04 and 05).

Notebook 02 trains one autoencoder per f with a single, deliberately small recipe, so that the
f ablation is a fair comparison. Notebook 04 measured what that recipe costs the later models:
its f = 4 autoencoder turns small triangles, stars and crosses into round blobs, and the content
checker reads the main object's shape right on only ~74 % of its reconstructions D(E(x)) (against
99.6 % on the originals). An LDM draws only what D can draw, so this is a ceiling on the accuracy of
every model built on it (:func:`minildm.checker.reconstruction_ceiling`).

So the conditional models get their own f = 4 KL autoencoder, artifact ``ae-kl-f4-cond``: the
same architecture and loss (the ablation's recipe, L1 + LPIPS in the smoke and cpu presets), with
the sizes of :class:`~minildm.presets.CondFirstStagePreset`. In the cpu preset that is 4 latent
channels instead of 3 and 2500 steps at lr 8e-4 instead of 1000 at 3e-4 (same width, 0.68 M
parameters): PSNR 24.2 instead of 21.9 dB, LPIPS 0.060 instead of 0.130, and the checker reads the
main shape right on 88.7 % of its reconstructions instead of 73.6 %. (A 24-wide model trained 2000
steps measured the same, 88.3 %, at 2.2× the parameters.) What it still loses are the corners of
the smallest shapes (10–15 px hexagons and stars come back round): at f = 4 such a shape spans
3–4 latent positions. Where a preset has no such section (``gpu``: its ablation autoencoders are
already full size), the LDMs use the ablation's ``ae-kl-f{f}``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .presets import Preset, get_preset

__all__ = ["COND_FIRST_STAGE", "ConditionalFirstStageSpec", "conditional_first_stage", "first_stage_preset"]

#: artifact name of the conditional models' own first stage
COND_FIRST_STAGE = "ae-kl-f4-cond"


def conditional_first_stage(preset: str | Preset | None, f: int) -> str:
    """Artifact name of the first stage an LDM of notebook 04/05 with factor ``f`` encodes with:
    ``ae-kl-f4-cond`` when the preset defines it for this ``f``, else the ablation's ``ae-kl-f{f}``."""
    from .ablation import ablation_name

    p = get_preset(preset)
    fs = p.cond_first_stage
    return COND_FIRST_STAGE if fs is not None and fs.f == f else ablation_name(f)


def first_stage_preset(preset: str | Preset | None) -> Preset:
    """``preset`` with the autoencoder sizes of ``ae-kl-f4-cond``: the ablation's image size and
    recipe, with the width, learning rate and step count of ``preset.cond_first_stage``."""
    from .ablation import ablation_preset

    p = get_preset(preset)
    fs = p.cond_first_stage
    if fs is None:
        raise ValueError(f"preset {p.name!r} has no separate first stage for the conditional models "
                         f"(they use the ablation's ae-kl-f{{f}}); {COND_FIRST_STAGE} is defined in "
                         "the smoke and cpu presets")
    return ablation_preset(p).with_ae(ch=fs.ch, lr=fs.lr, steps=fs.steps)


class ConditionalFirstStageSpec:
    """Artifact ``ae-kl-f4-cond`` (the artifact-spec interface of :mod:`minildm.artifacts`): an
    :class:`~minildm.autoencoder.AutoencoderKL` with f = 4, ``z_channels`` latent channels and the
    ablation's loss, trained with the sizes of :func:`first_stage_preset`."""

    name = COND_FIRST_STAGE
    description = ("f = 4 KL autoencoder of the conditional and text-to-image LDMs: wider, with more latent "
                   "channels and trained longer than the ablation's, so that small shapes keep their corners")

    def _autoencoder_spec(self, preset: Preset):
        from .artifacts import AutoencoderSpec
        from .autoencoder import AutoencoderConfig

        fs = preset.cond_first_stage
        assert fs is not None
        z = fs.z_channels
        return AutoencoderSpec(self.name, preset.ablation.variant, "kl", self.description,
                               model_overrides={"ch_mult": AutoencoderConfig.for_factor(fs.f).ch_mult,
                                                "z_channels": z, "embed_dim": z})

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        fp = first_stage_preset(preset)
        return self._autoencoder_spec(preset).identity(fp, steps)

    def command(self, preset: Preset, steps: int | None = None) -> str:
        return (f"python -m minildm train-cond --preset {preset.name} --first-stage-only"
                + (f" --steps {steps}" if steps is not None else ""))

    def train(self, preset: Preset, *, steps: int | None, device: Any, out_dir: Path | None, resume: bool,
              progress: bool) -> tuple[nn.Module, list[dict[str, Any]], float]:
        fp = first_stage_preset(preset)
        return self._autoencoder_spec(preset).train(fp, steps=steps, device=device, out_dir=out_dir,
                                                    resume=resume, progress=progress)

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        from .artifacts import _model_from_config

        return _model_from_config(identity["model_class"], identity["model"])

    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        from .ablation import evaluate_first_stage

        return evaluate_first_stage(model, first_stage_preset(preset), device)
