"""minildm: a notebook-driven reference implementation of Latent Diffusion Models.

Rombach, Blattmann, Lorenz, Esser, Ommer, "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022. Names follow the paper and the CompVis code, so that

    from minildm import AutoencoderKL, VQModel, AutoencoderConfig

maps onto ``ldm.models.autoencoder`` of the original implementation.

Modules: :mod:`minildm.presets` (smoke / cpu / gpu), :mod:`minildm.data`,
:mod:`minildm.nn`, :mod:`minildm.autoencoder`, :mod:`minildm.quantize`,
:mod:`minildm.losses`, :mod:`minildm.metrics`, :mod:`minildm.train`,
:mod:`minildm.tasks`, :mod:`minildm.checkpoint`, :mod:`minildm.artifacts`,
:mod:`minildm.fid`, :mod:`minildm.ablation`, :mod:`minildm.unet`, :mod:`minildm.diffusion`,
:mod:`minildm.ldm`, :mod:`minildm.ema`, :mod:`minildm.ldm_train`, :mod:`minildm.interop`,
:mod:`minildm.viz`, :mod:`minildm.panel`; ``python -m minildm --help`` for the CLI.
"""
from __future__ import annotations

from .autoencoder import (AutoencoderConfig, AutoencoderKL, Decoder, DiagonalGaussianDistribution, Encoder,
                          IdentityFirstStage, VQModel)
from .data import collate, load_dataset
from .diffusion import DDIMSampler, GaussianDiffusion
from .ema import EMA
from .ldm import LatentDiffusion
from .unet import UNetConfig, UNetModel
from .presets import get_device, get_preset, seed_everything
from .quantize import VectorQuantizer

__version__ = "0.1.0"

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "DDIMSampler",
    "Decoder",
    "DiagonalGaussianDistribution",
    "EMA",
    "Encoder",
    "GaussianDiffusion",
    "IdentityFirstStage",
    "LatentDiffusion",
    "UNetConfig",
    "UNetModel",
    "VQModel",
    "VectorQuantizer",
    "collate",
    "get_device",
    "get_preset",
    "load_dataset",
    "seed_everything",
    "__version__",
]
