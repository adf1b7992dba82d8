"""The Stable Diffusion variants as minildm configurations (architectures only, no weights).

All variants share the latent diffusion design of the paper at Stable Diffusion's size:

* first stage: the KL-f8 autoencoder (``kl-f8``: ch 128, ch_mult (1, 2, 4, 4), 2 res blocks, z = 4,
  attention only in the middle blocks), 83.65 M parameters;
* UNet: 320 channels, channel_mult (1, 2, 4, 4), 2 res blocks per level, a SpatialTransformer
  (self-attention, cross-attention to the text, GEGLU) after every res block of the first three
  levels (downsampling 1, 2, 4) and in the middle, additive time embedding (no scale-shift norm);
* diffusion: T = 1000 steps, "scaled_linear" β_t = linspace(√0.00085, √0.012)² (CompVis calls it
  "linear"); latents are multiplied by the scale factor 0.18215 before diffusion.

What differs:

=========  ==========================  ====================================  ===========  ==========  =======
variant    UNet attention heads        text encoder τ_θ -> context           proj_in/out  prediction  size
=========  ==========================  ====================================  ===========  ==========  =======
``v1``     8 per level                 CLIP ViT-L/14, 12 layers: 77 × 768    1×1 conv     ε           512²
``v2``     width 64: 5, 10, 20, 20     OpenCLIP ViT-H/14, 23 of its 24       linear       ε           512²
                                       layers (the penultimate): 77 × 1024
``v2-v``   as ``v2``                   as ``v2``                             linear       v           768²
=========  ==========================  ====================================  ===========  ==========  =======

``v1`` is SD 1.1–1.5 (859.5 M UNet parameters), ``v2`` SD 2.0 / 2.1 base (865.9 M: wider keys and
values for the 1024-wide context), ``v2-v`` SD 2.0 / 2.1 768-v, the same UNet trained for
v-prediction at 768². The linear projections of SD 2 (diffusers' ``use_linear_projection``) hold the
same numbers as minildm's 1×1 convolutions; :func:`~minildm.interop.unet.convert_unet_state_dict_to_diffusers`
reshapes them.

Shapes: a 512² RGB image, 3 × 512 × 512 = 786,432 numbers, becomes a 4 × 64 × 64 latent, 16,384
numbers: 48× fewer (768² -> 4 × 96 × 96). The UNet denoises (B, 4, 64, 64) latents with a text
context (B, 77, 768 or 1024); sampling with classifier-free guidance runs it on B = 2 per image.

:func:`parameter_counts` builds the three networks on the meta device (shapes only, nothing
allocated) to count their parameters. Taught in notebook 05 (Stable Diffusion section).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from ..models.autoencoder import AutoencoderKL
from ..models.encoder_decoder import AutoencoderConfig, count_parameters
from ..models.unet import UNetConfig, UNetModel
from .unet import diffusers_unet_config

__all__ = [
    "SDVariant",
    "SD_VARIANTS",
    "SD_SCALE_FACTOR",
    "sd_variant",
    "sd_unet_config",
    "sd_diffusers_unet_config",
    "sd_autoencoder_config",
    "sd_text_config",
    "sd_schedule",
    "parameter_counts",
]

#: latent scale factor of every variant: z = 0.18215 · E(x) has about unit variance
SD_SCALE_FACTOR = 0.18215

#: transformers ``CLIPTextConfig`` of SD 1.x's ``text_encoder/config.json`` (OpenAI CLIP ViT-L/14)
_CLIP_VIT_L14 = MappingProxyType({
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 768, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
})
#: SD 2.x's ``text_encoder/config.json``: OpenCLIP ViT-H/14 less its last layer (SD 2 reads the
#: penultimate layer's output, then the final layer norm: the last_hidden_state of these 23 layers)
_OPENCLIP_VIT_H14 = MappingProxyType({
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 512, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
})


@dataclass(frozen=True)
class SDVariant:
    """What one Stable Diffusion variant sets (see the module's table).

    ``num_heads`` / ``num_head_channels`` are :class:`UNetConfig`'s: heads per level, or (with
    ``num_head_channels > 0``) the head width, ``num_heads`` then being unused (1, as
    :func:`~minildm.interop.unet.unet_config_from_diffusers` writes it). ``parameterization`` is
    minildm's name of the prediction (``"eps"`` or ``"v"``; diffusers: ``"epsilon"``, ``"v_prediction"``).
    """

    name: str
    description: str
    num_heads: int
    num_head_channels: int
    context_dim: int
    use_linear_projection: bool
    text_encoder: str
    text_config: Mapping[str, Any]
    parameterization: str
    image_size: int
    scale_factor: float = SD_SCALE_FACTOR

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(4, image_size / 8, image_size / 8): (4, 64, 64) at 512²."""
        return (4, self.image_size // 8, self.image_size // 8)


SD_VARIANTS: Mapping[str, SDVariant] = MappingProxyType({
    "v1": SDVariant("v1", "Stable Diffusion 1.1-1.5", num_heads=8, num_head_channels=-1, context_dim=768,
                    use_linear_projection=False, text_encoder="CLIP ViT-L/14", text_config=_CLIP_VIT_L14,
                    parameterization="eps", image_size=512),
    "v2": SDVariant("v2", "Stable Diffusion 2.0 / 2.1 base", num_heads=1, num_head_channels=64, context_dim=1024,
                    use_linear_projection=True, text_encoder="OpenCLIP ViT-H/14 (23 layers, penultimate)",
                    text_config=_OPENCLIP_VIT_H14, parameterization="eps", image_size=512),
    "v2-v": SDVariant("v2-v", "Stable Diffusion 2.0 / 2.1 768-v", num_heads=1, num_head_channels=64, context_dim=1024,
                      use_linear_projection=True, text_encoder="OpenCLIP ViT-H/14 (23 layers, penultimate)",
                      text_config=_OPENCLIP_VIT_H14, parameterization="v", image_size=768),
})


def sd_variant(variant: str) -> SDVariant:
    """The :class:`SDVariant` named ``variant`` (a key of :data:`SD_VARIANTS`); ValueError listing them otherwise."""
    try:
        return SD_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown Stable Diffusion variant {variant!r}: choose one of "
                         f"{', '.join(SD_VARIANTS)}") from None


def sd_unet_config(variant: str) -> UNetConfig:
    """minildm :class:`UNetConfig` of the variant's UNet: x (B, 4, h, w), t (B,), context (B, 77, context_dim)
    -> (B, 4, h, w). Equal to :func:`~minildm.interop.unet.unet_config_from_diffusers` of its diffusers
    ``unet/config.json``."""
    v = sd_variant(variant)
    return UNetConfig(in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2,
                      attention_resolutions=(1, 2, 4), channel_mult=(1, 2, 4, 4), num_heads=v.num_heads,
                      num_head_channels=v.num_head_channels, dropout=0.0, use_scale_shift_norm=False,
                      context_dim=v.context_dim, transformer_depth=1, num_groups=32)


def sd_diffusers_unet_config(variant: str) -> dict[str, Any]:
    """Keyword arguments of diffusers' ``UNet2DConditionModel`` for the variant's UNet, as its
    ``unet/config.json`` has them (``sample_size`` = image_size / 8, SD 2's ``use_linear_projection``):
    :func:`~minildm.interop.unet.diffusers_unet_config` of :func:`sd_unet_config`."""
    v = sd_variant(variant)
    kwargs = diffusers_unet_config(sd_unet_config(variant), sample_size=v.latent_shape[-1])
    kwargs["use_linear_projection"] = v.use_linear_projection
    return kwargs


def sd_autoencoder_config(variant: str) -> AutoencoderConfig:
    """minildm :class:`AutoencoderConfig` of the KL-f8 VAE: x (B, 3, H, W) -> z (B, 4, H/8, W/8) and back.

    ``resolution`` is the variant's image size (the ``sample_size`` of its ``vae/config.json``; with no
    attention outside the middle blocks it changes nothing in the network). Equal to
    :func:`~minildm.interop.vae.config_from_diffusers` of that config.
    """
    v = sd_variant(variant)
    return AutoencoderConfig(resolution=v.image_size, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 2, 4, 4),
                             num_res_blocks=2, attn_resolutions=(), dropout=0.0, z_channels=4, embed_dim=4,
                             mid_attn=True, norm_num_groups=32)


def sd_text_config(variant: str) -> dict[str, Any]:
    """Keyword arguments of transformers' ``CLIPTextConfig`` for the variant's text encoder (a new dict);
    ``CLIPTextModel(CLIPTextConfig(**kwargs))(input_ids).last_hidden_state`` is the context (B, 77, context_dim)."""
    return dict(sd_variant(variant).text_config)


def sd_schedule(variant: str) -> dict[str, Any]:
    """Keyword arguments of :class:`~minildm.diffusion.process.GaussianDiffusion`: scaled_linear
    0.00085 … 0.012, 1000 steps, the variant's parameterization (``"eps"`` or ``"v"``)."""
    return {"schedule": "scaled_linear", "num_timesteps": 1000,
            "parameterization": sd_variant(variant).parameterization, "linear_start": 0.00085, "linear_end": 0.012}


def parameter_counts(variant: str) -> dict[str, int]:
    """Parameters of the variant's ``unet``, ``vae`` and ``text_encoder`` (and their ``total``).

    The networks are built on the meta device: parameters have shapes but no storage, so this takes
    about a second and no memory. The text encoder needs transformers (ImportError otherwise).
    """
    try:
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("counting the text encoder needs transformers: pip install transformers "
                          "(or install minildm with the [text] extra)") from err
    unet_config, vae_config = sd_unet_config(variant), sd_autoencoder_config(variant)
    text_config = sd_text_config(variant)
    with torch.device("meta"):
        models = {"unet": UNetModel(unet_config), "vae": AutoencoderKL(vae_config),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**text_config))}
    counts = {name: count_parameters(model) for name, model in models.items()}
    counts["total"] = sum(counts.values())
    return counts
