"""minildm: a notebook-driven reference implementation of Latent Diffusion Models.

Rombach, Blattmann, Lorenz, Esser, Ommer, "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022. Names follow the paper and the CompVis code, so that

    from minildm import AutoencoderKL, VQModel, AutoencoderConfig

maps onto ``ldm.models.autoencoder`` of the original implementation.

Modules: :mod:`minildm.presets` (smoke / cpu / gpu), :mod:`minildm.data`,
:mod:`minildm.nn`, :mod:`minildm.autoencoder`, :mod:`minildm.quantize`,
:mod:`minildm.losses`, :mod:`minildm.metrics`, :mod:`minildm.train`,
:mod:`minildm.tasks`, :mod:`minildm.checkpoint`, :mod:`minildm.artifacts`,
:mod:`minildm.interop`, :mod:`minildm.viz`; ``python -m minildm --help`` for the CLI.
"""
from __future__ import annotations

from .autoencoder import AutoencoderConfig, AutoencoderKL, DiagonalGaussianDistribution, Decoder, Encoder, VQModel
from .data import collate, load_dataset
from .presets import get_device, get_preset, seed_everything
from .quantize import VectorQuantizer

__version__ = "0.1.0"

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "Decoder",
    "DiagonalGaussianDistribution",
    "Encoder",
    "VQModel",
    "VectorQuantizer",
    "collate",
    "get_device",
    "get_preset",
    "load_dataset",
    "seed_everything",
    "__version__",
]
