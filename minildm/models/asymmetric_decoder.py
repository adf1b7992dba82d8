"""An asymmetric first-stage decoder that also sees the known pixels (notebook 06, inpainting).

An inpainting LDM draws the latent z of the whole image and the decoder D draws its pixels; the known
pixels are then pasted back. D(z) redraws the surroundings of the hole with the first stage's error (a
colour shift on a flat wall, a blurred edge), and pasting shows that error as a seam around the hole.
The LDM cannot fix it: it is in D, below the latent.

Zhu et al. 2023 ("Designing a Better Asymmetric VQGAN for StableDiffusion") keep the encoder E, and so the
latent space the LDM was trained on, and give the decoder a second input: the masked image x ⊙ (1 − m)
and the mask m (1 = missing). A small convolutional branch E_c reads them, and its features join the
decoder after each resolution level i:

    h_i ← h_i + W_i [E_c(x ⊙ (1 − m), m)_i, m↓_i],    W_i a 1×1 convolution initialised to zero,

so that the decoder starts as the plain D and learns to take colours and edges from the known pixels.
The branch adds no cost to the LDM: it runs once, after sampling.

Shapes: z (B, z_channels, H/f, W/f); masked image (B, out_ch, H, W) in [-1, 1]; mask (B, 1, H, W) in
{0, 1}; output (B, out_ch, H, W).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder_decoder import AutoencoderConfig, Decoder, check_image_input
from .nn import Downsample, ResnetBlock

__all__ = ["AsymmetricDecoder", "AsymmetricDecoderKL", "MaskedImageBranch"]


class MaskedImageBranch(nn.Module):
    """E_c: [x ⊙ (1 − m), m] (B, out_ch + 1, H, W) -> one feature map per decoder level i:
    (B, ch·ch_mult[i], H/2^i, W/2^i), i = 0 … L−1 (one ResnetBlock per level, strided convolutions
    between levels)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        c = config
        self.conv_in = nn.Conv2d(c.out_ch + 1, c.ch * c.ch_mult[0], kernel_size=3, padding=1)
        self.block = nn.ModuleList()
        self.down = nn.ModuleList()
        block_in = c.ch * c.ch_mult[0]
        for i, mult in enumerate(c.ch_mult):
            self.block.append(ResnetBlock(block_in, c.ch * mult, num_groups=c.norm_num_groups))
            block_in = c.ch * mult
            self.down.append(Downsample(block_in, True) if i < len(c.ch_mult) - 1 else nn.Identity())

    def forward(self, masked_image: Tensor, mask: Tensor) -> list[Tensor]:
        h = self.conv_in(torch.cat([masked_image, mask], 1))
        features = []
        for block, down in zip(self.block, self.down):
            h = block(h)
            features.append(h)
            h = down(h)
        return features


class AsymmetricDecoder(Decoder):
    """D(z; x ⊙ (1 − m), m): :class:`~minildm.models.encoder_decoder.Decoder` with the features of
    :class:`MaskedImageBranch` added after each level through zero-initialised 1×1 convolutions ``fuse[i]``
    (see the module docstring). Without a masked image it is the plain decoder."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        self.branch = MaskedImageBranch(c)
        self.fuse = nn.ModuleList(nn.Conv2d(c.ch * m + 1, c.ch * m, kernel_size=1) for m in c.ch_mult)
        for conv in self.fuse:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, z: Tensor, masked_image: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if masked_image is None and mask is None:
            return super().forward(z)
        if masked_image is None or mask is None:
            raise ValueError("the asymmetric decoder takes the masked image and the mask together")
        c = self.config
        check_image_input(masked_image, c.out_ch, c.f, "AsymmetricDecoder masked image", f"(B, {c.out_ch}, H, W)")
        size = (z.shape[-2] * c.f, z.shape[-1] * c.f)
        if tuple(masked_image.shape[-2:]) != size or tuple(mask.shape[-2:]) != size or mask.shape[1] != 1 \
                or len(mask) != len(z) or len(masked_image) != len(z):
            raise ValueError(f"the masked image and mask must be (B, {c.out_ch}, {size[0]}, {size[1]}) and "
                             f"(B, 1, {size[0]}, {size[1]}) for a latent {tuple(z.shape)}, got "
                             f"{tuple(masked_image.shape)} and {tuple(mask.shape)}")
        mask = mask.to(masked_image.dtype)
        features = self.branch(masked_image, mask)
        added = [fuse(torch.cat([f, F.interpolate(mask, size=f.shape[-2:], mode="area")], 1))
                 for fuse, f in zip(self.fuse, features)]
        return super().forward(z, added=added)


class AsymmetricDecoderKL(nn.Module):
    """The decoding half of :class:`~minildm.models.autoencoder.AutoencoderKL` (``post_quant_conv`` and
    ``decoder``, same state-dict names) with an :class:`AsymmetricDecoder`: ``decode(z, masked_image, mask)``
    (B, embed_dim, h, w) -> (B, out_ch, h·f, w·f). It pairs with the encoder of the autoencoder whose
    decoder it continues."""

    def __init__(self, config: AutoencoderConfig, embed_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim or config.embed_dim
        self.post_quant_conv = nn.Conv2d(self.embed_dim, config.z_channels, kernel_size=1)
        self.decoder = AsymmetricDecoder(config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "AsymmetricDecoderKL":
        return cls(AutoencoderConfig.from_dict(config))

    def decode(self, z: Tensor, masked_image: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        return self.decoder(self.post_quant_conv(z), masked_image, mask)

    def paste(self, z: Tensor, images: Tensor, holes: Tensor) -> Tensor:
        """Inpainting's result: the decoded ``z`` (B, embed_dim, h, w), seeing the known pixels of ``images``
        (B, out_ch, H, W), inside ``holes`` (B, 1, H, W; 1 = missing) and ``images`` outside."""
        holes = holes.to(images.dtype)
        out = self.decode(z, images * (1 - holes), holes).clamp(-1, 1)
        return holes * out + (1 - holes) * images

    def forward(self, z: Tensor, masked_image: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        return self.decode(z, masked_image, mask)
