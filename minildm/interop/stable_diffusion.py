"""Load Stable Diffusion v1.x / v2.x weights into minildm's own modules (taught in notebook 05, "Stable
Diffusion in minildm's modules").

    pipe = load_stable_diffusion(path)             # a diffusers folder or an original single file
    images = pipe("a photograph of an astronaut riding a horse", num_inference_steps=25,
                  guidance_scale=7.5, sampler="dpmpp-2m", generator=torch.Generator().manual_seed(0))

``pipe`` is a :class:`~minildm.diffusion.stable_diffusion.StableDiffusion`, i.e. minildm's
:class:`~minildm.diffusion.ldm.LatentDiffusion` with minildm's :class:`~minildm.AutoencoderKL` (the
first stage), :class:`~minildm.UNetModel` (ε_θ or v_θ), a frozen CLIP text encoder (τ) and a
:class:`~minildm.diffusion.process.GaussianDiffusion` with SD's schedule. Two sources:

=============================  ===================================================================
a **diffusers folder**         ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
                               ``scheduler/``: each part's ``config.json`` and safetensors weights, converted
                               by :mod:`minildm.interop.unet`, :mod:`~minildm.interop.vae`, :mod:`~minildm.interop.clip`;
                               the schedule from ``scheduler_config.json``
an **original checkpoint**     one ``.safetensors`` or ``.ckpt`` (read with ``weights_only=True``): keys
                               ``model.diffusion_model.*`` (the UNet; CompVis names = minildm's),
                               ``first_stage_model.*`` (the VAE; the same) and ``cond_stage_model.transformer.*``
                               (v1: CLIP ViT-L/14) or ``cond_stage_model.model.*`` (v2: OpenCLIP ViT-H/14); the
                               variant is read from the keys and shapes (:data:`~minildm.interop.sd_variants.SD_VARIANTS`),
                               the tokenizer from a folder beside it or ``tokenizer=``
=============================  ===================================================================

The schedule: β_t = linspace(√0.00085, √0.012, 1000)², ``steps_offset`` 1 (DDIM's τ_i = i·⌊T/S⌋ + 1),
``set_alpha_to_one`` False (DDIM's last step goes to ᾱ_0, as in CompVis), DPM-Solver++ on diffusers' default
"linspace" timesteps (what ``DPMSolverMultistepScheduler.from_config`` gives for SD's shipped configs, which set
no ``timestep_spacing``), ε-prediction except SD 2's
768-v models (v-prediction); the latent scale factor s = 0.18215 (``vae/config.json``'s ``scaling_factor``).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..conditioning.pretrained import FrozenCLIPEmbedder, frozen_clip, has_tokenizer
from ..diffusion.process import GaussianDiffusion
from ..diffusion.stable_diffusion import StableDiffusion
from ..models.autoencoder import AutoencoderKL
from ..models.encoder_decoder import AutoencoderConfig
from ..models.unet import UNetConfig, UNetModel
from .clip import clip_text_layout, clip_text_model_from_original
from .common import config_value, load_state_dict_exact
from .sd_variants import sd_schedule, sd_variant
from .unet import convert_unet_state_dict_from_diffusers, unet_config_from_diffusers
from .vae import config_from_diffusers, convert_vae_state_dict_from_diffusers, first_stage_state_dict

__all__ = ["autoencoder_config_from_original", "infer_variant", "load_stable_diffusion", "read_checkpoint",
           "schedule_from_scheduler_config", "unet_config_from_original"]

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


# ----------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a pickled ``.ckpt``/``.pt``/``.bin`` read with
    ``torch.load(weights_only=True)`` (only tensors and plain containers, no code), unwrapping a
    ``"state_dict"`` entry. One-line ValueError for a missing, unreadable or non-tensor file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such checkpoint file: {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader error becomes one line naming the file
        raise ValueError(f"cannot read {str(path)!r} as a checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    return dict(sd)


def _json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{what}: {str(path)!r} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what}: {str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {str(path)!r} does not hold a JSON object")
    return data


def _part_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of one diffusers part folder (``diffusion_pytorch_model.safetensors`` or ``.bin``)."""
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                 "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_checkpoint(folder / name)
    raise ValueError(f"no weights in {str(folder)!r} (expected diffusion_pytorch_model.safetensors)")


# ----------------------------------------------------------------------------------------------- schedule
def schedule_from_scheduler_config(cfg: Mapping[str, Any]) -> tuple[GaussianDiffusion, dict[str, Any]]:
    """The :class:`GaussianDiffusion` and the sampler settings of a diffusers ``scheduler_config.json``
    (DDIM, PNDM, DPM-Solver, Euler... all share these fields). ValueError for what minildm's samplers do
    not reproduce (another ``beta_schedule``, ``timestep_spacing``, ``steps_offset``, thresholding)."""
    schedule = config_value(cfg, "beta_schedule", "linear")
    if schedule not in ("scaled_linear", "linear"):
        raise ValueError(f"beta_schedule {schedule!r} is not supported (Stable Diffusion uses 'scaled_linear')")
    if config_value(cfg, "trained_betas", None) is not None:
        raise ValueError("trained_betas are not supported (Stable Diffusion uses beta_schedule 'scaled_linear')")
    spacing = config_value(cfg, "timestep_spacing", "leading")
    offset = int(config_value(cfg, "steps_offset", 0) or 0)
    if spacing != "leading" or offset != 1:
        raise ValueError(f"timestep_spacing={spacing!r} with steps_offset={offset} is not supported: minildm's "
                         "samplers use Stable Diffusion's 'leading' spacing with steps_offset 1")
    if config_value(cfg, "thresholding", False):
        raise ValueError("thresholding is not supported (Stable Diffusion does not use it)")
    prediction = config_value(cfg, "prediction_type", "epsilon")
    parameterization = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(prediction)
    if parameterization is None:
        raise ValueError(f"unknown prediction_type {prediction!r}: 'epsilon', 'v_prediction' or 'sample'")
    diffusion = GaussianDiffusion(schedule=schedule, num_timesteps=int(config_value(cfg, "num_train_timesteps", 1000)),
                                  linear_start=float(config_value(cfg, "beta_start", 0.00085)),
                                  linear_end=float(config_value(cfg, "beta_end", 0.012)),
                                  parameterization=parameterization)
    # DPM-Solver++'s spacing as diffusers' from_config(this config) gives it: the config's own when it sets one,
    # else the solver's default "linspace" (SD's shipped configs set none)
    explicit = cfg.get("timestep_spacing") if isinstance(cfg, Mapping) else None
    return diffusion, {"set_alpha_to_one": bool(config_value(cfg, "set_alpha_to_one", False)),
                       "timestep_spacing": explicit or "linspace"}


# ----------------------------------------------------------------------------------------------- parts
def _unet_from_folder(folder: Path) -> UNetModel:
    cfg = _json(folder / "config.json", "the UNet's config")
    config = unet_config_from_diffusers(cfg)
    model = UNetModel(config)
    load_state_dict_exact(model, convert_unet_state_dict_from_diffusers(_part_weights(folder), config))
    return model


def _vae_from_folder(folder: Path, resolution: int) -> tuple[AutoencoderKL, float]:
    cfg = _json(folder / "config.json", "the VAE's config")
    ae = AutoencoderKL(config_from_diffusers(cfg, resolution=resolution))
    load_state_dict_exact(ae, convert_vae_state_dict_from_diffusers(_part_weights(folder)))
    return ae, float(config_value(cfg, "scaling_factor", 0.18215))


def _as_conv(sd: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Linear (C_out, C_in) weights of the given parameter names as 1×1 convolutions (C_out, C_in, 1, 1):
    SD 2's ``use_linear_in_transformer`` ``proj_in``/``proj_out``, and VAE attention saved as linear."""
    return {k: v[:, :, None, None] if v.ndim == 2 and k.rsplit(".", 2)[-2] in names else v for k, v in sd.items()}


def _count(keys: list[str], pattern: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return 1 + max(found) if found else 0


def unet_config_from_original(sd: Mapping[str, torch.Tensor], variant: str,
                              overrides: Mapping[str, Any] | None = None) -> UNetConfig:
    """The :class:`UNetConfig` of an original checkpoint's UNet (keys without ``model.diffusion_model.``),
    read from the weights' shapes: channels, levels, res blocks, attention levels, context width,
    transformer depth, input channels (9 for an inpainting UNet). What weights do not store (the head count,
    GroupNorm groups) comes from ``variant`` (:data:`~minildm.interop.sd_variants.SD_VARIANTS`) or
    ``overrides`` (:class:`UNetConfig` field names)."""
    keys = list(sd)
    try:
        conv_in = sd["input_blocks.0.0.weight"]
        n_in, levels = _count(keys, r"input_blocks\.(\d+)\."), 1 + sum(k.endswith(".op.weight") for k in keys)
        R = n_in // levels - 1
        ch = int(conv_in.shape[0])
        mult = tuple(int(sd[f"input_blocks.{1 + i * (R + 1)}.0.out_layers.3.weight"].shape[0]) // ch
                     for i in range(levels))
        attn = tuple(2 ** i for i in range(levels) if f"input_blocks.{1 + i * (R + 1)}.1.proj_in.weight" in sd)
        context = next(int(v.shape[1]) for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
        depth = _count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
        emb = sd["input_blocks.1.0.emb_layers.1.weight"]
    except (KeyError, StopIteration) as err:
        raise ValueError(f"the checkpoint's UNet is not a Stable Diffusion UNet (no {err})") from None
    v = sd_variant(variant)
    config = {"in_channels": int(conv_in.shape[1]), "out_channels": int(sd["out.2.weight"].shape[0]),
              "model_channels": ch, "num_res_blocks": R, "attention_resolutions": attn, "channel_mult": mult,
              "num_heads": v.num_heads, "num_head_channels": v.num_head_channels, "context_dim": context,
              "transformer_depth": depth, "use_scale_shift_norm": int(emb.shape[0]) == 2 * ch * mult[0],
              "num_groups": 32, **(overrides or {})}
    return UNetConfig(**config)


def autoencoder_config_from_original(sd: Mapping[str, torch.Tensor], resolution: int,
                                     overrides: Mapping[str, Any] | None = None) -> AutoencoderConfig:
    """The :class:`AutoencoderConfig` of an original checkpoint's VAE (keys without ``first_stage_model.``),
    read from the weights' shapes; GroupNorm groups (32) and the rest from ``overrides``."""
    keys = list(sd)
    try:
        ch = int(sd["encoder.conv_in.weight"].shape[0])
        levels = _count(keys, r"encoder\.down\.(\d+)\.")
        mult = tuple(int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) // ch for i in range(levels))
        config = {"resolution": resolution, "in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
                  "out_ch": int(sd["decoder.conv_out.weight"].shape[0]), "ch": ch, "ch_mult": mult,
                  "num_res_blocks": _count(keys, r"encoder\.down\.0\.block\.(\d+)\."),
                  "attn_resolutions": tuple(resolution // 2 ** i for i in range(levels)
                                            if any(k.startswith(f"encoder.down.{i}.attn.") for k in keys)),
                  "z_channels": int(sd["decoder.conv_in.weight"].shape[1]),
                  "embed_dim": int(sd["post_quant_conv.weight"].shape[1]),
                  "mid_attn": "encoder.mid.attn_1.q.weight" in sd, "norm_num_groups": 32, **(overrides or {})}
    except KeyError as err:
        raise ValueError(f"the checkpoint's first stage is not a KL autoencoder (no {err})") from None
    return AutoencoderConfig(**config)


def infer_variant(sd: Mapping[str, torch.Tensor]) -> str:
    """The variant of an original checkpoint from its keys: CLIP (``cond_stage_model.transformer.*``) -> "v1";
    OpenCLIP (``cond_stage_model.model.*``) -> "v2-v", the 768² v-prediction model that the SD 2.0 / 2.1
    single files mostly are (diffusers assumes the same); pass ``variant="v2"`` for the 512² ε base models."""
    if not any(k.startswith(UNET_PREFIX) for k in sd):
        some = ", ".join(sorted(sd)[:3]) or "none"
        raise ValueError(f"not a Stable Diffusion checkpoint: no {UNET_PREFIX}* keys (its keys: {some})")
    return "v1" if clip_text_layout(sd) == "v1" else "v2-v"


# ----------------------------------------------------------------------------------------------- loading
def _from_folder(root: Path, tokenizer: str | Path | None) -> dict[str, Any]:
    """The parts of a diffusers Stable Diffusion folder (keyword arguments of :class:`StableDiffusion`)."""
    index = _json(root / "model_index.json", f"{str(root)!r} is not a diffusers Stable Diffusion folder")
    kind = str(index.get("_class_name", ""))
    if "StableDiffusion" not in kind or any(k not in index for k in ("unet", "vae", "text_encoder", "scheduler")):
        raise ValueError(f"{str(root)!r} holds a {kind or 'pipeline of unknown kind'}, not a Stable Diffusion "
                         "pipeline (model_index.json names no unet, vae, text_encoder and scheduler)")
    unet = _unet_from_folder(root / "unet")
    sample_size = config_value(_json(root / "unet" / "config.json", "the UNet's config"), "sample_size", 64)
    vae_levels = len(config_value(_json(root / "vae" / "config.json", "the VAE's config"), "block_out_channels", ()))
    image_size = int(sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size) * 2 ** (vae_levels - 1)
    ae, scale = _vae_from_folder(root / "vae", image_size)
    diffusion, options = schedule_from_scheduler_config(
        _json(root / "scheduler" / "scheduler_config.json", "the scheduler's config"))
    text = frozen_clip(root, tokenizer_path=tokenizer)
    return {"first_stage": ae, "unet": unet, "diffusion": diffusion, "image_size": image_size, "scale_factor": scale,
            "cond_stage_model": text, "sampler_options": options}


def _from_single_file(path: Path, variant: str | None, tokenizer: str | Path | None,
                      unet_config: Mapping[str, Any] | None, vae_config: Mapping[str, Any] | None,
                      text_head_dim: int) -> dict[str, Any]:
    """The parts of an original single-file checkpoint (keyword arguments of :class:`StableDiffusion`)."""
    sd = read_checkpoint(path)
    variant = variant or infer_variant(sd)
    candidates = [Path(tokenizer)] if tokenizer is not None else [path.parent / "tokenizer", path.parent]
    folder = next((c for c in candidates if has_tokenizer(c)), None)
    if folder is None:
        raise ValueError(f"a single-file checkpoint holds no tokenizer, and none was found in "
                         f"{' or '.join(repr(str(c)) for c in candidates)}: pass tokenizer=PATH (a folder with "
                         "vocab.json and merges.txt, e.g. the tokenizer/ folder of a diffusers Stable Diffusion "
                         "download)")
    v = sd_variant(variant)
    unet_sd = _as_conv({k[len(UNET_PREFIX):]: t for k, t in sd.items() if k.startswith(UNET_PREFIX)},
                       ("proj_in", "proj_out"))
    unet = UNetModel(unet_config_from_original(unet_sd, variant, unet_config))
    load_state_dict_exact(unet, unet_sd)
    vae_sd = _as_conv(first_stage_state_dict({k: t for k, t in sd.items() if k.startswith(VAE_PREFIX)}),
                      ("q", "k", "v", "proj_out"))
    ae = AutoencoderKL(autoencoder_config_from_original(vae_sd, v.image_size, vae_config))
    load_state_dict_exact(ae, vae_sd)
    from transformers import CLIPTokenizer

    tokens = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = FrozenCLIPEmbedder(clip_text_model_from_original(sd, head_dim=text_head_dim), tokens)
    diffusion = GaussianDiffusion(**sd_schedule(variant))
    return {"first_stage": ae, "unet": unet, "diffusion": diffusion, "image_size": v.image_size,
            "scale_factor": v.scale_factor, "cond_stage_model": text,
            "sampler_options": {"set_alpha_to_one": False, "timestep_spacing": "linspace"}}


def load_stable_diffusion(path: str | Path, device: str | torch.device | None = None,
                          dtype: torch.dtype | None = None, *, variant: str | None = None,
                          tokenizer: str | Path | None = None, unet_config: Mapping[str, Any] | None = None,
                          vae_config: Mapping[str, Any] | None = None, text_head_dim: int = 64) -> StableDiffusion:
    """Stable Diffusion from ``path`` as minildm's :class:`~minildm.diffusion.stable_diffusion.StableDiffusion`
    (a :class:`~minildm.diffusion.ldm.LatentDiffusion`), in eval mode on ``device`` (default: CUDA, then MPS,
    then the CPU) in ``dtype`` (default float32).

    ``path``: a diffusers folder (``model_index.json`` ...) or an original ``.safetensors`` / ``.ckpt`` file
    (see the module docstring). For a single file: ``variant`` ("v1", "v2", "v2-v"; default read from the
    keys, :func:`infer_variant`), ``tokenizer`` (a CLIP tokenizer folder; default ``tokenizer/`` beside the
    file), and ``unet_config`` / ``vae_config``: fields of :class:`UNetConfig` / :class:`AutoencoderConfig`
    that the weights do not tell (head counts, GroupNorm groups) for checkpoints of other sizes, and the text
    encoder's head width ``text_head_dim`` (64 in every CLIP that SD uses).
    Every mistake is a one-line ValueError: not a Stable Diffusion model, a checkpoint of another kind,
    a missing tokenizer, weights that do not fit.
    """
    from ..engine.device import get_device

    p = Path(path)
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise ValueError(f"{str(p)!r} is not a Stable Diffusion model: no model_index.json (a diffusers folder) "
                             f"and not a {'/'.join(CHECKPOINT_SUFFIXES)} checkpoint")
        parts = _from_folder(p, tokenizer)
    elif p.suffix in CHECKPOINT_SUFFIXES:
        parts = _from_single_file(p, variant, tokenizer, unet_config, vae_config, text_head_dim)
    elif not p.exists():
        raise ValueError(f"no such Stable Diffusion model: {str(p)!r}")
    else:
        raise ValueError(f"{str(p)!r} is not a Stable Diffusion model: expected a diffusers folder or a "
                         f"{'/'.join(CHECKPOINT_SUFFIXES)} checkpoint")
    unet = parts.pop("unet")
    if unet.config.in_channels != unet.config.out_channels:
        raise ValueError(f"this UNet takes {unet.config.in_channels} input channels (an inpainting or depth model); "
                         "load_stable_diffusion loads the text-to-image models (4)")
    options = parts.pop("sampler_options")
    pipe = StableDiffusion(parts.pop("first_stage"), unet, parts.pop("diffusion"), sampler_options=options, **parts)
    return pipe.to(device=get_device(device), dtype=dtype or torch.float32).eval()
