"""Losses of the first stage: LPIPS, a PatchGAN discriminator and their combination.

The autoencoder of a latent diffusion model (Rombach et al. 2022, Sec. 3.1 and App. G) is trained
with a *perceptual* reconstruction loss plus a *patch-based adversarial* loss, so that its
reconstructions stay on the image manifold instead of blurring (which a pure L1/L2 loss does),
and with a small KL or vector-quantisation regulariser on the latent.  The code follows
``ldm/modules/losses/contperceptual.py`` and ``vqperceptual.py`` of CompVis and the
``taming-transformers`` discriminator, with the same names so the two can be read side by side.

Contents
--------
* :class:`LPIPS` -- the learned perceptual metric of Zhang et al. (CVPR 2018) with real
  ImageNet backbone weights, loaded offline (see :func:`lpips_backbone_weights`).
* :class:`NLayerDiscriminator` -- the pix2pix PatchGAN, :func:`weights_init`.
* :func:`hinge_d_loss`, :func:`vanilla_d_loss`, :func:`adopt_weight`.
* :class:`LPIPSWithDiscriminator` (KL autoencoder) and :class:`VQLPIPSWithDiscriminator` (VQ).

Taught in notebook 01.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_number
from .discriminator import D_LOSSES, NLayerDiscriminator, adopt_weight, weights_init
from .lpips import LPIPS, check_image_pair, check_lpips_net

__all__ = [
    "LPIPSWithDiscriminator",
    "VQLPIPSWithDiscriminator",
]

# ----------------------------------------------------------------------------------------------
# LPIPS with offline backbone weights
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# PatchGAN discriminator (pix2pix / taming-transformers)
# ----------------------------------------------------------------------------------------------


_PIXEL_LOSSES = ("l1", "l2")


# ----------------------------------------------------------------------------------------------
# Combined first-stage losses
# ----------------------------------------------------------------------------------------------

class _PerceptualAdversarialLoss(nn.Module):
    """Shared parts of the KL and VQ losses: pixel + LPIPS reconstruction term, PatchGAN, λ."""

    def __init__(self, disc_start: int, pixelloss_weight: float, pixel_loss: str,
                 disc_num_layers: int, disc_in_channels: int, disc_factor: float, disc_weight: float,
                 perceptual_weight: float, disc_loss: str, lpips_net: str, disc_ndf: int,
                 use_actnorm: bool) -> None:
        super().__init__()
        if not isinstance(disc_start, int) or disc_start < 0:
            raise ValueError(f"disc_start must be an int >= 0, got {disc_start!r}")
        if pixel_loss not in _PIXEL_LOSSES:
            raise ValueError(f"unknown pixel_loss {pixel_loss!r}: choose 'l1' or 'l2'")
        if disc_loss not in D_LOSSES:
            raise ValueError(f"unknown disc_loss {disc_loss!r}: choose 'hinge' or 'vanilla'")
        check_lpips_net(lpips_net)
        for name, value in (("pixelloss_weight", pixelloss_weight), ("disc_factor", disc_factor),
                            ("disc_weight", disc_weight), ("perceptual_weight", perceptual_weight)):
            check_number(name, value, minimum=0)
        self.pixel_weight = float(pixelloss_weight)
        self.pixel_loss = pixel_loss
        self.perceptual_weight = float(perceptual_weight)
        self.discriminator_iter_start = disc_start
        self.disc_factor = float(disc_factor)
        self.discriminator_weight = float(disc_weight)
        self.disc_loss_name = disc_loss
        self.disc_loss = D_LOSSES[disc_loss]
        # Components are only built when their weight is non-zero.
        self.perceptual_loss: LPIPS | None = LPIPS(lpips_net) if self.perceptual_weight > 0 else None
        self.discriminator: NLayerDiscriminator | None = None
        if self.use_discriminator:
            self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, ndf=disc_ndf,
                                                     n_layers=disc_num_layers,
                                                     use_actnorm=use_actnorm)
            self.discriminator.apply(weights_init)

    @property
    def use_discriminator(self) -> bool:
        """Whether an adversarial term exists (``disc_weight > 0`` and ``disc_factor > 0``)."""
        return self.discriminator_weight > 0 and self.disc_factor > 0

    def reconstruction_loss(self, inputs: Tensor, reconstructions: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel L_rec = |x − x̂| (or (x − x̂)², ``pixel_loss='l2'``) · w_pix + w_p · LPIPS(x, x̂).

        As in CompVis, the per-image LPIPS value is broadcast onto every pixel.
        Returns ``(rec_loss (B, C, H, W), p_loss (B,))``.
        """
        diff = inputs.contiguous() - reconstructions.contiguous()
        rec_loss = diff.abs() if self.pixel_loss == "l1" else diff.pow(2)
        rec_loss = self.pixel_weight * rec_loss
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + self.perceptual_weight * p_loss.view(-1, 1, 1, 1)
        else:
            p_loss = torch.zeros(inputs.shape[0], device=inputs.device)
        return rec_loss, p_loss

    def calculate_adaptive_weight(self, nll_loss: Tensor, g_loss: Tensor,
                                  last_layer: Tensor | None = None) -> Tensor:
        r"""λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_adv‖ + δ), δ = 1e-4, clamped to [0, 1e4], × disc_weight.

        Eq. (25) of Esser et al. (taming transformers), also used by LDM: balances the adversarial
        gradient against the reconstruction gradient at the decoder's last layer ``G_L``
        (``model.get_last_layer()``, the weight of ``decoder.conv_out``). The result is detached.

        Falls back to 0 (no adversarial term) when it cannot be computed: ``last_layer`` is None,
        autograd is disabled (evaluation), or one of the losses does not depend on ``last_layer``.
        """
        zero = torch.zeros((), device=nll_loss.device)
        if (last_layer is None or not torch.is_grad_enabled() or not nll_loss.requires_grad
                or not g_loss.requires_grad):
            return zero
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True, allow_unused=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True, allow_unused=True)[0]
        if nll_grads is None or g_grads is None:
            return zero
        d_weight = torch.norm(nll_grads.float()) / (torch.norm(g_grads.float()) + 1e-4)
        d_weight = torch.clamp(d_weight, 0.0, 1e4).detach()
        return d_weight * self.discriminator_weight

    def _generator_adversarial(self, reconstructions: Tensor, nll_loss: Tensor, global_step: int,
                               last_layer: Tensor | None) -> tuple[Tensor, Tensor, float]:
        """(g_loss, d_weight, disc_factor). The discriminator is not run while its factor is 0."""
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        zero = torch.zeros((), device=reconstructions.device)
        if self.discriminator is None or disc_factor == 0:
            return zero, zero, disc_factor
        logits_fake = self.discriminator(reconstructions.contiguous())
        g_loss = -torch.mean(logits_fake.float())
        d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer=last_layer)
        return g_loss, d_weight, disc_factor

    def _discriminator_step(self, inputs: Tensor, reconstructions: Tensor, global_step: int,
                            split: str) -> tuple[Tensor, dict[str, Tensor]]:
        if self.discriminator is None:
            raise ValueError("optimizer_idx=1 (discriminator step) but this loss has no "
                             "discriminator (disc_weight or disc_factor is 0)")
        logits_real = self.discriminator(inputs.contiguous().detach()).float()
        logits_fake = self.discriminator(reconstructions.contiguous().detach()).float()
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {f"{split}/disc_loss": d_loss.clone().detach().mean(),
               f"{split}/logits_real": logits_real.detach().mean(),
               f"{split}/logits_fake": logits_fake.detach().mean()}
        return d_loss, log

    @staticmethod
    def _generator_log(split: str, loss: Tensor, nll_loss: Tensor, rec_loss: Tensor, p_loss: Tensor,
                       d_weight: Tensor, disc_factor: float, g_loss: Tensor,
                       **extra: Tensor) -> dict[str, Tensor]:
        """The autoencoder step's log (CompVis keys), detached; ``extra`` adds the regulariser's terms."""
        log = {"total_loss": loss.detach().mean(), **extra, "nll_loss": nll_loss.detach().mean(),
               "rec_loss": rec_loss.detach().mean(), "p_loss": p_loss.detach().mean(),
               "d_weight": d_weight.detach(), "disc_factor": torch.tensor(disc_factor),
               "g_loss": g_loss.detach().mean()}
        return {f"{split}/{k}": v for k, v in log.items()}

    @staticmethod
    def _check_forward(inputs: Tensor, reconstructions: Tensor, optimizer_idx: int) -> None:
        check_image_pair(inputs, reconstructions, channels=None, min_size=1, what="the loss")
        if optimizer_idx not in (0, 1):
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), "
                             f"got {optimizer_idx!r}")


class LPIPSWithDiscriminator(_PerceptualAdversarialLoss):
    r"""First-stage loss of the KL-regularised autoencoder (CompVis ``contperceptual.py``).

    Autoencoder step (``optimizer_idx=0``)::

        L_rec = w_pix·|x − x̂| (or squared) + w_p·LPIPS(x, x̂)           per pixel, (B, C, H, W)
        nll   = L_rec / exp(s) + s                                      s = learned log-variance
        L     = Σ nll / B + w_kl · Σ KL(q(z|x) ‖ N(0, I)) / B + λ · f_disc · (−E[D(x̂)])

    Following CompVis, the NLL and KL are *summed* over pixels / latent elements and divided by
    the batch size (``torch.sum(nll) / nll.shape[0]``); hence the small default ``kl_weight=1e-6``.
    ``s`` (``self.logvar``, an nn.Parameter initialised to ``logvar_init``) is trained by the
    autoencoder's optimizer. λ is :meth:`calculate_adaptive_weight`; ``f_disc`` is ``disc_factor``
    from step ``disc_start`` on and 0 before (the discriminator is not even run then).

    Discriminator step (``optimizer_idx=1``): ``f_disc · hinge_d_loss(D(x), D(sg[x̂]))``.

    ``perceptual_weight=0`` builds no LPIPS network; ``disc_weight=0`` (or ``disc_factor=0``)
    builds no discriminator (``use_discriminator`` is False). With both zero and
    ``pixel_loss='l2'`` this is the plain L2 (+KL) baseline.

    ``forward`` returns ``(loss, log)``; log keys are ``"{split}/name"`` as in CompVis (total_loss,
    logvar, kl_loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss; for the
    discriminator step disc_loss, logits_real, logits_fake), all detached scalar tensors.
    """

    def __init__(self, disc_start: int, logvar_init: float = 0.0, kl_weight: float = 1e-6,
                 pixelloss_weight: float = 1.0, pixel_loss: str = "l1", disc_num_layers: int = 3,
                 disc_in_channels: int = 3, disc_factor: float = 1.0, disc_weight: float = 0.5,
                 perceptual_weight: float = 1.0, disc_loss: str = "hinge", lpips_net: str = "alex",
                 disc_ndf: int = 64, use_actnorm: bool = False) -> None:
        super().__init__(disc_start, pixelloss_weight, pixel_loss, disc_num_layers, disc_in_channels,
                         disc_factor, disc_weight, perceptual_weight, disc_loss, lpips_net, disc_ndf,
                         use_actnorm)
        check_number("kl_weight", kl_weight, minimum=0)
        self.kl_weight = float(kl_weight)
        self.logvar = nn.Parameter(torch.ones(()) * float(logvar_init))

    def forward(self, inputs: Tensor, reconstructions: Tensor, posteriors: Any, optimizer_idx: int,
                global_step: int, last_layer: Tensor | None = None,
                split: str = "train") -> tuple[Tensor, dict[str, Tensor]]:
        """See the class docstring. ``posteriors`` needs ``.kl() -> (B,)``
        (a DiagonalGaussianDistribution); ``last_layer`` is ``model.get_last_layer()``."""
        self._check_forward(inputs, reconstructions, optimizer_idx)
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, split)

        rec_loss, p_loss = self.reconstruction_loss(inputs, reconstructions)
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]
        g_loss, d_weight, disc_factor = self._generator_adversarial(
            reconstructions, nll_loss, global_step, last_layer)
        loss = nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss
        log = self._generator_log(split, loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss,
                                  logvar=self.logvar.detach().clone(), kl_loss=kl_loss.detach().mean())
        return loss, log


class VQLPIPSWithDiscriminator(_PerceptualAdversarialLoss):
    r"""First-stage loss of the VQ-regularised autoencoder (taming / CompVis ``vqperceptual.py``).

    Autoencoder step::

        L = mean(w_pix·|x − x̂| + w_p·LPIPS(x, x̂)) + λ · f_disc · (−E[D(x̂)]) + w_cb · L_codebook

    with ``L_codebook = ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖²`` from the quantizer. Unlike the KL loss,
    the reconstruction term is a *mean* (taming's convention) and there is no learned variance.
    Discriminator step and all switches as in :class:`LPIPSWithDiscriminator`; log keys
    total_loss, quant_loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss.
    """

    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 pixel_loss: str = "l1", disc_num_layers: int = 3, disc_in_channels: int = 3,
                 disc_factor: float = 1.0, disc_weight: float = 1.0, perceptual_weight: float = 1.0,
                 disc_loss: str = "hinge", lpips_net: str = "alex", disc_ndf: int = 64,
                 use_actnorm: bool = False) -> None:
        super().__init__(disc_start, pixelloss_weight, pixel_loss, disc_num_layers, disc_in_channels,
                         disc_factor, disc_weight, perceptual_weight, disc_loss, lpips_net, disc_ndf,
                         use_actnorm)
        check_number("codebook_weight", codebook_weight, minimum=0)
        self.codebook_weight = float(codebook_weight)

    def forward(self, codebook_loss: Tensor, inputs: Tensor, reconstructions: Tensor,
                optimizer_idx: int, global_step: int, last_layer: Tensor | None = None,
                split: str = "train") -> tuple[Tensor, dict[str, Tensor]]:
        """See the class docstring. ``codebook_loss`` is the quantizer's loss (scalar)."""
        self._check_forward(inputs, reconstructions, optimizer_idx)
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, split)

        rec_loss, p_loss = self.reconstruction_loss(inputs, reconstructions)
        nll_loss = torch.mean(rec_loss)
        g_loss, d_weight, disc_factor = self._generator_adversarial(
            reconstructions, nll_loss, global_step, last_layer)
        codebook_loss = torch.as_tensor(codebook_loss, device=inputs.device)
        loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
        log = self._generator_log(split, loss, nll_loss, rec_loss, p_loss, d_weight, disc_factor, g_loss,
                                  quant_loss=codebook_loss.detach().mean())
        return loss, log
