"""DDIM sampling (Song et al. 2021), the sampler of the paper's experiments (η = 0 unless said).

    x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t ε,
    σ_t = η √((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t−1})

on S ≤ T evenly spaced timesteps; η = 0 is deterministic, η = 1 matches DDPM's variance. The last
step goes to ᾱ = 1 (the DDIM paper, the default) or to ᾱ_0 (CompVis, Stable Diffusion:
``set_alpha_to_one=False``).
Latents x: (B, c, h, w). Taught in notebook 03.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..process import ModelFn
from .base import (Callback, Inpainting, Sampler, check_eta, check_sample_inputs, check_skip, check_steps,
                   initial_noise, register_sampler, timestep_iter)

__all__ = ["DDIMSampler"]


@register_sampler("ddim")
class DDIMSampler(Sampler):
    """Denoising diffusion implicit models (Song et al. 2021), as in CompVis ``DDIMSampler``.

    On S timesteps τ_1 < … < τ_S, τ_i = (i − 1)·c + 1 with c = ⌊T/S⌋ (CompVis' "uniform"
    discretisation),

        x_{τ−} = √ᾱ_{τ−} x̂_0 + √(1 − ᾱ_{τ−} − σ²) ε̂ + σ z,
        σ = η √((1 − ᾱ_{τ−}) / (1 − ᾱ_τ)) √(1 − ᾱ_τ / ᾱ_{τ−}).

    η = 0: deterministic (an ODE solver); η = 1: DDPM-like variance.

    The last step, from τ_1, has no timestep below it. ``set_alpha_to_one`` (diffusers' name) chooses
    its ᾱ_{τ−}:

    * ``True`` (the default): ᾱ_{τ−} = 1, σ = 0: the last step returns x̂_0 exactly. This is the DDIM
      paper's own convention (its α_0 := 1, Song et al. 2021, Sec. 4.1) and diffusers' option; a sample
      then carries no noise of its own, and minildm's models are measured with it.
    * ``False``: ᾱ_{τ−} = ᾱ_0, so the sample ends at the noise level of t = 0, the first noising step
      (1 − ᾱ_0 = β_0, 0.00085 for Stable Diffusion): the paper's code (CompVis ``DDIMSampler``:
      ``alphas_prev = [ᾱ_0] + …``) and Stable Diffusion's shipped ``scheduler_config.json``
      (``"set_alpha_to_one": false``). :func:`~minildm.interop.load_stable_diffusion` takes it from the
      scheduler config, so SD weights sample here as they do there. With η > 0 this step adds noise too.

    The timesteps are diffusers' ``DDIMScheduler(timestep_spacing="leading", steps_offset=1)``, i.e.
    ``scheduler.timesteps == timesteps(S).flip(0)``, whenever c ≥ 2 (S ≤ T/2); its previous timestep
    t − c is τ_{i−1}, and t − c < 0 at τ_1 is where its ``final_alpha_cumprod`` (ᾱ_0 or 1) comes in.
    For c = 1 the shift would put τ_S at T, past the schedule: there τ_i = i − 1, no shift.
    """

    options = ("steps", "eta", "set_alpha_to_one")

    def timesteps(self, steps: int) -> Tensor:
        """τ_1 < … < τ_S, (S,) int64: every ⌊T/S⌋-th timestep, shifted by 1 when ⌊T/S⌋ > 1 (CompVis)."""
        T = self.diffusion.num_timesteps
        check_steps(steps, T, f"the {T} diffusion timesteps")
        c = T // steps
        return torch.arange(0, T, c)[:steps] + (1 if c > 1 else 0)

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, shape: Sequence[int], steps: int = 50, eta: float = 0.0, *,
               set_alpha_to_one: bool = True, x_T: Tensor | None = None, mask: Tensor | None = None,
               x0: Tensor | None = None, callback: Callback | None = None, generator: torch.Generator | None = None,
               progress: bool = False, device: str | torch.device = "cpu", clip_denoised: bool = False,
               skip: int = 0, resample: int = 1, **model_kwargs: Any) -> Tensor:
        """x_T ~ N(0, I) -> x_0 in ``steps`` DDIM steps: (B, c, h, w) -> (B, c, h, w).

        ``set_alpha_to_one``: the last step's ᾱ_{τ−}, 1 (True, the default) or ᾱ_0 (False; see the
        class docstring). ``callback(t, x_t, x̂_0)`` sees each step; ``mask`` (1 = keep) and ``x0`` inpaint
        (:class:`~minildm.diffusion.samplers.base.Inpainting`). ``skip`` > 0 leaves out the ``skip``
        noisiest steps: ``x_T`` is then a sample at τ_{S−skip} (SDEdit's start, see
        :meth:`~minildm.diffusion.ldm.LatentDiffusion.img2img`). ``resample`` = r > 1 (with ``mask``/``x0``,
        RePaint, Lugmayr et al. 2022): each step is done r times, going back from τ− to τ in between with
        fresh noise, x_τ ~ q(x_τ | x_τ−) = N(√(ᾱ_τ / ᾱ_τ−) x_τ−, (1 − ᾱ_τ / ᾱ_τ−) I), so the generated
        region is harmonised with the known one that the replacement put in.
        """
        eta = check_eta(eta)
        if not isinstance(set_alpha_to_one, bool):
            raise ValueError(f"set_alpha_to_one must be True or False, got {set_alpha_to_one!r}")
        d = self.diffusion
        shape, x_T, inpaint = check_sample_inputs(shape, device, x_T, mask, x0)
        taus = self.timesteps(steps).clamp(max=d.num_timesteps - 1)
        taus = taus[:len(taus) - check_skip(skip, len(taus))]
        if not isinstance(resample, int) or isinstance(resample, bool) or resample < 1:
            raise ValueError(f"resample must be an int >= 1, got {resample!r}")
        if resample > 1 and inpaint is None:
            raise ValueError("resample (RePaint) harmonises an inpainting run: it needs mask and x0")
        ac = d.alphas_cumprod
        a_final = 1.0 if set_alpha_to_one else float(ac[0])
        # x_T ~ N(0, I)
        x = initial_noise(shape, generator, device) if x_T is None else x_T
        for k in timestep_iter(range(len(taus) - 1, -1, -1), len(taus), progress, f"DDIM {len(taus)}"):
            for u in range(resample if k > 0 else 1):
                if u > 0:  # RePaint: back from τ− to τ with fresh noise, then the step again
                    a_back = float(ac[int(taus[k])]) / float(ac[int(taus[k - 1])])
                    x = math.sqrt(a_back) * x + math.sqrt(1 - a_back) * initial_noise(shape, generator, device)
                x, x0_hat = self._step(model_fn, x, k, taus, eta, a_final, clip_denoised, inpaint, generator,
                                       device, model_kwargs)
            if callback is not None:
                callback(int(taus[k]), x, x0_hat)
        return x

    def _step(self, model_fn: ModelFn, x: Tensor, k: int, taus: Tensor, eta: float, a_final: float,
              clip_denoised: bool, inpaint: Inpainting | None, generator: torch.Generator | None,
              device: str | torch.device, model_kwargs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """One DDIM step from τ_k to τ_{k−1} (for k = 0: to ᾱ = ``a_final``): (x_{τ−}, x̂_0)."""
        d = self.diffusion
        ac = d.alphas_cumprod
        shape = tuple(x.shape)
        tau = int(taus[k])
        t = torch.full((shape[0],), tau, device=device, dtype=torch.long)
        out = model_fn(x, t, **model_kwargs)
        # x̂_0 = (x_τ − √(1 − ᾱ_τ) ε̂) / √ᾱ_τ (or from x̂_0 / v̂ directly)
        x0_hat = d.predict_x0(x, t, out)
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1, 1)
        # ε̂ = (x_τ − √ᾱ_τ x̂_0) / √(1 − ᾱ_τ), consistent with a clipped x̂_0
        eps = (d.predict_eps(x, t, out) if not clip_denoised
               else (x - ac[tau].sqrt() * x0_hat) / (1 - ac[tau]).sqrt())
        a_t = float(ac[tau])
        a_prev = float(ac[int(taus[k - 1])]) if k > 0 else a_final
        # σ = η √((1 − ᾱ_{τ−}) / (1 − ᾱ_τ)) √(1 − ᾱ_τ / ᾱ_{τ−})  (0 on a last step to ᾱ = 1)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_prev, 0.0))
        # x_{τ−} = √ᾱ_{τ−} x̂_0 + √(1 − ᾱ_{τ−} − σ²) ε̂ + σ z
        x = math.sqrt(a_prev) * x0_hat + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * initial_noise(shape, generator, device)
        if inpaint is not None:
            x = inpaint.apply(d, x, int(taus[k - 1]) if k > 0 else None, generator)
        return x, x0_hat
