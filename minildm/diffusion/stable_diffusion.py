"""Stable Diffusion as a :class:`~minildm.diffusion.ldm.LatentDiffusion` you can call like a diffusers pipeline
(taught in notebook 05, "Stable Diffusion in minildm's modules").

Stable Diffusion *is* the paper's text-to-image LDM (Sec. 4.3.1) at scale: a KL-f8 autoencoder
(512² × 3 -> 64² × 4), a UNet with cross-attention to a frozen CLIP text encoder's 77 token states, a
``scaled_linear`` schedule of T = 1000 steps, and classifier-free guidance at sampling time,

    ε̃ = ε_θ(z_t, t, τ(∅ or y⁻)) + s · (ε_θ(z_t, t, τ(y)) − ε_θ(z_t, t, τ(∅ or y⁻)))      (Ho & Salimans 2022)

where the negative prompt y⁻ (default: the empty prompt "") takes the place of ∅. :class:`StableDiffusion`
adds nothing to the model but the call users know from diffusers::

    images = pipe(prompt, negative_prompt=None, num_inference_steps=50, guidance_scale=7.5,
                  height=None, width=None, latents=None, generator=None, sampler="ddim")

returning images (B, 3, H, W) in [0, 1]. Load one with :func:`minildm.interop.load_stable_diffusion`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..checks import check_number
from .ldm import LatentDiffusion
from .samplers.base import initial_noise

__all__ = ["StableDiffusion"]


def _texts(texts: str | Sequence[str], name: str) -> list[str]:
    """Prompts as a list of strings (empty strings allowed: "" is SD's unconditional prompt)."""
    items = [texts] if isinstance(texts, str) else list(texts) if isinstance(texts, Sequence) else None
    if not items or not all(isinstance(t, str) for t in items):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {texts!r}"[:200])
    return items


class StableDiffusion(LatentDiffusion):
    """A text-to-image :class:`LatentDiffusion` (frozen text encoder as ``cond_stage_model``) whose call
    generates images as diffusers' ``StableDiffusionPipeline`` does.

    ``sampler_options`` are the sampler settings of the scheduler it was loaded with (e.g. DDIM's
    ``set_alpha_to_one``), handed to every sampler that takes them.
    """

    def __init__(self, *args: Any, sampler_options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cond_stage_model is None:
            raise ValueError("StableDiffusion needs a text encoder (cond_stage_model)")
        self.sampler_options = dict(sampler_options or {})

    def encode_prompt(self, prompts: str | Sequence[str]) -> Tensor:
        """τ(y): the text encoder's token states (B, 77, d) for each prompt ("" allowed)."""
        return self.cond_stage_model.encode_texts(_texts(prompts, "prompt"))

    @torch.no_grad()
    def forward(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                num_inference_steps: int = 50, guidance_scale: float = 7.5, height: int | None = None,
                width: int | None = None, latents: Tensor | None = None, generator: torch.Generator | None = None,
                sampler: str = "ddim", eta: float = 0.0, progress: bool = False) -> Tensor:
        """Images (B, 3, height, width) in [0, 1] for B prompts.

        ``negative_prompt``: one for all prompts or one per prompt (default ""). Guidance runs when
        ``guidance_scale`` > 1, both halves in one batched forward (diffusers' rule; ≤ 1: the conditional
        model alone). ``height``/``width``: multiples of f (default: the size the UNet was trained at).
        ``latents``: the starting noise z_T (B, c, height/f, width/f); else drawn from ``generator``.
        ``sampler``: "ddim" (``eta``), "dpmpp-2m" or "ddpm" (all T steps).
        """
        prompts = _texts(prompt, "prompt")
        b = len(prompts)
        negatives = [""] * b if negative_prompt is None else _texts(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            negatives = negatives * b
        if len(negatives) != b:
            raise ValueError(f"give one negative prompt or one per prompt ({b}), got {len(negatives)}")
        guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0)
        f = self.f
        height, width = height or self.image_size, width or self.image_size
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < f or v % f:
                raise ValueError(f"{name} must be a positive multiple of {f}, got {v!r}")
        shape = (b, self.latent_shape[0], height // f, width // f)
        device = self.scale_factor.device
        if latents is None:
            latents = initial_noise(shape, generator, device)
        elif not isinstance(latents, Tensor) or tuple(latents.shape) != shape:
            raise ValueError(f"latents must be a tensor of shape {shape}, got "
                             f"{tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__}")
        elif not torch.isfinite(latents).all():
            raise ValueError("latents must be finite (they have NaN or inf values)")
        dtype = next(self.model.parameters()).dtype
        context = self.encode_prompt(prompts).to(device, dtype)
        guided = guidance_scale > 1
        uncond = self.encode_prompt(negatives).to(device, dtype) if guided else None
        z = self.sample(b, sampler=sampler, steps=num_inference_steps, eta=eta, generator=generator,
                        context=context, guidance_scale=guidance_scale if guided else 1.0, uncond=uncond,
                        x_T=latents.to(device, dtype), decode=False, progress=progress,
                        latent_size=shape[2:], sampler_options=self.sampler_options)
        return (self.decode_first_stage(z).float() + 1) / 2
