"""The paper's networks: the first stage (E, D; KL- or VQ-regularised) and the denoising UNet ε_θ.

* :mod:`minildm.models.encoder_decoder`: ``Encoder``, ``Decoder``, ``AutoencoderConfig`` (notebooks 01, 02)
* :mod:`minildm.models.distributions`: ``DiagonalGaussianDistribution``, the KL posterior (notebook 01)
* :mod:`minildm.models.quantize`: ``VectorQuantizer`` (notebook 01)
* :mod:`minildm.models.autoencoder`: ``AutoencoderKL``, ``VQModel``, ``IdentityFirstStage`` (notebooks 01–03)
* :mod:`minildm.models.unet`: ``UNetModel``, ``UNetConfig`` (notebooks 03–05)
* :mod:`minildm.models.nn`: shared layers, blocks, attention and the ``SpatialTransformer`` (notebook 04)
"""
from .autoencoder import AutoencoderKL, IdentityConfig, IdentityFirstStage, VQModel
from .distributions import DiagonalGaussianDistribution
from .encoder_decoder import AutoencoderConfig, Decoder, Encoder
from .quantize import VectorQuantizer
from .unet import UNetConfig, UNetModel

__all__ = ["AutoencoderConfig", "AutoencoderKL", "Decoder", "DiagonalGaussianDistribution", "Encoder",
           "IdentityConfig", "IdentityFirstStage", "UNetConfig", "UNetModel", "VQModel", "VectorQuantizer"]
