"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) through all T steps. Taught in notebook 03.

    x_{t−1} = μ̃_t(x_t, x̂_0) + √β̃_t z,   z ~ N(0, I)   (z = 0 at the last step)

with the mean and variance of the forward process' posterior q(x_{t−1} | x_t, x_0) at x_0 = x̂_0
("fixed small" variance β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)). Latents x: (B, c, h, w).

It is diffusers' ``DDPMScheduler(variance_type="fixed_small", clip_sample=False)`` step for step over
t = T − 1, …, 0, drawing the same noise from a seeded generator (one N(0, I) of the sample's shape per
step t > 0, none at t = 0). Two differences of convention, not of the update: minildm's DDPM always
runs all T steps (diffusers' ``set_timesteps(n < T)`` strides it; here DDIM with η = 1 does that), and
with Stable Diffusion's ``steps_offset=1`` diffusers' ``set_timesteps(T)`` would start at t = T, past
the schedule, so the T-step trajectory is its timesteps with offset 0. diffusers computes
β_t = 1 − ᾱ_t / ᾱ_{t−1} from float32 ᾱ (about 1e-4 relative error at SD's small β_t); minildm keeps the
schedule in float64.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..process import ModelFn
from .base import Callback, Sampler, check_sample_inputs, initial_noise, register_sampler, timestep_iter

__all__ = ["DDPMSampler"]


@register_sampler("ddpm")
class DDPMSampler(Sampler):
    """Denoising diffusion probabilistic models (Ho et al. 2020): T ancestral steps of

        x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t                     (or from x̂_0 / v̂ directly)
        μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x̂_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
        x_{t−1} = μ̃_t + √β̃_t z

    (:meth:`~minildm.diffusion.process.GaussianDiffusion.p_mean_variance` computes μ̃_t and log β̃_t).
    """

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, shape: Sequence[int], *, x_T: Tensor | None = None,
               mask: Tensor | None = None, x0: Tensor | None = None, callback: Callback | None = None,
               generator: torch.Generator | None = None, progress: bool = False,
               device: str | torch.device = "cpu", clip_denoised: bool = False, **model_kwargs: Any) -> Tensor:
        """x_T ~ N(0, I) -> x_0 through all T steps: (B, c, h, w) -> (B, c, h, w).

        ``callback(t, x_t, x̂_0)`` sees every step (e.g. to record the trajectory). Noise is drawn from
        ``generator`` (on its own device), so a seeded generator gives the same samples on any device.
        ``mask`` (1 = keep) and ``x0`` inpaint (:class:`~minildm.diffusion.samplers.base.Inpainting`).
        """
        d = self.diffusion
        shape, x_T, inpaint = check_sample_inputs(shape, device, x_T, mask, x0)
        # x_T ~ N(0, I)
        x = initial_noise(shape, generator, device) if x_T is None else x_T
        for i in timestep_iter(reversed(range(d.num_timesteps)), d.num_timesteps, progress, "DDPM"):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            # μ̃_t(x_t, x̂_0), log β̃_t, x̂_0
            mean, log_var, x0_hat = d.p_mean_variance(model_fn, x, t, clip_denoised, **model_kwargs)
            # x_{t−1} = μ̃_t + √β̃_t z for t > 0; x_0 = μ̃_1 at the last step
            x = mean + (0.5 * log_var).exp() * initial_noise(shape, generator, device) if i > 0 else mean
            if inpaint is not None:
                x = inpaint.apply(d, x, i - 1 if i > 0 else None, generator)
            if callback is not None:
                callback(i, x, x0_hat)
        return x
