"""Weight conversion between minildm and diffusers (the Stable Diffusion layouts).

* :mod:`minildm.interop.vae`: :class:`~minildm.AutoencoderKL` <-> diffusers ``AutoencoderKL``;
* :mod:`minildm.interop.unet`: :class:`~minildm.UNetModel` <-> diffusers ``UNet2DConditionModel``;
* :mod:`minildm.interop.common`: what both use (:func:`load_state_dict_exact`, reading a diffusers config,
  importing diffusers lazily).

Each has a state-dict level (plain tensors, no diffusers needed: e.g. the files of a Stable
Diffusion download read with safetensors) and a model level (diffusers imported lazily).
"""
from .common import load_state_dict_exact
from .unet import (convert_unet_state_dict_from_diffusers, convert_unet_state_dict_to_diffusers,
                   diffusers_unet_config, unet_config_from_diffusers, unet_from_diffusers, unet_to_diffusers)
from .vae import (autoencoder_from_diffusers, autoencoder_to_diffusers, config_from_diffusers,
                  convert_vae_state_dict_from_diffusers, convert_vae_state_dict_to_diffusers,
                  diffusers_config_from_config, first_stage_state_dict)

__all__ = [
    "autoencoder_from_diffusers", "autoencoder_to_diffusers", "config_from_diffusers",
    "convert_vae_state_dict_from_diffusers", "convert_vae_state_dict_to_diffusers", "diffusers_config_from_config",
    "first_stage_state_dict", "load_state_dict_exact",
    "unet_from_diffusers", "unet_to_diffusers", "unet_config_from_diffusers", "diffusers_unet_config",
    "convert_unet_state_dict_from_diffusers", "convert_unet_state_dict_to_diffusers",
]
