"""Training and measuring latent diffusion models: the artifacts ``ldm-f{f}`` of notebook 03.

The paper's central experiment (Sec. 4.1, Fig. 6–7): train the *same* UNet on the latents of
first stages with f = 1 (pixel space), 2, 4, 8, 16 for the same compute, and compare sample
quality against training time and against sampling throughput. Here each model trains for the
preset's wall-clock budget (``preset.ldm.budget_s``), and at ``eval_points`` evenly spaced times
its EMA weights draw ``n_fid`` DDIM samples whose FID-style score (:mod:`minildm.eval.fid`) against
the validation images is logged. The first stages are the ``ae-kl-f{f}`` artifacts of notebook 02.

Latents are encoded once before training (:class:`LatentBatches`): the first stage is frozen, so
E(x) of a training image never changes, and the diffusion model's step is all that is timed.

``python -m minildm train-ldm --preset cpu --f 4`` builds one model; the notebook builds all.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.batches import LatentBatches
from .presets import Preset
from .registry import register
from ..engine.ema import EMA
from ..engine.tasks import LatentDiffusionTask
from ..engine.trainer import Trainer
from .ablation import ablation_name
from .latent_diffusion import LatentDiffusionRecipe, build_latent_diffusion, latent_channels, schedule_ends
from .store import load_or_train
from ..data import load_images
from .ablation import first_stage_config
from .autoencoder import AutoencoderSpec, DerivedAutoencoderSpec

__all__ = [ "LDMSpec", "FashionAutoencoderSpec", "ldm_name", "build_ldm", "sample_fid",
           "sampling_throughput", "eval_curve", "FASHION_AE", "FASHION_LDM", "FASHION_SIZE"]

#: the Fashion-MNIST first stage and LDM of notebook 03 (28 px images, resized to 32 px, grey as RGB)
FASHION_AE = "ae-kl-fashion"
FASHION_LDM = "ldm-fashion"
FASHION_SIZE = 32


def ldm_name(f: int) -> str:
    """Artifact name of the latent DDPM on first stage ``ae-kl-f{f}``: ``ldm-f{f}``."""
    return f"ldm-f{f}"


@register("ae-kl-fashion")
class FashionAutoencoderSpec(DerivedAutoencoderSpec):
    """Artifact ``ae-kl-fashion``: a KL autoencoder with f = 4, c = 3 on Fashion-MNIST at 32 px, trained
    with the ablation's recipe and step count."""

    name = FASHION_AE
    description = "KL autoencoder f = 4 on Fashion-MNIST (32 px)"

    def autoencoder_spec(self, preset: Preset) -> AutoencoderSpec:
        return AutoencoderSpec(self.name, preset.ablation.variant, "kl", self.description,
                               model_overrides=first_stage_config(4, preset), data="fashion_mnist")

    def recipe_preset(self, preset: Preset) -> Preset:
        return preset.with_ae(image_size=FASHION_SIZE, steps=preset.ablation.steps)

    def command(self, preset: Preset, steps: int | None = None) -> str:
        return f"python -m minildm train-ldm --preset {preset.name} --data fashion_mnist"


def build_ldm(identity: Mapping[str, Any]) -> nn.Module:
    """An (untrained) :class:`~minildm.diffusion.ldm.LatentDiffusion` from an ``ldm-f{f}`` identity."""
    return build_latent_diffusion(identity)


@torch.no_grad()
def sample_fid(ldm: nn.Module, feature_net: nn.Module, real: torch.Tensor, n: int, steps: int,
               seed: int = 0, batch_size: int = 64, progress: bool = False,
               checker: nn.Module | None = None) -> dict[str, float]:
    """Scores of ``n`` DDIM samples (``steps`` steps, η = 0, seeded) against ``real`` images: ``fid`` on the
    features of ``feature_net`` (FD-feat), ``fid_imagenet`` on ImageNet AlexNet features
    (:class:`~minildm.eval.fid.ImageNetFeatures`) and, with a ``checker``, the fractions of samples that show
    an object and a definite shape (``objects``, ``shapes``:
    :func:`~minildm.eval.checker.score_unconditional_samples`); ``images_per_s``: the sampling speed (decoding
    included)."""
    from ..eval.checker import score_unconditional_samples
    from ..eval.fid import extract_features, fid_from_features, get_imagenet_features

    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    samples = torch.cat([ldm.sample(min(batch_size, n - i), steps=steps, generator=g, progress=progress).cpu()
                         for i in range(0, n, batch_size)])
    images_per_s = n / (time.perf_counter() - t0)
    imagenet = get_imagenet_features("alex", next(feature_net.parameters()).device)
    out = {"images_per_s": images_per_s, "fid": fid_from_features(extract_features(feature_net, real[:n]), extract_features(feature_net, samples)),
           "fid_imagenet": fid_from_features(extract_features(imagenet, real[:n]), extract_features(imagenet, samples))}
    if checker is not None:
        out.update(score_unconditional_samples(checker, samples))
    return out


@torch.no_grad()
def sampling_throughput(ldm: nn.Module, n: int, steps: int, repeats: int = 1) -> float:
    """Images per second of DDIM sampling with ``steps`` steps, decoding included (batch of ``n``)."""
    from ..engine.throughput import median_time

    device = ldm.scale_factor.device
    g = torch.Generator().manual_seed(0)
    t = median_time(lambda: ldm.sample(n, steps=steps, generator=g), device, repeats, warmup=0)
    return n / t


def eval_curve(log: list[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The points logged during training: training time, steps, FD-feat and, where measured, the FD on ImageNet
    features and the fractions of samples that show an object and a definite shape."""
    extra = ("fid_imagenet", "objects", "shapes")
    return [{"time_s": r["time_s"], "step": r["step"], "fid": r["eval/fid"],
             **{k: r[f"eval/{k}"] for k in extra if f"eval/{k}" in r}} for r in log if "eval/fid" in r]


@register("ldm-f1", f=1)
@register("ldm-f2", f=2)
@register("ldm-f4", f=4)
@register("ldm-f8", f=8)
@register("ldm-f16", f=16)
@register("ldm-fashion", f=4, data="fashion_mnist")
class LDMSpec(LatentDiffusionRecipe):
    """Artifact ``ldm-f{f}`` on the shapes data, or ``ldm-fashion`` on Fashion-MNIST (``data``), with
    the artifact-spec interface of :mod:`minildm.recipes.store`. The FID-style score exists for shapes
    only (its feature network knows shapes); on Fashion-MNIST the metrics are the loss and speed."""

    def __init__(self, f: int, data: str = "shapes") -> None:
        self.f = int(f)
        self.data = data
        self.shapes = data == "shapes"
        self.name = ldm_name(self.f) if self.shapes else FASHION_LDM
        self.first_stage = None if self.shapes else FASHION_AE
        self.description = (f"latent DDPM on ae-kl-f{self.f} (f = 1: pixel space), fixed wall-clock budget"
                            if self.shapes else "latent DDPM on Fashion-MNIST (ae-kl-fashion)")

    def first_stage_name(self, preset: Preset | None = None) -> str:
        return self.first_stage or ablation_name(self.f)

    def _image_size(self, preset: Preset) -> int:
        return preset.ldm.image_size if self.shapes else FASHION_SIZE

    def _check(self, preset: Preset) -> None:
        if self.shapes and self.f not in preset.ldm.factors:
            raise ValueError(f"f={self.f} is not in the LDM experiment of preset {preset.name!r}: "
                             f"choose one of {preset.ldm.factors}")

    def identity(self, preset: Preset, steps: float | None = None) -> dict[str, Any]:
        """``steps``: here the training budget in seconds (the CLI's ``--budget``), the preset's
        ``budget_s`` if None: the models of this experiment train for equal time, not equal steps."""
        from .registry import get_spec

        self._check(preset)
        lp = preset.ldm
        fs = get_spec(self.first_stage_name()).identity(preset)
        c = latent_channels(fs)
        budget = float(steps) if steps is not None else lp.budget_s
        return {
            "model_class": "LatentDiffusion",
            "model": {"f": self.f, "image_size": self._image_size(preset), "first_stage": fs,
                      "unet": lp.unet.config(c).to_dict(),
                      "diffusion": {"schedule": lp.schedule, "num_timesteps": lp.timesteps, "parameterization": "eps",
                                    **schedule_ends(lp.linear_start, lp.linear_end)}},
            "recipe": {"kind": "ldm", "data": self.data, "first_stage": self.first_stage_name(), "budget_s": budget,
                       "batch_size": lp.batch_size, "lr": lp.lr, "ema_decay": lp.ema_decay,
                       "eval_points": lp.eval_points, "n_fid": lp.n_fid, "eval_ddim_steps": lp.eval_ddim_steps,
                       "n_train": lp.n_train, "seed": preset.seed},
            "preset": preset.name,
        }

    def command(self, preset: Preset, steps: int | None = None) -> str:
        which = f"--f {self.f}" if self.shapes else f"--data {self.data}"
        return (f"python -m minildm train-ldm --preset {preset.name} {which}"
                + (f" --budget {steps}" if steps is not None else ""))

    def dependencies(self, preset: Preset, device: torch.device, progress: bool) -> dict[str, nn.Module]:
        deps = super().dependencies(preset, device, progress)
        if self.shapes:  # the FID-style score's feature network and the checker, for the evaluations during training
            deps["feature_net"] = load_or_train("feature-net", preset, device=device, progress=progress).model
            deps["checker"] = load_or_train("checker", preset, device=device, progress=progress).model
        return deps

    def latent_batches(self, ldm: nn.Module, preset: Preset, recipe: Mapping[str, Any],
                       progress: bool) -> LatentBatches:
        train_images = load_images(self.data, "train", recipe["n_train"], self._image_size(preset), seed=preset.seed)
        ldm.compute_scale_factor(train_images[:1024])
        return LatentBatches.encode(ldm, train_images, recipe["batch_size"], seed=recipe["seed"])

    def task(self, ldm: nn.Module, recipe: Mapping[str, Any]) -> LatentDiffusionTask:
        return LatentDiffusionTask(ldm, recipe["lr"])

    def trainer_settings(self, preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None,
                         **options: Any) -> dict[str, Any]:
        """No step limit: the run is bounded by its time budget (:meth:`fit`)."""
        return {"max_steps": None, "checkpoint_every": None, "log_every": 10,
                "desc": f"{self.name} ({preset.name}, {recipe['budget_s']:.0f} s)"}

    def fit(self, trainer: Trainer, ldm: nn.Module, ema: EMA, deps: Mapping[str, nn.Module],
            preset: Preset, recipe: Mapping[str, Any], out_dir: Path | None) -> None:
        """Train for ``budget_s`` seconds; at ``eval_points`` evenly spaced times, the EMA weights' FID-style
        score on ``n_fid`` DDIM samples joins the log (points a resumed run already has are skipped)."""
        r = recipe
        size = self._image_size(preset)
        real = load_images(self.data, "val", r["n_fid"], size, seed=preset.seed) if self.shapes else None
        done = {round(row["time_s"] / r["budget_s"] * r["eval_points"]) for row in eval_curve(trainer.log)}
        if not self.shapes:  # no feature network for this data: train through the budget, no evaluations
            trainer.fit(time_budget_s=max(0.0, r["budget_s"] - trainer.elapsed_s))
            done = set(range(1, r["eval_points"] + 1))
        for k in range(1, r["eval_points"] + 1):
            target = r["budget_s"] * k / r["eval_points"]
            if trainer.elapsed_s < target:
                trainer.fit(time_budget_s=target - trainer.elapsed_s)
            if k in done:
                continue
            with ema.average_parameters():
                fds = sample_fid(ldm, deps["feature_net"], real, r["n_fid"], r["eval_ddim_steps"], seed=preset.seed,
                                 checker=deps["checker"])
                fds.pop("images_per_s")
            trainer.log.append({"step": trainer.step, "time_s": trainer.elapsed_s,
                                **{f"eval/{k}": v for k, v in fds.items()}})
            if out_dir is not None:
                trainer.save()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        from .store import load_or_train

        lp = preset.ldm
        model = model.to(device).eval()
        out: dict[str, Any] = {"latent_shape": list(model.latent_shape), "scale_factor": float(model.scale_factor),
                               "unet_params": sum(p.numel() for p in model.model.parameters()),
                               "eval_ddim_steps": lp.eval_ddim_steps}
        if self.shapes:
            feature_net = load_or_train("feature-net", preset, device=device).model
            checker = load_or_train("checker", preset, device=device).model
            real = load_images("shapes", "val", lp.n_fid, lp.image_size, seed=preset.seed)
            # the seed of the evaluations during training: the last point of the curve and these metrics agree
            out.update(sample_fid(model, feature_net, real, lp.n_fid, lp.eval_ddim_steps, seed=preset.seed,
                                  checker=checker))
            out["n_fid"] = lp.n_fid
        else:
            out["images_per_s"] = sampling_throughput(model, min(lp.n_fid, 64), lp.eval_ddim_steps)
        return out
