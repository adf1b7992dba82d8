"""Weight conversion between minildm and diffusers (the Stable Diffusion layouts).

* :mod:`minildm.interop.vae`: :class:`~minildm.AutoencoderKL` <-> diffusers ``AutoencoderKL``;
* :mod:`minildm.interop.unet`: :class:`~minildm.UNetModel` <-> diffusers ``UNet2DConditionModel``;
* :mod:`minildm.interop.common`: what both use (:func:`load_state_dict_exact`, reading a diffusers config,
  importing diffusers lazily).
* :mod:`minildm.interop.sd_variants`: the Stable Diffusion variants (v1, v2, v2-v) as minildm configs.
* :mod:`minildm.interop.clip`: the text encoder of an original SD 1.x / 2.x checkpoint <-> transformers'
  ``CLIPTextModel`` (its model level imports transformers lazily).
* :mod:`minildm.interop.stable_diffusion`: :func:`load_stable_diffusion`, a diffusers folder or an original
  single file -> minildm's :class:`~minildm.diffusion.stable_diffusion.StableDiffusion`.

Each has a state-dict level (plain tensors, no diffusers needed: e.g. the files of a Stable
Diffusion download read with safetensors) and a model level (diffusers imported lazily).
"""
from .common import load_state_dict_exact
from .unet import (convert_unet_state_dict_from_diffusers, convert_unet_state_dict_to_diffusers,
                   diffusers_unet_config, unet_config_from_diffusers, unet_from_diffusers, unet_to_diffusers)
from .vae import (autoencoder_from_diffusers, autoencoder_to_diffusers, config_from_diffusers,
                  convert_vae_state_dict_from_diffusers, convert_vae_state_dict_to_diffusers,
                  diffusers_config_from_config, first_stage_state_dict)
from .sd_variants import (SD_SCALE_FACTOR, SD_VARIANTS, SDVariant, parameter_counts, sd_autoencoder_config,
                          sd_diffusers_unet_config, sd_schedule, sd_text_config, sd_unet_config, sd_variant)
from .clip import (clip_text_config_from_state_dict, clip_text_layout, clip_text_model_from_original,
                   clip_text_state_dict_from_original, clip_text_state_dict_to_original)
from .stable_diffusion import load_stable_diffusion, read_checkpoint

__all__ = [
    "autoencoder_from_diffusers", "autoencoder_to_diffusers", "config_from_diffusers",
    "convert_vae_state_dict_from_diffusers", "convert_vae_state_dict_to_diffusers", "diffusers_config_from_config",
    "first_stage_state_dict", "load_state_dict_exact",
    "unet_from_diffusers", "unet_to_diffusers", "unet_config_from_diffusers", "diffusers_unet_config",
    "convert_unet_state_dict_from_diffusers", "convert_unet_state_dict_to_diffusers",
    "SDVariant", "SD_VARIANTS", "SD_SCALE_FACTOR", "sd_variant", "sd_unet_config", "sd_diffusers_unet_config",
    "sd_autoencoder_config", "sd_text_config", "sd_schedule", "parameter_counts",
    "clip_text_layout", "clip_text_config_from_state_dict", "clip_text_state_dict_from_original",
    "clip_text_state_dict_to_original", "clip_text_model_from_original",
    "load_stable_diffusion", "read_checkpoint",
]
