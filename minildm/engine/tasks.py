"""Training tasks for :class:`minildm.engine.trainer.Trainer`.

:class:`AutoencoderTask` is the first stage's training step (CompVis
``AutoencoderKL.training_step`` / ``VQModel.training_step``, taming's VQGAN): two optimizers
that alternate every step,

* ``"ae"`` (optimizer_idx 0): encoder, decoder, quant convs (+ codebook) and the loss's own
  parameters outside its discriminator (the learned log-variance ``logvar`` of the KL loss)
  minimise  L_rec + w_kl·KL (or + L_VQ) + λ·f_disc·(−E[D(x̂)]);
* ``"disc"`` (optimizer_idx 1, only when the loss has a discriminator): the PatchGAN D minimises
  the hinge loss  E[relu(1 − D(x))] + E[relu(1 + D(sg[x̂]))].

Both use Adam(lr, betas=(0.5, 0.9)) as in CompVis. The discriminator step reuses the detached
reconstruction x̂ of the autoencoder step of the same batch instead of a second forward pass, and
is skipped entirely before ``disc_start`` (its loss is multiplied by 0 there anyway).

The autoencoder task is taught in notebook 01, the latent diffusion task in notebooks 03–05.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..checks import check_number
from ..diffusion.process import check_loss_weighting

__all__ = ["AutoencoderTask", "LatentDiffusionTask", "lr_at", "lr_schedule"]


def _is_vq(model: nn.Module) -> bool:
    from ..models.autoencoder import VQModel

    return isinstance(model, VQModel)


class AutoencoderTask:
    """First-stage training: ``model`` (AutoencoderKL or VQModel) with ``loss``
    (LPIPSWithDiscriminator or VQLPIPSWithDiscriminator).

    Args:
        model: the autoencoder.
        loss: the matching loss module (KL loss for AutoencoderKL, VQ loss for VQModel).
        lr: Adam learning rate of both optimizers.
        betas: Adam betas; (0.5, 0.9) as in CompVis/taming.

    ``training_step(batch, step, name)`` takes ``batch["image"]`` (B, C, H, W) in [-1, 1] and
    returns ``(loss, logs)``; logs use CompVis' ``train/...`` names, plus ``train/perplexity``
    and ``train/codebook_usage`` for VQ.
    """

    progress_keys = ("train/rec_loss", "train/p_loss")

    def __init__(self, model: nn.Module, loss: nn.Module, lr: float,
                 betas: tuple[float, float] = (0.5, 0.9)) -> None:
        if not isinstance(model, nn.Module) or not hasattr(model, "get_last_layer"):
            raise TypeError("model must be an AutoencoderKL or VQModel (an nn.Module with get_last_layer()), "
                            f"got {type(model).__name__}")
        check_number("lr", lr, minimum=0, strict=True)
        if len(tuple(betas)) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.vq = _is_vq(model)
        from ..losses.perceptual import VQLPIPSWithDiscriminator

        loss_is_vq = isinstance(loss, VQLPIPSWithDiscriminator)
        if loss_is_vq != self.vq:
            raise ValueError(f"{type(model).__name__} needs "
                             f"{'VQLPIPSWithDiscriminator' if self.vq else 'LPIPSWithDiscriminator'}, "
                             f"got {type(loss).__name__}")
        self.model = model
        self.loss = loss
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self._cache: dict[str, Any] | None = None

    # -- the Trainer's interface ------------------------------------------------------
    @property
    def use_discriminator(self) -> bool:
        return bool(getattr(self.loss, "use_discriminator", False)) and self.discriminator is not None

    @property
    def discriminator(self) -> nn.Module | None:
        return getattr(self.loss, "discriminator", None)

    @property
    def optimizer_names(self) -> tuple[str, ...]:
        return ("ae", "disc") if self.use_discriminator else ("ae",)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "loss": self.loss}

    def ae_parameters(self) -> list[nn.Parameter]:
        """Autoencoder + the loss's trainable parameters outside the discriminator (``logvar``)."""
        disc = {id(p) for p in self.discriminator.parameters()} if self.discriminator is not None else set()
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for p in self.loss.parameters() if p.requires_grad and id(p) not in disc]
        return params

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"ae": torch.optim.Adam(self.ae_parameters(), lr=self.lr, betas=self.betas)}
        if self.use_discriminator:
            opts["disc"] = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas)
        return opts

    def training_step(self, batch: Any, step: int, name: str) -> tuple[torch.Tensor, dict[str, Any]] | None:
        x = batch["image"] if isinstance(batch, dict) else batch
        if name == "ae":
            return self._autoencoder_step(x, step)
        if name == "disc":
            if step < int(getattr(self.loss, "discriminator_iter_start", 0)):
                return None  # f_disc = 0 before disc_start: nothing to learn yet
            return self._discriminator_step(x, step)
        raise ValueError(f"unknown optimizer name {name!r}; this task has {self.optimizer_names}")

    # -- the two steps ----------------------------------------------------------------
    def _autoencoder_step(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        # D's parameters get no gradient from the generator loss (Lightning's toggle_optimizer).
        with _frozen(self.discriminator.parameters() if self.discriminator is not None else ()):
            if self.vq:
                xrec, qloss, info = self.model(x)
                loss, log = self.loss(qloss, x, xrec, 0, step, last_layer=self.model.get_last_layer(),
                                      split="train")
                log = dict(log)
                log["train/perplexity"] = info["perplexity"]
                log["train/codebook_usage"] = info["usage"]
            else:
                xrec, posterior = self.model(x)
                loss, log = self.loss(x, xrec, posterior, 0, step, last_layer=self.model.get_last_layer(),
                                      split="train")
        if self.use_discriminator:
            self._cache = {"step": step, "x": x, "xrec": xrec.detach()}
        return loss, dict(log)

    def _discriminator_step(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        cache = self._cache
        if cache is not None and cache["step"] == step and cache["x"] is x:
            xrec = cache["xrec"]
        else:  # called without the "ae" step of this batch: reconstruct once, without gradients
            with torch.no_grad():
                xrec = self.model(x)[0]
        self._cache = None
        loss, log = self.loss(*self._disc_args(x, xrec), 1, step, last_layer=None, split="train")
        return loss, dict(log)

    def _disc_args(self, x: torch.Tensor, xrec: torch.Tensor) -> tuple[Any, ...]:
        if self.vq:
            return (torch.zeros((), device=x.device), x, xrec)
        return (x, xrec, None)


class _frozen:
    """Context: ``requires_grad=False`` on the given parameters, restored on exit."""

    def __init__(self, params: Iterator[nn.Parameter] | Sequence[nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for p in self.params:
            p.requires_grad_(True)


def lr_at(lr: float, step: int, warmup_steps: int = 0, decay_steps: int | None = None,
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate at ``step`` (0-based): ``lr · min(1, (step+1)/warmup_steps)`` during warm-up,
    then, with ``decay_steps``, a cosine from ``lr`` down to ``min_lr_ratio · lr`` over the steps
    up to ``decay_steps`` (constant after it)."""
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if decay_steps is not None and (not isinstance(decay_steps, int) or isinstance(decay_steps, bool)
                                    or decay_steps <= warmup_steps):
        raise ValueError(f"decay_steps must be an integer > warmup_steps ({warmup_steps}) or None, got {decay_steps!r}")
    if not 0.0 <= float(min_lr_ratio) <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay_steps is None:
        return lr
    progress = min(1.0, (step - warmup_steps) / (decay_steps - warmup_steps))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_schedule(recipe: dict[str, Any]) -> dict[str, Any]:
    """The :class:`LatentDiffusionTask` schedule arguments of a training recipe: its ``warmup_steps``
    and, when it has a ``min_lr_ratio``, a cosine decay over all its ``steps``."""
    warmup = int(recipe.get("warmup_steps") or 0)
    ratio = recipe.get("min_lr_ratio")
    decay = recipe["steps"] if ratio is not None and recipe["steps"] > warmup else None
    return {"warmup_steps": warmup, "decay_steps": decay, "min_lr_ratio": ratio or 0.0}


class LatentDiffusionTask:
    """Train the UNet (and the conditioner τ_θ, if any) of a :class:`~minildm.diffusion.ldm.LatentDiffusion`
    with the simple loss (paper Eq. 2), ‖ε − ε_θ(z_t, t, τ_θ(y))‖².

    Batches hold ``"latent"`` (B, c, h, w): scaled latents encoded once beforehand (see
    :class:`minildm.engine.batches.LatentBatches`), or ``"image"`` (B, 3, H, W), encoded here by the frozen
    first stage; a conditional model also reads ``"cond"`` (the conditions y), a "concat" model
    ``"concat"`` (its spatial condition y, turned into c_concat by the model's concat stage κ). Conditioning dropout
    replaces each condition by ∅ with probability ``p_uncond`` (classifier-free guidance needs
    both). Timesteps, noise and dropout come from torch's global RNG, which checkpoints save, so
    resuming is exact. With ``per_sample_rng`` they come from the batch's
    :class:`~minildm.engine.batches.BatchRandom` instead (one draw per sample of the global batch), which
    makes data-parallel and accumulated runs equal to a single-process run with the same global
    batch. ``snr_gamma``, ``loss_weighting``: the loss weighting, min-SNR-γ or the capped x̂_0 weight
    (see :meth:`~minildm.diffusion.process.GaussianDiffusion.training_losses`). AdamW on the UNet's and the
    conditioner's parameters, at the learning rate of :func:`lr_at` (``warmup_steps`` of linear
    warm-up as in the CompVis configs, then a cosine decay to ``min_lr_ratio`` · lr over
    ``decay_steps`` if given, else constant).
    """

    optimizer_names = ("unet",)
    progress_keys = ("train/loss",)

    def __init__(self, ldm: nn.Module, lr: float, weight_decay: float = 0.0, p_uncond: float = 0.1,
                 per_sample_rng: bool = False, snr_gamma: float | None = None, warmup_steps: int = 0,
                 decay_steps: int | None = None, min_lr_ratio: float = 0.1,
                 loss_weighting: str = "min_snr") -> None:
        check_number("lr", lr, minimum=0, strict=True)
        lr_at(lr, 0, warmup_steps, decay_steps, min_lr_ratio)  # validates the schedule
        self.warmup_steps, self.decay_steps, self.min_lr_ratio = int(warmup_steps), decay_steps, float(min_lr_ratio)
        self._optimizer: torch.optim.Optimizer | None = None
        if not isinstance(p_uncond, (int, float)) or isinstance(p_uncond, bool) or not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be a probability in [0, 1], got {p_uncond!r}")
        self.ldm = ldm
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.p_uncond = float(p_uncond)
        self.per_sample_rng = bool(per_sample_rng)
        check_loss_weighting(snr_gamma, loss_weighting)
        self.snr_gamma = snr_gamma
        self.loss_weighting = loss_weighting

    def modules(self) -> dict[str, nn.Module]:
        mods = {"unet": self.ldm.model}
        if getattr(self.ldm, "cond_stage_model", None) is not None:
            mods["cond_stage"] = self.ldm.cond_stage_model
        concat = getattr(self.ldm, "concat_stage_model", None)
        if concat is not None and any(True for _ in concat.parameters()):  # e.g. a SpatialRescaler's channel mapper
            mods["concat_stage"] = concat
        return mods

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [p for m in self.modules().values() for p in m.parameters()]
        self._optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay,
                                            foreach=True)  # one multi-tensor kernel, also on CPU
        return {"unet": self._optimizer}

    def training_step(self, batch: Any, step: int, name: str) -> tuple[torch.Tensor, dict[str, Any]]:
        lr = lr_at(self.lr, step, self.warmup_steps, self.decay_steps, self.min_lr_ratio)
        if self._optimizer is not None:  # a function of the step alone, so resuming is exact
            for group in self._optimizer.param_groups:
                group["lr"] = lr
        z = batch["latent"] if "latent" in batch else self.ldm.encode_first_stage(batch["image"])
        kwargs: dict[str, Any] = {}
        rng = batch.get("rng")
        if rng is not None:  # per-sample draws, independent of how the global batch is split
            kwargs["t"] = rng.randint(self.ldm.diffusion.num_timesteps)
            kwargs["noise"] = rng.randn(*z.shape[1:]).to(z.dtype)
        if getattr(self.ldm, "cond_stage_model", None) is not None:
            if "cond" not in batch:
                raise ValueError("a conditional model trains on batches with a 'cond' entry (the conditions y)")
            drop = (rng.rand().cpu() if rng is not None else torch.rand(z.shape[0])) < self.p_uncond
            kwargs["context"], mask = self.ldm.get_learned_conditioning(batch["cond"], drop=drop)
            if mask is not None:
                kwargs["context_mask"] = mask
        elif batch.get("context") is not None:
            kwargs["context"] = batch["context"]
        if batch.get("concat") is not None:  # a spatial condition y -> c_concat = κ(y) (notebook 06)
            kwargs["c_concat"] = self.ldm.get_concat_conditioning(batch["concat"])
        if self.snr_gamma is not None:
            kwargs["snr_gamma"] = self.snr_gamma
            kwargs["loss_weighting"] = self.loss_weighting
        loss = self.ldm.loss(z, **kwargs)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"the diffusion loss is {loss.detach().item()} at step {step}; lower the learning "
                                     "rate or enable grad clipping (the last checkpoint is untouched)")
        return loss, {"train/loss": loss.detach()}
