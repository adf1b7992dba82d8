"""The downsampling-factor ablation (paper Sec. 4.1): how far should the first stage compress?

For every f in the preset's ``ablation.factors`` (1, 2, 4, 8, 16, 32) a KL-regularised
autoencoder is trained with one shared recipe, and *measured*:

* reconstruction on the shapes validation split: PSNR, SSIM, LPIPS and an FID-style score
  (:mod:`minildm.eval.fid`: Fréchet distance between features of the originals and of the
  reconstructions, like the paper's rFID), and the same distance on ImageNet AlexNet features
  (:class:`~minildm.eval.fid.ImageNetFeatures`), which do not depend on what the feature network learnt,
  and the diversity ratio (:func:`~minildm.eval.metrics.diversity_ratio`: a collapsed first stage, decoding
  every input to the same image, scores near 0);
* the latent: shape (c, H/f, W/f) and compression ratio H·W·3 / (c·h·w);
* the codec: encode and decode time per image;
* the diffusion side: one fixed :class:`~minildm.models.unet.UNetModel` on that latent grid (the same
  architecture for every f, only its in/out channels follow c), with its parameter count,
  FLOPs of one training step (forward + backward, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode`), peak memory and step time.

f = 1 is :class:`~minildm.models.autoencoder.IdentityFirstStage`, so the table has a true pixel-space
row. The autoencoder of factor f has ``ch_mult`` from :meth:`AutoencoderConfig.for_factor
<minildm.models.encoder_decoder.AutoencoderConfig.for_factor>` (the LDM first-stage configs) and
``z_channels`` growing with f as in the paper's KL models (f4: 3, f8: 4, f16: 16, f32: 64).

Each model is an artifact ``ae-kl-f{f}`` (:mod:`minildm.recipes.store`), built by
``python -m minildm ablate-f --preset P``; :func:`ablation_table` collects the rows.

Taught in notebook 02.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.device import get_device, seed_everything
from ..engine.throughput import SavedTensorBytes, median_time
from .presets import Preset, get_preset
from .registry import TrainResult, register
from ..data import load_images
from ..models.autoencoder import IdentityConfig, IdentityFirstStage
from .autoencoder import AutoencoderSpec, DerivedAutoencoderSpec

__all__ = [
    "ABLATION_VARIANT_NOTE",
    "AblationSpec",
    "ablation_name",
    "ablation_preset",
    "ablation_table",
    "codec_timing",
    "compression_ratio",
    "diffusion_cost",
    "first_stage_config",
    "TABLE_COLUMNS",
]

ABLATION_VARIANT_NOTE = ("smoke and cpu presets train the ablation with L1 + LPIPS (notebook 01 measured "
                         "that the adversarial term changes LPIPS by ~2% at that scale); gpu adds the PatchGAN")

#: columns of the ablation table, with a label and a format
TABLE_COLUMNS: dict[str, tuple[str, str]] = {
    "f": ("f", "{}"),
    "latent_shape": ("latent c×h×w", "{}"),
    "compression": ("compression", "{:.0f}×"),
    "psnr": ("PSNR ↑", "{:.2f}"),
    "ssim": ("SSIM ↑", "{:.3f}"),
    "lpips": ("LPIPS ↓", "{:.3f}"),
    "fid": ("FD-feat ↓", "{:.2f}"),
    "fid_imagenet": ("FD-ImageNet ↓", "{:.2f}"),
    "diversity": ("diversity", "{:.2f}"),
    "encode_ms": ("enc ms/img", "{:.2f}"),
    "decode_ms": ("dec ms/img", "{:.2f}"),
    "unet_gflops": ("UNet GFLOP/step", "{:.2f}"),
    "unet_memory_mb": ("UNet mem MB", "{:.1f}"),
    "unet_step_ms": ("UNet ms/step", "{:.1f}"),
}


def ablation_name(f: int) -> str:
    """Artifact name of factor ``f``: ``ae-kl-f{f}``."""
    return f"ae-kl-f{f}"


def ablation_preset(preset: str | Preset | None = None) -> Preset:
    """``preset`` with the first-stage sizes of the ablation (its image size, step count and learning rate)."""
    p = get_preset(preset)
    return p.with_ae(image_size=p.ablation.image_size, steps=p.ablation.steps, lr=p.ablation.lr or p.ae.lr)


def first_stage_config(f: int, preset: str | Preset | None = None) -> dict[str, Any]:
    """Model overrides of factor ``f`` (ch_mult from the LDM configs, z_channels from the preset)."""
    from ..models.encoder_decoder import AutoencoderConfig, check_downsampling_factor

    check_downsampling_factor(f)
    p = get_preset(preset)
    if f not in p.ablation.factors:
        raise ValueError(f"f={f} is not in the ablation of preset {p.name!r}: choose one of {p.ablation.factors}")
    z = p.ablation.latent_channels(f)
    return {"ch_mult": AutoencoderConfig.for_factor(f).ch_mult, "z_channels": z, "embed_dim": z}


def compression_ratio(image_shape: Sequence[int], latent_shape: Sequence[int]) -> float:
    """Pixels·channels per latent element: (C·H·W) / (c·h·w)."""
    return math.prod(image_shape) / math.prod(latent_shape)


# ------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def codec_timing(model: nn.Module, images: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Median encode and decode time per image (ms) of ``model`` on the batch ``images`` (B, C, H, W)."""
    device = images.device
    model.eval()
    z = model.encode_latent(images)
    enc = median_time(lambda: model.encode_latent(images), device, repeats)
    dec = median_time(lambda: model.decode(z), device, repeats)
    n = images.shape[0]
    return {"encode_ms": 1000 * enc / n, "decode_ms": 1000 * dec / n}


@torch.enable_grad()
def diffusion_cost(latent_shape: Sequence[int], preset: str | Preset | None = None,
                   device: str | torch.device | None = None, timing_steps: int | None = None) -> dict[str, Any]:
    """Measure one training step of the ablation's fixed UNet on latents of ``latent_shape`` (c, h, w).

    The step is the diffusion training step of paper Eq. 2 at cost level: ε-prediction MSE of
    ``UNetModel(z_t, t)`` on a batch of ``preset.ablation.unet_batch_size`` latents at random t,
    backward, AdamW update.

    Returns ``unet_params``; ``unet_gflops`` (forward + backward of one step, counted by
    FlopCounterMode); ``unet_memory_mb``: on CUDA the allocator's peak during a step, elsewhere the
    bytes autograd saves for backward plus weights, gradients and the two Adam moments
    (``unet_memory_method`` says which); ``unet_step_ms``: median wall time of a step.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ..models.unet import UNetModel

    p = get_preset(preset)
    a = p.ablation
    dev = get_device(device)
    c, h, w = (int(v) for v in latent_shape)
    config = a.unet.config(c)
    if h % config.downsampling or w % config.downsampling:
        raise ValueError(f"the ablation UNet needs latent grids divisible by {config.downsampling}, got {h}×{w}")
    g = seed_everything(p.seed)
    unet = UNetModel(config).to(dev)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    b = a.unet_batch_size
    z_t = torch.randn(b, c, h, w, generator=g).to(dev)
    eps = torch.randn(b, c, h, w, generator=g).to(dev)
    t = torch.randint(0, 1000, (b,), generator=g).to(dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(unet(z_t, t), eps).backward()
        opt.step()

    step()  # allocates the Adam state
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(unet(z_t, t), eps).backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)

    params = sum(q.numel() for q in unet.parameters())
    param_bytes = sum(q.numel() * q.element_size() for q in unet.parameters())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        torch.cuda.synchronize(dev)
        memory = torch.cuda.max_memory_allocated(dev)
        method = "cuda allocator peak during a step"
    else:
        saved = SavedTensorBytes()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            loss = F.mse_loss(unet(z_t, t), eps)
        del loss
        memory = saved.total + 4 * param_bytes  # weights, gradients, Adam m and v
        method = "autograd-saved activations + weights, gradients, Adam moments"
    step_s = median_time(step, dev, timing_steps if timing_steps is not None else a.timing_steps)
    return {"unet_params": params, "unet_gflops": flops / 1e9, "unet_memory_mb": memory / 2**20,
            "unet_memory_method": method, "unet_step_ms": 1000 * step_s, "unet_batch_size": b,
            "unet_config": config.to_dict()}


# ------------------------------------------------------------------------------------------
# the artifacts ae-kl-f{f}
# ------------------------------------------------------------------------------------------

@register("ae-kl-f1", f=1)
@register("ae-kl-f2", f=2)
@register("ae-kl-f4", f=4)
@register("ae-kl-f8", f=8)
@register("ae-kl-f16", f=16)
@register("ae-kl-f32", f=32)
@dataclass(frozen=True)
class AblationSpec(DerivedAutoencoderSpec):
    """Artifact ``ae-kl-f{f}`` of the ablation (the artifact-spec interface of :mod:`minildm.recipes.registry`);
    f = 1 is the identity (pixel space), nothing to train."""

    f: int

    @property
    def name(self) -> str:
        return ablation_name(self.f)

    @property
    def description(self) -> str:
        return (f"f = {self.f} ablation: " + ("identity first stage (pixel space)" if self.f == 1
                                              else "KL autoencoder with the ablation recipe"))

    def autoencoder_spec(self, preset: Preset) -> AutoencoderSpec:
        return AutoencoderSpec(self.name, preset.ablation.variant, "kl", self.description,
                               model_overrides=first_stage_config(self.f, preset))

    def recipe_preset(self, preset: Preset) -> Preset:
        return ablation_preset(preset)

    def identity(self, preset: Preset, steps: int | None = None) -> dict[str, Any]:
        first_stage_config(self.f, preset)  # validates f against the preset
        if self.f == 1:
            return {"model_class": "IdentityFirstStage",
                    "model": IdentityConfig(3, preset.ablation.image_size).to_dict(),
                    "recipe": {"kind": "identity", "image_size": preset.ablation.image_size, "steps": 0},
                    "preset": preset.name}
        return super().identity(preset, steps)

    def command(self, preset: Preset, steps: int | None = None) -> str:
        cmd = f"python -m minildm ablate-f --preset {preset.name} --f {self.f}"
        return cmd + (f" --steps {steps}" if steps is not None and self.f != 1 else "")

    def train(self, preset: Preset, *, steps: int | None, device: Any, out_dir: Path | None, resume: bool,
              progress: bool, init_state: Mapping[str, torch.Tensor] | None = None,
              decoder_only: bool = False) -> TrainResult:
        if self.f == 1:
            return TrainResult(IdentityFirstStage(IdentityConfig(3, preset.ablation.image_size)).to(device), [], 0.0)
        return super().train(preset, steps=steps, device=device, out_dir=out_dir, resume=resume, progress=progress,
                             init_state=init_state, decoder_only=decoder_only)

    def evaluate(self, model: nn.Module, preset: Preset, device: torch.device) -> dict[str, Any]:
        return evaluate_first_stage(model, preset, device)


@torch.no_grad()
def evaluate_first_stage(model: nn.Module, preset: str | Preset | None = None,
                         device: str | torch.device | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Every per-f measurement of the ablation for one first stage (see the module docstring).

    Reconstruction metrics on ``preset.ae.n_eval`` validation images, the FID-style score on
    ``preset.features.n_eval`` (the feature network is trained first if it is not cached), codec
    timing on one batch, and :func:`diffusion_cost` on the model's latent grid.
    """
    from ..eval.fid import extract_features, fid_from_features, get_imagenet_features
    from ..eval.metrics import diversity_ratio, evaluate_reconstruction
    from .store import load_or_train

    p = get_preset(preset)
    dev = get_device(device)
    size = p.ablation.image_size
    model = model.to(dev).eval()
    n = max(p.ae.n_eval, p.features.n_eval)
    images = load_images("shapes", "val", n, size, seed=p.seed)
    metrics: dict[str, Any] = evaluate_reconstruction(model, list(images[:p.ae.n_eval]), n=p.ae.n_eval,
                                                      batch_size=p.ae.batch_size, device=dev)
    with torch.enable_grad():  # trains the feature network if it is not cached yet
        feature_net = load_or_train("feature-net", p, device=dev, progress=progress).model
    real = images[:p.features.n_eval]
    recon = torch.cat([model.decode(model.encode_latent(b.to(dev))).clamp(-1, 1).cpu()
                       for b in real.split(p.ae.batch_size)])
    metrics["fid"] = fid_from_features(extract_features(feature_net, real), extract_features(feature_net, recon))
    metrics["diversity"] = diversity_ratio(real, recon)
    imagenet = get_imagenet_features("alex", dev)
    metrics["fid_imagenet"] = fid_from_features(extract_features(imagenet, real), extract_features(imagenet, recon))
    z = model.encode_latent(images[:1].to(dev))
    latent = tuple(int(s) for s in z.shape[1:])
    metrics.update(latent_shape=list(latent), compression=compression_ratio(images.shape[1:], latent),
                   f=int(images.shape[-1] // latent[-1]))
    metrics.update(codec_timing(model, images[:p.ae.batch_size].to(dev)))
    metrics.update(diffusion_cost(latent, p, dev))
    return metrics




def ablation_table(preset: str | Preset | None = None, *, factors: Sequence[int] | None = None,
                   train: bool = True, device: str | torch.device | None = None, progress: bool = True,
                   root: Any = None, save: bool = True) -> list[dict[str, Any]]:
    """One row of measurements per f (from each artifact's metrics), trained where missing.

    ``train=False`` raises ValueError naming the command for an artifact that is neither cached nor shipped. With
    ``save``, the rows are written to ``<artifacts>/<preset>/ablation-f.json`` together with the
    command that rebuilds them. Returns the rows sorted by f.
    """
    from .store import artifact_root, load_or_train, load_trained

    p = get_preset(preset)
    factors = tuple(factors) if factors is not None else p.ablation.factors
    rows = []
    for f in factors:
        first_stage_config(f, p)
        art = (load_or_train(ablation_name(f), p, device=device, progress=progress, root=root) if train
               else load_trained(ablation_name(f), p, device=device, root=root))
        m = art.metrics
        row = {"f": f, **{k: m.get(k) for k in TABLE_COLUMNS if k != "f"},
               "latent_shape": "×".join(map(str, m["latent_shape"])), "unet_params": m.get("unet_params"),
               "ae_params": m.get("params"), "train_time_s": m.get("train_time_s"), "command": m.get("command")}
        rows.append(row)
    rows.sort(key=lambda r: r["f"])
    if save:
        path = artifact_root(root) / p.name / "ablation-f.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        command = f"python -m minildm ablate-f --preset {p.name}"
        path.write_text(json.dumps({"command": command, "preset": p.name, "rows": rows}, indent=2) + "\n")
    return rows


def format_ablation_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a fixed-width text table (what the CLI prints)."""
    cols = list(TABLE_COLUMNS.items())
    cells = [[label for _, (label, _) in cols]]
    for r in rows:
        line = []
        for key, (_, fmt) in cols:
            v = r.get(key)
            if v is None:
                line.append("–")
            elif isinstance(v, float) and math.isinf(v):
                line.append("∞")
            else:
                line.append(fmt.format(v))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)
