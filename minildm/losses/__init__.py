"""The first stage's training objective (paper Sec. 3.1, App. G; notebook 01).

* :mod:`minildm.losses.lpips`: the perceptual metric LPIPS, with offline backbone weights
* :mod:`minildm.losses.discriminator`: the PatchGAN discriminator and its hinge loss
* :mod:`minildm.losses.perceptual`: ``LPIPSWithDiscriminator`` (KL) and ``VQLPIPSWithDiscriminator``:
  L1 + LPIPS + adaptive-weight adversarial term + KL or codebook loss
"""
from .discriminator import NLayerDiscriminator, adopt_weight, hinge_d_loss, vanilla_d_loss
from .lpips import LPIPS, LPIPS_NETS, get_lpips
from .perceptual import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator

__all__ = ["LPIPS", "LPIPS_NETS", "LPIPSWithDiscriminator", "NLayerDiscriminator", "VQLPIPSWithDiscriminator",
           "adopt_weight", "get_lpips", "hinge_d_loss", "vanilla_d_loss"]
