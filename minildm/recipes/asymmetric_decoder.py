"""Artifact ``kl-f4-photos-asym``: the asymmetric decoder of notebook 06's inpainting model
(:mod:`minildm.models.asymmetric_decoder`, after Zhu et al. 2023).

It continues the decoder of ``kl-f4-photos`` (the first stage of ``ldm-inpaint``) with the masked-image
branch added; the encoder stays frozen, so the latent space the LDM samples in does not change. Each step
draws a new hole per image (:func:`~minildm.data.degradations.random_holes`: boxes, strokes, large masks,
as ``ldm-inpaint`` trains) and fits what inpainting returns, the composite m ⊙ D(E(x); x ⊙ (1 − m), m) +
(1 − m) ⊙ x, to x: L1 over the hole's pixels plus LPIPS of the composite (the first stage's losses without
the adversarial term). The latents get Gaussian noise of a standard deviation drawn per image from
[0, ``latent_noise``] × std(z), since the LDM's sampled latents differ from E(x) even where no hole is, and the
decoder should then believe the known pixels. Measured: LPIPS of the composited reconstruction with the plain and with the
asymmetric decoder on the inpainting evaluation's images and holes, per domain.

``python -m minildm train-first-stage --asymmetric --preset cpu`` (or ``load_or_train("kl-f4-photos-asym")``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_number
from ..data.degradations import random_holes
from ..losses.lpips import get_lpips
from ..models.asymmetric_decoder import AsymmetricDecoderKL
from .presets import Preset
from .registry import TrainResult, get_spec, register
from .supervised import SupervisedArtifact

__all__ = ["AsymmetricDecoderSpec", "AsymmetricDecoderTask", "ASYMMETRIC_DECODER"]

#: the artifact's name (it pairs with ``kl-f4-photos``)
ASYMMETRIC_DECODER = "kl-f4-photos-asym"
FIRST_STAGE = "kl-f4-photos"


class AsymmetricDecoderTask:
    """Fit the asymmetric decoder (see the module docstring). The frozen ``encoder`` (the first stage whose
    decoder it continues) gives z = E(x), the posterior's mode; holes are a pure function of (seed, step),
    so a resumed run draws the same ones."""

    optimizer_names = ("decoder",)
    progress_keys = ("train/loss",)

    def __init__(self, decoder: AsymmetricDecoderKL, encoder: nn.Module, lr: float, lpips_net: str,
                 seed: int, latent_noise: float = 0.0) -> None:
        check_number("lr", lr, minimum=0, strict=True)
        check_number("latent_noise", latent_noise, minimum=0)
        self.decoder, self.encoder, self.lr, self.seed = decoder, encoder.eval().requires_grad_(False), float(lr), seed
        self.latent_noise = float(latent_noise)
        self.lpips = get_lpips(lpips_net)

    def modules(self) -> dict[str, nn.Module]:
        return {"decoder": self.decoder}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"decoder": torch.optim.Adam(self.decoder.parameters(), lr=self.lr, betas=(0.5, 0.9))}

    def training_step(self, batch: Any, step: int, name: str) -> tuple[Tensor, dict[str, Any]]:
        x = batch["image"]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        holes = random_holes(len(x), x.shape[-1], generator=g).to(x.device)
        self.encoder.to(x.device)
        self.lpips.to(x.device)
        with torch.no_grad():
            z = self.encoder.encode(x).mode()
            if self.latent_noise > 0:
                sigma = torch.rand(len(z), 1, 1, 1, generator=g) * self.latent_noise * z.std().cpu()
                z = z + sigma.to(z.device) * torch.randn(z.shape, generator=g).to(z.device)
        out = self.decoder.decode(z, x * (1 - holes), holes)
        composite = holes * out + (1 - holes) * x
        l1 = (holes * (out - x).abs()).sum() / (holes.sum() * x.shape[1]).clamp_min(1)
        perceptual = self.lpips(composite, x).mean()
        loss = l1 + perceptual
        return loss, {"train/loss": loss.detach(), "train/l1_hole": l1.detach(), "train/lpips": perceptual.detach()}


@register(ASYMMETRIC_DECODER)
class AsymmetricDecoderSpec(SupervisedArtifact):
    """Artifact ``kl-f4-photos-asym`` (the artifact-spec interface of :mod:`minildm.recipes.registry`);
    sizes from :class:`~minildm.recipes.preset_sections.I2IPreset` (``asym_*``)."""

    name = ASYMMETRIC_DECODER
    description = "asymmetric decoder of kl-f4-photos: sees the known pixels around an inpainting hole"
    #: the frozen first stage while :meth:`train` runs (the task's E)
    _encoder: nn.Module | None = None

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        fs = get_spec(FIRST_STAGE).identity(preset)
        ip, ae = preset.i2i, fs["recipe"]
        return {"model_class": "AsymmetricDecoderKL", "model": dict(fs["model"]),
                "recipe": {"kind": self.name, "init": FIRST_STAGE, "lr": ip.asym_lr, "batch_size": ip.asym_batch_size,
                           "steps": steps if steps is not None else ip.asym_steps, "seed": preset.seed,
                           "lpips_net": ae["lpips_net"], "loss": "l1 (hole) + lpips (composite)",
                           "latent_noise": ip.asym_latent_noise,
                           "data": {**ae["data"], "split": "train"}},
                "preset": preset.name}

    def command(self, preset: Preset, steps: int | None = None) -> str:
        return (f"python -m minildm train-first-stage --asymmetric --preset {preset.name}"
                + (f" --steps {steps}" if steps is not None else ""))

    def build_model(self, identity: Mapping[str, Any]) -> nn.Module:
        return AsymmetricDecoderKL.from_config(identity["model"])

    def task(self, net: nn.Module, recipe: Mapping[str, Any]) -> AsymmetricDecoderTask:
        if self._encoder is None:
            raise RuntimeError("the task needs the first stage's encoder: call train()")
        return AsymmetricDecoderTask(net, self._encoder, recipe["lr"], recipe["lpips_net"], recipe["seed"],
                                     recipe.get("latent_noise", 0.0))

    def train(self, preset: Any, *, steps: int | None, device: Any, out_dir: Any, resume: bool,
              progress: bool, init_state: Mapping[str, Any] | None = None) -> TrainResult:
        """Start from ``kl-f4-photos``'s decoder (cached, shipped or trained) unless ``init_state`` is given."""
        from .store import load_or_train

        first_stage = load_or_train(FIRST_STAGE, preset, device=device, progress=progress).model
        if init_state is None:
            keep = ("post_quant_conv.", "decoder.")
            init_state = {k: v for k, v in first_stage.state_dict().items() if k.startswith(keep)}
            fresh = self.build_model(self.identity(preset, steps)).state_dict()
            init_state = {**fresh, **init_state}  # the branch and its zero fusions start fresh
        self._encoder = first_stage
        try:
            return super().train(preset, steps=steps, device=device, out_dir=out_dir, resume=resume,
                                 progress=progress, init_state=init_state)
        finally:
            self._encoder = None

    @torch.no_grad()
    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        """LPIPS of the composited reconstruction m ⊙ D(E(x)) + (1 − m) ⊙ x on the inpainting evaluation's
        images and holes, plain decoder vs asymmetric decoder, all and per domain (the floor that the first
        stage sets for any inpainting LDM on it)."""
        from ..eval.metrics import lpips_distance
        from .image_to_image_eval import eval_holes, eval_images
        from .store import load_or_train

        first_stage = load_or_train(FIRST_STAGE, preset, device=device).model.to(device).eval()
        model = model.to(device).eval()
        x, domains, _ = eval_images("inpaint", preset, None, False)
        holes = eval_holes(len(x), x.shape[-1], preset.seed)
        out: dict[str, Any] = {"n": len(x)}
        for name, decode in (("plain", lambda z, xs, hs: first_stage.decode(z).clamp(-1, 1)),
                             ("asymmetric", model.paste)):
            d = []
            for i in range(0, len(x), 32):
                xs, hs = x[i:i + 32].to(device), holes[i:i + 32].to(device)
                rec = decode(first_stage.encode(xs).mode(), xs, hs)
                d.append(lpips_distance(hs * rec + (1 - hs) * xs, xs).cpu())  # composited as inpainting returns
            dist = torch.cat(d)
            out[name] = {"lpips": float(dist.mean()),
                         **{dom: float(dist[[j for j, t in enumerate(domains) if t == dom]].mean())
                            for dom in sorted(set(domains))}}
        return out
