"""minildm: a notebook-driven reference implementation of Latent Diffusion Models.

Rombach, Blattmann, Lorenz, Esser, Ommer, "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022. Names follow the paper and the CompVis code, so that

    from minildm import AutoencoderKL, VQModel, AutoencoderConfig

maps onto ``ldm.models.autoencoder`` of the original implementation.

The paper's components, each importing nothing of the layers below them in this list:

* :mod:`minildm.models`: first stage (``AutoencoderKL``, ``VQModel``) and ``UNetModel``
* :mod:`minildm.diffusion`: the Gaussian process, samplers, guidance, ``LatentDiffusion``
* :mod:`minildm.conditioning`: τ_θ for classes, layouts and text
* :mod:`minildm.losses`: LPIPS, the PatchGAN discriminator, the first stage's loss
* :mod:`minildm.data`: datasets (generated shapes, Fashion-MNIST, photos, your own images)

and what uses them:

* :mod:`minildm.engine`: the Trainer, checkpoints, EMA, DDP, throughput
* :mod:`minildm.eval`: metrics, the FID-style score, the content checker, prompts
* :mod:`minildm.recipes`: presets, the notebooks' experiments, the artifact registry and store
* :mod:`minildm.interop`: diffusers / Stable Diffusion weights
* :mod:`minildm.notebook`: figures and widgets; ``python -m minildm --help`` for the CLI.
"""
from __future__ import annotations

from .data import collate, load_dataset
from .diffusion import DDIMSampler, DDPMSampler, GaussianDiffusion, LatentDiffusion
from .engine.device import get_device, seed_everything
from .engine.ema import EMA
from .models import (AutoencoderConfig, AutoencoderKL, Decoder, DiagonalGaussianDistribution, Encoder,
                     IdentityFirstStage, UNetConfig, UNetModel, VectorQuantizer, VQModel)
from .recipes.presets import get_preset

__version__ = "0.1.0"

__all__ = [
    "AutoencoderConfig", "AutoencoderKL", "DDIMSampler", "DDPMSampler", "Decoder", "DiagonalGaussianDistribution",
    "EMA", "Encoder", "GaussianDiffusion", "IdentityFirstStage", "LatentDiffusion", "UNetConfig", "UNetModel",
    "VQModel", "VectorQuantizer", "collate", "get_device", "get_preset", "load_dataset", "seed_everything",
    "__version__",
]
