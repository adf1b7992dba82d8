"""The patch-based discriminator of the first stage (paper Sec. 3.1, following Esser et al. 2021;
CompVis ``taming.modules.discriminator``): a PatchGAN (Isola et al. 2017) that scores every
receptive-field patch of an image (B, 3, H, W) -> logits (B, 1, H', W'), and its losses

    L_D^hinge = E[relu(1 − D(x))] + E[relu(1 + D(x̂))],   L_adv = −E[D(x̂)] (for the autoencoder).

Taught in notebook 01.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ActNorm", "D_LOSSES", "NLayerDiscriminator", "adopt_weight", "hinge_d_loss", "vanilla_d_loss", "weights_init"]


class ActNorm(nn.Module):
    """Activation normalisation (Glow): per-channel affine map initialised from the first batch."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        self.loc.copy_(-mean)
        self.scale.copy_(1.0 / (std + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.initialized.item() == 0:
            self._initialize(x)
        return self.scale * (x + self.loc)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator of pix2pix (Isola et al. 2017) as used by taming-transformers / LDM.

    Layers: ``Conv(k4, s2, p1) -> LeakyReLU(0.2)``, then ``n_layers - 1`` times
    ``Conv(k4, s2, p1) -> BatchNorm -> LeakyReLU(0.2)`` (channels ``ndf * min(2**n, 8)``), then one
    such block with stride 1, and a final ``Conv(k4, s1, p1)`` to a single channel. The output is
    a map of logits, one per overlapping image patch.

    Patch map size for an H x W input: ``(H / 2**n_layers - 2, W / 2**n_layers - 2)`` (for H
    divisible by 2**n_layers), e.g. 32 px -> 2x2, 64 -> 6x6, 128 -> 14x14, 256 -> 30x30 with the
    default ``n_layers=3``. Receptive field of one logit: 16, 34, 70, 142 px for n_layers = 1, 2, 3,
    4 (the "70x70 PatchGAN"); see :meth:`receptive_field`. Inputs too small to give at least a
    1x1 map raise ValueError naming the largest usable ``n_layers`` (32 px works with 3 layers,
    16 px needs ``n_layers <= 2``).

    Shapes: (B, input_nc, H, W) -> (B, 1, h, w).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3,
                 use_actnorm: bool = False) -> None:
        super().__init__()
        for name, value in (("input_nc", input_nc), ("ndf", ndf), ("n_layers", n_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"NLayerDiscriminator: {name} must be a positive int, got {value!r}")
        norm_layer: Callable[[int], nn.Module] = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = use_actnorm  # BatchNorm has its own shift
        kw, padw = 4, 1
        sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw),
                                     nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
            sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kw, stride=2, padding=padw,
                                   bias=use_bias),
                         norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kw, stride=1, padding=padw,
                               bias=use_bias),
                     norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kw, stride=1, padding=padw)]
        self.main = nn.Sequential(*sequence)
        self.input_nc = input_nc
        self.n_layers = n_layers

    @staticmethod
    def output_size(size: int, n_layers: int = 3) -> int:
        """Side of the patch map for an input side ``size``."""
        for _ in range(n_layers):
            size = (size + 2 - 4) // 2 + 1
        return size - 2

    @staticmethod
    def receptive_field(n_layers: int = 3) -> int:
        """Input pixels seen by one output logit: r <- r * stride + (kernel - stride), backwards."""
        r = 1
        for stride in [1, 1] + [2] * n_layers:
            r = r * stride + (4 - stride)
        return r

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.input_nc:
            raise ValueError(f"NLayerDiscriminator expects (B, {self.input_nc}, H, W), "
                             f"got {tuple(x.shape)}")
        side = min(x.shape[-2:])
        if self.output_size(side, self.n_layers) < 1:
            usable = max([n for n in range(1, 9) if self.output_size(side, n) >= 1], default=0)
            raise ValueError(f"a {side} px input is too small for a PatchGAN with n_layers="
                             f"{self.n_layers}; use n_layers <= {usable} (or larger images)")
        return self.main(x)


def weights_init(m: nn.Module) -> None:
    """pix2pix initialisation: conv weights ~ N(0, 0.02); norm scale ~ N(1, 0.02), shift 0.

    Use as ``discriminator.apply(weights_init)``.
    """
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0.0)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge loss of the discriminator: ½ (E[relu(1 − D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Non-saturating GAN loss of the discriminator: ½ (E[softplus(−D(x))] + E[softplus(D(x̂))]),
    i.e. binary cross-entropy with labels 1 for real, 0 for fake."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``value`` before step ``threshold``, ``weight`` from then on (switches the GAN term on)."""
    return value if global_step < threshold else weight


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}
