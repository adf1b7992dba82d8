"""The first stage: perceptually compressing autoencoders (paper Sec. 3.1).

Given an image x ∈ R^{H×W×3} (here channels first: (B, 3, H, W) in [-1, 1]), the
encoder E maps it to a latent z = E(x) ∈ R^{h×w×c} and the decoder D reconstructs
x̃ = D(z) = D(E(x)). The encoder downsamples by a factor f = H/h = W/w = 2^m; in this
design m = len(ch_mult) − 1, one stride-2 :class:`~minildm.models.nn.Downsample` between
consecutive resolution levels.

Two regularisations keep the latent space well-behaved:

* **KL-reg.** (:class:`AutoencoderKL`): E outputs the mean μ and log-variance log σ²
  of a diagonal Gaussian q(z|x) = N(μ, σ²) (:class:`DiagonalGaussianDistribution`);
  a slight KL penalty towards N(0, I),
  KL = ½ Σ_{c,h,w} (μ² + σ² − 1 − log σ²), as in a VAE (weight ~1e-6 in the loss).
* **VQ-reg.** (:class:`VQModel`): a vector quantisation layer
  (:class:`~minildm.models.quantize.VectorQuantizer`) "within the decoder", as in VQGAN.

The module layout and parameter names follow CompVis'
``ldm/modules/diffusionmodules/model.py`` (``Encoder``, ``Decoder``) and
``ldm/models/autoencoder.py`` (``AutoencoderKL``, ``VQModel``), so Stable Diffusion's
``first_stage_model.*`` weights load by name:

``encoder.conv_in``, ``encoder.down[i].block[j]``, ``encoder.down[i].attn[j]``,
``encoder.down[i].downsample``, ``encoder.mid.{block_1, attn_1, block_2}``,
``encoder.norm_out``, ``encoder.conv_out``, ``quant_conv``, ``post_quant_conv``,
``decoder.conv_in``, ``decoder.mid.*``, ``decoder.up[i].block[j]`` (num_res_blocks + 1
blocks), ``decoder.up[i].attn[j]``, ``decoder.up[i].upsample``, ``decoder.norm_out``,
``decoder.conv_out``. As in CompVis, ``decoder.up[i]`` is indexed by *resolution level*
(``up[0]`` works at full resolution and runs last), so the loop runs over
``reversed(range(len(ch_mult)))``.

Taught in notebooks 01 (KL and VQ) and 02 (the factor f).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .distributions import DiagonalGaussianDistribution
from .encoder_decoder import AutoencoderConfig, Decoder, Encoder, check_image_input, count_parameters
from .quantize import QuantizerInfo, VectorQuantizer

__all__ = [
    "AutoencoderKL",
    "IdentityConfig",
    "IdentityFirstStage",
    "VQModel",
]


class _FirstStage(nn.Module):
    """Shared plumbing of AutoencoderKL and VQModel."""

    config: AutoencoderConfig
    encoder: Encoder
    decoder: Decoder
    #: state-dict prefixes of the weights that define the latent space z = E(x)
    encoder_prefixes: tuple[str, ...] = ("encoder.", "quant_conv.")

    def freeze_encoder(self) -> None:
        """Train the decoder D alone from here on: the weights under :attr:`encoder_prefixes` get no gradient.

        z = E(x) stays what it was, so every latent diffusion model trained on these latents stays valid
        while D learns to draw them better (how Stable Diffusion's VAE was refined into ``ft-EMA`` /
        ``ft-MSE``: decoder only, encoder frozen)."""
        for name, param in self.named_parameters():
            if name.startswith(self.encoder_prefixes):
                param.requires_grad_(False)

    @property
    def f(self) -> int:
        """Downsampling factor f = H / h."""
        return self.config.f

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(embed_dim, resolution // f, resolution // f)."""
        return self.config.latent_shape

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last convolution (for the adaptive GAN weight λ)."""
        return self.decoder.conv_out.weight

    def num_parameters(self, trainable_only: bool = False) -> int:
        return count_parameters(self, trainable_only)

    def _check_latent(self, z: Any, what: str) -> None:
        e = int(self.config.embed_dim)  # type: ignore[arg-type]
        check_image_input(z, e, 1, what, f"(B, {e}, h, w)")


class AutoencoderKL(_FirstStage):
    """KL-regularised autoencoder (CompVis ``AutoencoderKL``; Stable Diffusion's VAE).

    x (B, in_channels, H, W) --E--> [μ, log σ²] (B, 2·z_channels, h, w) --quant_conv (1×1)-->
    (B, 2·embed_dim, h, w) = q(z|x); z ~ q(z|x) (B, embed_dim, h, w) --post_quant_conv (1×1)-->
    (B, z_channels, h, w) --D--> x̃ (B, out_ch, H, W), with h = H/f, w = W/f.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"AutoencoderKL expects an AutoencoderConfig, got {type(config).__name__}")
        if config.double_z is False:
            raise ValueError("AutoencoderKL needs double_z=True (or None): the encoder outputs mean and log-variance")
        self.config = config
        self.encoder = Encoder(config, double_z=True)
        self.decoder = Decoder(config)
        e = int(config.embed_dim)  # type: ignore[arg-type]
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * e, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(e, config.z_channels, kernel_size=1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """q(z|x): x (B, in_channels, H, W) -> posterior over z (B, embed_dim, H/f, W/f)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̃ = D(z): z (B, embed_dim, h, w) -> (B, out_ch, h·f, w·f)."""
        self._check_latent(z, "AutoencoderKL.decode")
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """(x̃, q(z|x)); z is sampled (training) or the mode (``sample_posterior=False``)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """z = mode of q(z|x), (B, embed_dim, H/f, W/f): what a latent diffusion model trains on."""
        return self.encode(x).mode()

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """x̃ = D(z), same as :meth:`decode` (the VQModel counterpart quantises first)."""
        return self.decode(z)


class VQModel(_FirstStage):
    """VQ-regularised autoencoder (CompVis ``VQModel``, VQGAN).

    x --E--> (B, z_channels, h, w) --quant_conv--> z_e (B, embed_dim, h, w) --quantize-->
    z_q (nearest of ``n_embed`` codes) --post_quant_conv--> (B, z_channels, h, w) --D--> x̃.

    For latent diffusion the quantiser belongs to the decoder (paper Sec. 3.1): a
    diffusion model's continuous output z is quantised in :meth:`decode_latent`.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"VQModel expects an AutoencoderConfig, got {type(config).__name__}")
        if config.double_z is True:
            raise ValueError("VQModel needs double_z=False (or None): its encoder outputs z_channels channels")
        if config.n_embed is None:
            raise ValueError("VQModel needs n_embed (codebook size), e.g. AutoencoderConfig(..., n_embed=8192)")
        self.config = config
        e = int(config.embed_dim)  # type: ignore[arg-type]
        self.encoder = Encoder(config, double_z=False)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, e, kernel_size=1)
        self.quantize = VectorQuantizer(config.n_embed, e, beta=config.beta, legacy=config.legacy_vq)
        self.post_quant_conv = nn.Conv2d(e, config.z_channels, kernel_size=1)

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        """z_e = quant_conv(E(x)) before quantisation, (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerInfo]:
        """x -> (z_q (B, embed_dim, h, w), codebook + commitment loss (scalar), info)."""
        return self.quantize(self.encode_to_prequant(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """x̃ = D(post_quant_conv(z_q)): (B, embed_dim, h, w) -> (B, out_ch, h·f, w·f)."""
        self._check_latent(quant, "VQModel.decode")
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode code indices (B, h, w) -> x̃ (B, out_ch, h·f, w·f)."""
        return self.decode(self.quantize.embed_code(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, QuantizerInfo]:
        """(x̃, quantiser loss, info)."""
        quant, emb_loss, info = self.encode(x)
        return self.decode(quant), emb_loss, info

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Quantised latent z_q (B, embed_dim, H/f, W/f)."""
        return self.encode(x)[0]

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Quantise z (e.g. a diffusion sample) to the nearest codes, then decode ("VQ in the decoder")."""
        self._check_latent(z, "VQModel.decode_latent")
        return self.decode(self.quantize(z)[0])


class IdentityFirstStage(nn.Module):
    """The f = 1 "first stage" of pixel-space diffusion: z = x, x̃ = z (CompVis ``IdentityFirstStage``).

    It has the autoencoders' interface (``encode`` returns a posterior with ``mode()``, ``sample()``
    and ``kl() = 0``; ``encode_latent``, ``decode``, ``decode_latent``, ``f``, ``latent_shape``), so
    that a latent diffusion model with this first stage *is* a pixel-space diffusion model.
    Shapes: x (B, C, H, W) -> z (B, C, H, W) -> x̃ (B, C, H, W).
    """

    #: no weights define its latents (z = x)
    encoder_prefixes: tuple[str, ...] = ()

    def __init__(self, config: "IdentityConfig | None" = None) -> None:
        super().__init__()
        self.config = config or IdentityConfig()

    @property
    def f(self) -> int:
        return 1

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_channels, c.resolution, c.resolution)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        check_image_input(x, self.config.in_channels, 1, "IdentityFirstStage.encode", f"(B, {self.config.in_channels}, H, W)")
        return DiagonalGaussianDistribution(torch.cat([x, torch.zeros_like(x)], dim=1), deterministic=True)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x).mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        check_image_input(z, self.config.in_channels, 1, "IdentityFirstStage.decode", f"(B, {self.config.in_channels}, h, w)")
        return z

    decode_latent = decode

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(x)
        return self.decode(posterior.mode()), posterior

    def num_parameters(self, trainable_only: bool = False) -> int:
        return 0


@dataclass
class IdentityConfig:
    """Config of :class:`IdentityFirstStage`: image channels and nominal size."""

    in_channels: int = 3
    resolution: int = 256

    @property
    def f(self) -> int:
        return 1

    @property
    def embed_dim(self) -> int:
        return self.in_channels

    def to_dict(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "resolution": self.resolution}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IdentityConfig":
        return cls(**dict(d))
