"""The latent diffusion model (paper Sec. 3.2): a frozen first stage, a UNet, a diffusion process.

    z = s · E(x)                         the scaled latent of a frozen autoencoder (f = 1: z = x)
    L_LDM = E_{z, ε, t} ‖ε − ε_θ(z_t, t)‖²                                   (paper Eq. 2)
    x̂ = D(ẑ_0 / s)                       decode a sample of the reverse process

The scale factor s = 1 / std(z) over the training latents gives the diffusion model inputs of
unit variance, which its noise schedule assumes: ᾱ_T ≈ 0 must mean "pure noise" *relative to the
data*. Stable Diffusion's 0.18215 is exactly this number for its KL-f8 VAE (whose latents have a
standard deviation of about 5.5); CompVis computes it from the first training batch
(``scale_by_std``). Here :meth:`LatentDiffusion.compute_scale_factor` computes it from any number of
images.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .guidance import guided_model
from .process import GaussianDiffusion
from ..checks import check_number
from .samplers.base import Callback, get_sampler, initial_noise

__all__ = ["CONDITIONING_KEYS", "LatentDiffusion"]

#: How the UNet sees a condition (CompVis ``conditioning_key``): cross-attention to the tokens
#: τ_θ(y) (``context``), a spatial condition concatenated to the latent's channels (``c_concat``), or both.
CONDITIONING_KEYS = ("crossattn", "concat", "hybrid")


class LatentDiffusion(nn.Module):
    """A UNet ε_θ trained in the latent space of a frozen first stage.

    Args:
        first_stage: :class:`~minildm.AutoencoderKL`, :class:`~minildm.VQModel` or
            :class:`~minildm.models.autoencoder.IdentityFirstStage` (pixel space); frozen and in eval mode.
        unet: :class:`~minildm.UNetModel` with ``out_channels`` = the latent channels c and
            ``in_channels`` = c (``"crossattn"``) or c + the channels of ``c_concat`` (``"concat"``, ``"hybrid"``).
        diffusion: the :class:`~minildm.diffusion.process.GaussianDiffusion` process.
        image_size: H = W of the images; the latent is (c, H/f, W/f).
        scale_factor: s (see the module docstring); 1.0 until :meth:`compute_scale_factor`.

        cond_stage_model: the conditioner τ_θ (:mod:`minildm.conditioning.base`), trained with the UNet;
            None for an unconditional model.
        conditioning_key: ``"crossattn"`` (the default: τ_θ(y) through cross-attention, or nothing),
            ``"concat"`` (a spatial condition ``c_concat`` (B, C_c, h, w), e.g. a masked image's latent,
            concatenated to z_t's channels, paper Sec. 3.3 / 4.5) or ``"hybrid"`` (both).
        concat_stage_model: κ, a :class:`~minildm.conditioning.concat.ConcatConditioner` that turns a spatial
            condition y (a low-resolution image, a masked image, a segmentation map) into ``c_concat``
            (notebook 06); without one, ``c_concat`` is passed as a tensor.

    Shapes: images (B, 3, H, W) in [-1, 1]; latents (B, c, H/f, W/f); c_concat (B, C_c, H/f, W/f).
    """

    def __init__(self, first_stage: nn.Module, unet: nn.Module, diffusion: GaussianDiffusion, image_size: int,
                 scale_factor: float = 1.0, cond_stage_model: nn.Module | None = None,
                 conditioning_key: str = "crossattn", concat_stage_model: nn.Module | None = None) -> None:
        super().__init__()
        self.first_stage_model = first_stage.eval()
        for p in self.first_stage_model.parameters():
            p.requires_grad_(False)
        self.model = unet
        self.diffusion = diffusion
        self.image_size = int(image_size)
        f = int(getattr(first_stage, "f", 1))
        #: the first stage's downsampling factor (1 in pixel space)
        self.f = f
        if self.image_size % f:
            raise ValueError(f"image_size {image_size} is not divisible by the first stage's f = {f}")
        c = int(getattr(first_stage.config, "embed_dim", None) or getattr(first_stage.config, "in_channels", 3))
        self.latent_shape = (c, self.image_size // f, self.image_size // f)
        if conditioning_key not in CONDITIONING_KEYS:
            raise ValueError(f"unknown conditioning_key {conditioning_key!r}: "
                             f"choose one of {', '.join(CONDITIONING_KEYS)}")
        self.conditioning_key = conditioning_key
        unet_c = unet.config
        if unet_c.out_channels != c:
            raise ValueError(f"the UNet must return the {c} latent channels, it has out_channels={unet_c.out_channels}")
        if conditioning_key == "crossattn" and unet_c.in_channels != c:
            raise ValueError(f"the UNet must take the {c} latent channels, it has in_channels={unet_c.in_channels} "
                             "(a spatial condition c_concat needs conditioning_key='concat' or 'hybrid')")
        if conditioning_key != "crossattn" and unet_c.in_channels <= c:
            raise ValueError(f"with conditioning_key={conditioning_key!r} the UNet's in_channels count the {c} latent "
                             f"channels + the condition channels of c_concat, so must exceed {c}: got "
                             f"in_channels={unet_c.in_channels}")
        #: C_c, the channels of the spatial condition c_concat (0 without one)
        self.concat_channels = unet_c.in_channels - c
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.cond_stage_model = cond_stage_model
        self.concat_stage_model = concat_stage_model
        if concat_stage_model is not None:
            if conditioning_key == "crossattn":
                raise ValueError("a concat_stage_model needs conditioning_key='concat' or 'hybrid'")
            need = concat_stage_model.channels(c)
            if need != self.concat_channels:
                raise ValueError(f"the {concat_stage_model.kind!r} condition has {need} channels, the UNet takes "
                                 f"{c} latent + {self.concat_channels} condition channels (in_channels="
                                 f"{unet_c.in_channels}); expected in_channels={c + need}")
        if cond_stage_model is not None:
            width = getattr(cond_stage_model, "embed_dim", None)
            if unet_c.context_dim is None or width != unet_c.context_dim:
                raise ValueError(f"the conditioner gives tokens of width {width}, the UNet's cross-attention "
                                 f"expects context_dim={unet_c.context_dim}")

    @property
    def conditional(self) -> bool:
        """Whether the model has a conditioner τ_θ (class, layout, text)."""
        return self.cond_stage_model is not None

    def get_learned_conditioning(self, cond: Any, drop: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """τ_θ(y) (CompVis name): (context (B, L, d), mask (B, L) or None); ``drop`` (B,) bool
        replaces those conditions by ∅ (conditioning dropout)."""
        if self.cond_stage_model is None:
            raise ValueError("this model is unconditional: it has no cond_stage_model")
        return self.cond_stage_model(cond, drop=drop)

    def get_concat_conditioning(self, y: Any) -> Tensor:
        """κ(y): the spatial condition y (a dict of tensors, see :mod:`minildm.conditioning.concat`) as
        ``c_concat`` (B, C_c, h, w) on this model's device."""
        return self._concat_at(y, self.latent_shape[1:])

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        self.first_stage_model.eval()  # always frozen
        return self

    # -- first stage -----------------------------------------------------------------------
    @torch.no_grad()
    def encode_first_stage(self, x: Tensor) -> Tensor:
        """z = s · E(x) (the posterior's mode): (B, 3, H, W) -> (B, c, H/f, W/f)."""
        return self.first_stage_model.encode_latent(x) * self.scale_factor.to(x.dtype)

    @torch.no_grad()
    def decode_first_stage(self, z: Tensor) -> Tensor:
        """x̂ = D(z / s), clamped to [-1, 1]: (B, c, h, w) -> (B, 3, H, W)."""
        self._check_latent(z)
        return self.first_stage_model.decode(z / self.scale_factor.to(z.dtype)).clamp(-1, 1)

    @torch.no_grad()
    def compute_scale_factor(self, images: Tensor | Iterable[Tensor], batch_size: int = 32) -> float:
        """Set s = 1 / std(E(x)) over ``images`` (a tensor (N, 3, H, W) or an iterable of batches)."""
        device = self.scale_factor.device
        batches = images.split(batch_size) if isinstance(images, Tensor) else images
        zs = [self.first_stage_model.encode_latent(b.to(device)).float().flatten() for b in batches]
        if not zs:
            raise ValueError("compute_scale_factor needs at least one image")
        std = torch.cat(zs).std()
        if not torch.isfinite(std) or std <= 0:
            raise ValueError(f"latents have standard deviation {float(std)}; cannot scale them")
        self.scale_factor.fill_(1.0 / float(std))
        return float(self.scale_factor)

    def _check_latent(self, z: Tensor) -> None:
        if z.ndim != 4 or tuple(z.shape[1:2]) != self.latent_shape[:1]:
            raise ValueError(f"latents must have shape (B, {self.latent_shape[0]}, h, w), got {tuple(z.shape)}")

    def _concat_at(self, y: Any, hw: tuple[int, ...]) -> Tensor:
        """κ(y) on a latent grid ``hw`` (the training grid unless sampling at another size)."""
        if self.concat_stage_model is None:
            raise ValueError("this model has no concat_stage_model: pass c_concat as a tensor")
        device = self.scale_factor.device
        y = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in y.items()} if isinstance(y, dict) else y
        # the frozen encoder runs without gradients; a κ with weights (a channel mapper) trains with the UNet
        return self.concat_stage_model(y, tuple(hw), self.encode_first_stage)

    def _check_concat(self, c_concat: Tensor | None, n: int, hw: tuple[int, ...] | None = None) -> None:
        """ValueError unless ``c_concat`` is (n, C_c, h, w) for a "concat"/"hybrid" model and None otherwise."""
        if self.conditioning_key == "crossattn":
            if c_concat is not None:
                raise ValueError("c_concat needs a model with conditioning_key='concat' or 'hybrid', "
                                 "this one has 'crossattn'")
            return
        c, h, w = self.latent_shape
        if hw is not None:
            h, w = hw
        expected = (n, self.concat_channels, h, w)
        if c_concat is None:
            raise ValueError(f"this model (conditioning_key={self.conditioning_key!r}) needs c_concat "
                             f"of shape {expected}")
        if not isinstance(c_concat, Tensor) or c_concat.ndim != 4 or tuple(c_concat.shape[2:]) != (h, w) \
                or c_concat.shape[0] != n:
            raise ValueError(f"c_concat must have shape {expected}, got "
                             f"{tuple(c_concat.shape) if isinstance(c_concat, Tensor) else type(c_concat).__name__}")
        if c_concat.shape[1] != self.concat_channels:
            raise ValueError(f"the UNet expects {c + self.concat_channels} input channels = {c} latent channels + "
                             f"{self.concat_channels} condition channels, got c_concat with {c_concat.shape[1]} "
                             f"channels ({c} + {c_concat.shape[1]} = {c + c_concat.shape[1]})")

    def apply_model(self, z_t: Tensor, t: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                    c_concat: Tensor | None = None) -> Tensor:
        """One call of ε_θ (CompVis name): ε̂ = ε_θ([z_t, c_concat], t, τ_θ(y)), (B, c, h, w) -> (B, c, h, w).

        ``context`` (B, L, d) and ``context_mask`` (B, L) feed the cross-attention, ``c_concat``
        (B, C_c, h, w) is stacked onto z_t's channels ("concat" and "hybrid" models)."""
        self._check_latent(z_t)
        self._check_concat(c_concat, z_t.shape[0], tuple(z_t.shape[2:]))
        kwargs: dict[str, Tensor] = {}
        if context_mask is not None:
            kwargs["context_mask"] = context_mask
        if c_concat is not None:
            kwargs["c_concat"] = c_concat
        return self.model(z_t, t, context=context, **kwargs)

    # -- training ----------------------------------------------------------------------------
    def loss(self, z: Tensor, context: Tensor | None = None, generator: torch.Generator | None = None,
             c_concat: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Mean simple loss (paper Eq. 2) on a batch of *scaled latents* z (B, c, h, w); a
        conditional model takes ``context`` = τ_θ(y) (and ``context_mask``) as well, a "concat" or
        "hybrid" one the spatial condition ``c_concat`` (B, C_c, h, w)."""
        self._check_latent(z)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must have shape (B, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(z.shape)}")
        if context is not None:
            kwargs["context"] = context
        if c_concat is not None:
            kwargs["c_concat"] = c_concat
        return self.diffusion.training_losses(self.apply_model, z, generator=generator, **kwargs).mean()

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
               generator: torch.Generator | None = None, context: Tensor | None = None,
               guidance_scale: float = 1.0, uncond: Tensor | None = None, decode: bool = True,
               progress: bool = False, callback: Callback | None = None,
               x_T: Tensor | None = None, cond: Any = None, mask: Tensor | None = None, x0: Tensor | None = None,
               c_concat: Tensor | None = None, concat: Any = None, skip: int = 0, resample: int = 1,
               latent_size: tuple[int, int] | None = None,
               sampler_options: Mapping[str, Any] | None = None) -> Tensor:
        """``n`` samples: images (n, 3, H, W) with ``decode``, else scaled latents (n, c, h, w).

        ``sampler`` names a registered sampler (:func:`~minildm.diffusion.samplers.get_sampler`):
        ``"ddim"`` (``steps``, ``eta``) or ``"ddpm"`` (all T steps). A conditional
        model takes ``cond`` (n conditions y: labels, layouts, ...; τ_θ encodes them and ∅ is its
        null condition) and samples with classifier-free guidance of scale ``guidance_scale``
        (1: the conditional model alone, 0: the unconditional one). A raw ``context`` (n, L, d)
        with its null ``uncond`` works too. A "concat" / "hybrid" model takes its spatial condition
        ``c_concat`` (n, C_c, h, w), the same for both halves of the guidance. ``mask`` (1 = keep,
        broadcastable to (n, c, h, w)) and ``x0`` (scaled latents) inpaint in latent space. ``concat``:
        the spatial condition y that :meth:`get_concat_conditioning` turns into ``c_concat``. ``skip``
        (DDIM): leave out the noisiest steps, ``x_T`` then being a sample at the first step kept. ``resample``
        (DDIM, with ``mask``/``x0``): RePaint's r, each step done r times with a jump back in between.
        ``latent_size`` (h, w): sample a latent of another size than the training one (the UNet is
        convolutional; paper Sec. 4.3.2, Fig. 9), decoded to (n, 3, f·h, f·w). ``sampler_options``: further
        settings of the sampler (e.g. DDIM's ``set_alpha_to_one``), each passed on when the chosen sampler
        takes it.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        chosen = get_sampler(sampler, self.diffusion)
        settings = {**(sampler_options or {}), "steps": steps, "eta": eta}
        options = {k: settings[k] for k in chosen.options if k in settings}
        if skip:
            if "steps" not in chosen.options:
                raise ValueError(f"skip needs a sampler with a step count (ddim), got {sampler!r}")
            options["skip"] = skip
        if resample != 1:
            if chosen.name != "ddim":
                raise ValueError(f"resample needs the ddim sampler, got {sampler!r}")
            options["resample"] = resample
        shape = (n, *self.latent_shape)
        if latent_size is not None:
            h, w = (int(v) for v in latent_size)
            if h < 1 or w < 1:
                raise ValueError(f"latent_size must be two positive ints, got {latent_size!r}")
            shape = (n, self.latent_shape[0], h, w)
        if concat is not None:
            if c_concat is not None:
                raise ValueError("pass either concat (the condition y) or c_concat (its tensor), not both")
            c_concat = self._concat_at(concat, shape[2:])
        self._check_concat(c_concat, n, shape[2:])
        device = self.scale_factor.device
        was_training = self.model.training
        self.model.eval()
        kwargs: dict[str, Any] = {"context": context} if context is not None else {}
        if c_concat is not None:
            kwargs["c_concat"] = c_concat.to(device)
        uncond_mask = None
        if cond is not None:
            if context is not None:
                raise ValueError("pass either cond or context, not both")
            kwargs["context"], context_mask = self.get_learned_conditioning(cond)
            if kwargs["context"].shape[0] != n:
                raise ValueError(f"cond holds {kwargs['context'].shape[0]} conditions for n={n} samples")
            if context_mask is not None:
                kwargs["context_mask"] = context_mask
            uncond, uncond_mask = self.cond_stage_model.null(1)
        elif self.conditional and context is None:
            raise ValueError("this model is conditional: pass cond (one condition per sample)")
        model_fn = guided_model(self.apply_model, guidance_scale, uncond, uncond_mask)
        try:
            z = chosen.sample(model_fn, shape, generator=generator, device=device, x_T=x_T, mask=mask, x0=x0,
                              progress=progress, callback=callback, **options, **kwargs)
        finally:
            self.model.train(was_training)
        return self.decode_first_stage(z) if decode else z

    @torch.no_grad()
    def img2img(self, x: Tensor, strength: float, *, steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None, cond: Any = None, guidance_scale: float = 1.0,
                concat: Any = None, decode: bool = True, progress: bool = False) -> Tensor:
        """SDEdit (Meng et al. 2022): edit images x (n, 3, H, W) in [-1, 1] by noising their latent to the
        timestep τ_k of the ``strength`` · ``steps``-th DDIM step and denoising from there,

            z_{τ_k} = q_sample(s · E(x), τ_k) = √ᾱ_{τ_k} z_0 + √(1 − ᾱ_{τ_k}) ε,   then DDIM τ_k → 0.

        ``strength`` 0 returns the reconstruction D(E(x)); 1 starts from pure noise ε, exactly
        :meth:`sample` with the same generator (the input is ignored). Between, small strengths keep
        the layout and colours of x, large ones only its rough composition. ``cond`` /
        ``guidance_scale`` / ``concat`` as in :meth:`sample`. Taught in notebook 06.
        """
        strength = check_number("strength", strength, minimum=0)
        if strength > 1:
            raise ValueError(f"strength must lie in [0, 1], got {strength}")
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be (n, 3, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        device = self.scale_factor.device
        z0 = self.encode_first_stage(x.to(device))
        if strength == 0:
            return self.decode_first_stage(z0) if decode else z0
        run = max(1, round(strength * steps))
        noise = initial_noise(tuple(z0.shape), generator, device)
        if run >= steps:  # strength 1: from pure noise, as sample() starts
            x_T, skip = noise, 0
        else:
            tau = int(get_sampler("ddim", self.diffusion).timesteps(steps)[run - 1].clamp(max=self.diffusion.num_timesteps - 1))
            x_T = self.diffusion.q_sample(z0, torch.full((z0.shape[0],), tau, device=device, dtype=torch.long), noise)
            skip = steps - run
        return self.sample(z0.shape[0], sampler="ddim", steps=steps, eta=eta, generator=generator, x_T=x_T,
                           skip=skip, cond=cond, guidance_scale=guidance_scale, concat=concat, decode=decode,
                           progress=progress, latent_size=tuple(z0.shape[2:]))
