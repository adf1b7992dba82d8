"""DDIM sampling (Song et al. 2021), the sampler of the paper's experiments (η = 0 unless said).

    x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t ε,
    σ_t = η √((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t−1})

on S ≤ T evenly spaced timesteps; η = 0 is deterministic, η = 1 matches DDPM's variance.
Latents x: (B, c, h, w). Taught in notebook 03.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..process import GaussianDiffusion, ModelFn, initial_noise, timestep_iter

__all__ = ["DDIMSampler"]


class DDIMSampler:
    """Denoising diffusion implicit models (Song et al. 2021), as in CompVis ``DDIMSampler``.

    On S timesteps τ_1 < … < τ_S (uniform: τ_i = i·⌊T/S⌋ + 1, CompVis' "uniform" discretisation),

        x_{τ−} = √ᾱ_{τ−} x̂_0 + √(1 − ᾱ_{τ−} − σ²) ε̂ + σ z,
        σ = η √((1 − ᾱ_{τ−}) / (1 − ᾱ_τ)) √(1 − ᾱ_τ / ᾱ_{τ−}).

    η = 0: deterministic (an ODE solver); η = 1: DDPM-like variance.
    """

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        self.diffusion = diffusion

    def timesteps(self, steps: int) -> Tensor:
        T = self.diffusion.num_timesteps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if steps > T:
            raise ValueError(f"steps must be <= the {T} diffusion timesteps, got {steps}")
        c = T // steps
        return torch.arange(0, T, c)[:steps] + (1 if c > 1 else 0)

    @torch.no_grad()
    def sample(self, model: ModelFn, shape: Sequence[int], steps: int = 50, eta: float = 0.0, *,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu",
               x_T: Tensor | None = None, clip_denoised: bool = False, progress: bool = False,
               callback: Callable[[int, Tensor, Tensor], None] | None = None, **model_kwargs: Any) -> Tensor:
        """x_T ~ N(0, I) -> x_0 in ``steps`` DDIM steps. ``callback(t, x_t, x̂_0)`` sees each step."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        d = self.diffusion
        shape = tuple(int(s) for s in shape)
        taus = self.timesteps(steps).clamp(max=d.num_timesteps - 1)
        x = initial_noise(shape, generator, device) if x_T is None else x_T.to(device)
        ac = d.alphas_cumprod
        for k in timestep_iter(range(len(taus) - 1, -1, -1), len(taus), progress, f"DDIM {steps}"):
            tau = int(taus[k])
            t = torch.full((shape[0],), tau, device=device, dtype=torch.long)
            out = model(x, t, **model_kwargs)
            x0 = d.predict_x0(x, t, out)
            if clip_denoised:
                x0 = x0.clamp(-1, 1)
            eps = d.predict_eps(x, t, out) if not clip_denoised else (x - ac[tau].sqrt() * x0) / (1 - ac[tau]).sqrt()
            a_t = float(ac[tau])
            a_prev = float(ac[int(taus[k - 1])]) if k > 0 else 1.0
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
            if sigma > 0 and k > 0:
                x = x + sigma * initial_noise(shape, generator, device)
            if callback is not None:
                callback(tau, x, x0)
        return x
