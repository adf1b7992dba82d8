"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"): a second-order multistep solver of the diffusion ODE in data prediction, good
samples in 20–25 steps where DDIM needs 50. Taught in notebook 05 (the Stable Diffusion section).

Write the forward process as x_t = α_t x_0 + σ_t ε with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), and its half
log-SNR λ_t = log(α_t / σ_t), which falls as t grows. The model's data prediction is

    x̂_0 = x_θ(x_t, t) = (x_t − σ_t ε̂) / α_t   (ε-prediction)   or   α_t x_t − σ_t v̂   (v-prediction)

and the ODE's exact solution from s to t < s is (paper Eq. 9)

    x_t = (σ_t / σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x̂_0(x_λ, λ) dλ.

On timesteps t_0 > t_1 > … (x̂_0(i) = x_θ(x_{t_i}, t_i), h_i = λ_{t_i} − λ_{t_{i−1}} > 0), holding x̂_0
constant over a step gives the first-order step (DPM-Solver++1, the same as DDIM with η = 0)

    x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) x̂_0(i−1),

and a line through the last two estimates the multistep second-order one, 2M (paper Alg. 2),

    x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) D_i,
    D_i = (1 + 1/(2 r_i)) x̂_0(i−1) − 1/(2 r_i) x̂_0(i−2),   r_i = h_{i−1} / h_i,

still one model call per step, as x̂_0(i−2) is kept from the step before. Shapes: x_t and x̂_0
(B, c, h, w), t (B,) int64.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..process import ModelFn
from .base import (Callback, Sampler, check_sample_inputs, check_skip, check_steps, initial_noise,
                   register_sampler, timestep_iter)

__all__ = ["DPMPP2MSampler"]


@register_sampler("dpmpp-2m")
class DPMPP2MSampler(Sampler):
    """DPM-Solver++(2M), as diffusers' ``DPMSolverMultistepScheduler.from_config(config)`` runs it for a
    Stable Diffusion ``config`` (the way users switch an SD pipeline to it), i.e. with its defaults
    ``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"`` (the D_i above),
    ``lower_order_final=True``, ``final_sigmas_type="zero"``, no Karras / exponential / beta sigmas, no
    thresholding:

    * S timesteps, by ``timestep_spacing``: ``"linspace"`` (the default, and what ``from_config`` gives for
      SD's shipped scheduler configs, which do not set the spacing: diffusers then takes the solver's own
      default) t_k = round(k·(T − 1)/S), k = S, …, 1, from T − 1 = 999 down; or ``"leading"`` (a config that
      sets it, with ``steps_offset=1``) t_k = k·⌊T/(S+1)⌋ + 1 (note ⌊T/(S+1)⌋ where DDIM has ⌊T/S⌋);
    * after t_1 the solver steps to σ = 0 (α = 1, λ = +∞): e^{−h} = 0 and the first-order step returns
      x̂_0(t_1) itself;
    * the first step (no earlier x̂_0 yet) and that last one are first order, all others 2M.
    """

    options = ("steps", "timestep_spacing")
    SPACINGS = ("linspace", "leading")

    def timesteps(self, steps: int, timestep_spacing: str = "linspace") -> Tensor:
        """t_1 < … < t_S, (S,) int64, for ``timestep_spacing`` "linspace" (round(k·(T − 1)/S), rounding half
        to even as numpy does) or "leading" (k·⌊T/(S+1)⌋ + 1, ``steps_offset`` 1)."""
        T = self.diffusion.num_timesteps
        if timestep_spacing not in self.SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {', '.join(self.SPACINGS)}, got {timestep_spacing!r}")
        if timestep_spacing == "linspace":
            check_steps(steps, T - 1, f"T − 1 = {T - 1} (distinct timesteps in 1 … T − 1)")
            return torch.round(torch.arange(1, steps + 1, dtype=torch.float64) * ((T - 1) / steps)).long()
        check_steps(steps, T - 2, f"T − 2 = {T - 2} (its timesteps k·⌊T/(S+1)⌋ + 1 must stay below T = {T})")
        return torch.arange(1, steps + 1) * (T // (steps + 1)) + 1

    def _alpha_sigma_lambda(self, t: int) -> tuple[float, float, float]:
        """(α_t, σ_t, λ_t) = (√ᾱ_t, √(1 − ᾱ_t), log(α_t / σ_t)) in float64."""
        a = float(self.diffusion.alphas_cumprod[t])
        alpha, sigma = math.sqrt(a), math.sqrt(1 - a)
        return alpha, sigma, math.log(alpha / sigma)

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, shape: Sequence[int], steps: int = 25, *, x_T: Tensor | None = None,
               mask: Tensor | None = None, x0: Tensor | None = None, callback: Callback | None = None,
               generator: torch.Generator | None = None, progress: bool = False,
               device: str | torch.device = "cpu", clip_denoised: bool = False, skip: int = 0,
               timestep_spacing: str = "linspace", **model_kwargs: Any) -> Tensor:
        """x_T ~ N(0, I) -> x_0 in ``steps`` model calls: (B, c, h, w) -> (B, c, h, w).

        ``callback(t, x, x̂_0)`` sees each step (t the timestep just done); ``mask`` (1 = keep) and ``x0``
        inpaint (:class:`~minildm.diffusion.samplers.base.Inpainting`, after every step); ``clip_denoised``
        clamps x̂_0 to [-1, 1]. ``skip`` > 0 leaves out the ``skip`` noisiest steps, ``x_T`` then being a
        sample at the first timestep kept (the solver starts there with a first-order step).
        ``timestep_spacing``: see :meth:`timesteps`.
        """
        d = self.diffusion
        shape, x_T, inpaint = check_sample_inputs(shape, device, x_T, mask, x0)
        ts = [int(t) for t in self.timesteps(steps, timestep_spacing).flip(0)]  # noisiest first
        ts = ts[check_skip(skip, len(ts)):]
        # x_T ~ N(0, I)
        x = initial_noise(shape, generator, device) if x_T is None else x_T
        x0_prev: Tensor | None = None  # x̂_0(i−2)
        h_prev = 0.0  # h_{i−1}
        for i in timestep_iter(range(len(ts)), len(ts), progress, f"DPM-Solver++(2M) {len(ts)}"):
            t = torch.full((shape[0],), ts[i], device=device, dtype=torch.long)
            # x̂_0(i−1) = x_θ(x_{t_{i−1}}, t_{i−1}) from ε̂, v̂ or x̂_0
            x0_hat = d.predict_x0(x, t, model_fn(x, t, **model_kwargs))
            if clip_denoised:
                x0_hat = x0_hat.clamp(-1, 1)
            if i == len(ts) - 1:
                # the last step, to σ = 0 (α = 1, λ = +∞, e^{−h} = 0): first order, x_0 = x̂_0
                x = x0_hat
            else:
                _, sigma_s, lambda_s = self._alpha_sigma_lambda(ts[i])
                alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(ts[i + 1])
                h = lambda_t - lambda_s
                if x0_prev is None:  # first order: D = x̂_0(i−1)
                    D = x0_hat
                else:  # 2M: D = (1 + 1/(2r)) x̂_0(i−1) − 1/(2r) x̂_0(i−2),  r = h_{i−1} / h_i
                    r = h_prev / h
                    D = (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_prev
                # x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) D
                x = (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * D
                h_prev = h
            x0_prev = x0_hat
            if inpaint is not None:
                x = inpaint.apply(d, x, ts[i + 1] if i < len(ts) - 1 else None, generator)
            if callback is not None:
                callback(ts[i], x, x0_hat)
        return x
