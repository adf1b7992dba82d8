"""Gaussian diffusion (Ho et al. 2020; paper Sec. 3.2): schedules, the forward process, losses.

The forward process adds noise in T steps with variances β_1 … β_T:

    q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I),   α_t = 1 − β_t,   ᾱ_t = Π_{s ≤ t} α_s        (q_sample)

and a network learns to undo it. It may predict the noise ε (the paper's Eq. 1–2, "eps"), the clean
sample x_0 ("x0") or the velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 ("v", Salimans & Ho 2022); the three
are interchangeable given x_t (:meth:`GaussianDiffusion.predict_x0` etc.). The signal-to-noise
ratio is SNR(t) = ᾱ_t / (1 − ᾱ_t).

Timesteps are 0-based here, t ∈ {0, …, T − 1}, as in the CompVis code (t = 0 is the first noising step).

The samplers of the reverse process live in :mod:`minildm.diffusion.samplers` (all seeded,
deterministic given a generator, with classifier-free guidance):

* :class:`~minildm.diffusion.samplers.ddpm.DDPMSampler`: ancestral sampling through all T steps with
  the posterior q(x_{t−1} | x_t, x̂_0) (variance β̃_t, "fixed small", :meth:`GaussianDiffusion.p_mean_variance`);
* :class:`~minildm.diffusion.samplers.ddim.DDIMSampler`: Song et al. 2021, on S ≤ T evenly spaced
  timesteps; η = 0 is deterministic, η = 1 matches DDPM's variance;
* :class:`~minildm.diffusion.samplers.dpm_solver.DPMPP2MSampler`: DPM-Solver++(2M) (Lu et al. 2022), the
  second-order multistep solver of most Stable Diffusion front ends.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_number

__all__ = [
    "SCHEDULES",
    "PARAMETERIZATIONS",
    "LOSS_WEIGHTINGS",
    "check_loss_weighting",
    "make_beta_schedule",
    "GaussianDiffusion",
]

SCHEDULES = ("linear", "scaled_linear", "cosine")
PARAMETERIZATIONS = ("eps", "x0", "v")
#: How ``snr_gamma`` reweights the loss (see :meth:`GaussianDiffusion.training_losses`).
LOSS_WEIGHTINGS = ("min_snr", "capped")


def check_loss_weighting(snr_gamma: float | None, loss_weighting: str) -> None:
    """ValueError unless ``snr_gamma`` is a number > 0 or None and ``loss_weighting`` one of
    :data:`LOSS_WEIGHTINGS` (see :meth:`GaussianDiffusion.training_losses`)."""
    if snr_gamma is not None:
        check_number("snr_gamma (or None)", snr_gamma, minimum=0, strict=True)
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss_weighting {loss_weighting!r}: choose one of {', '.join(LOSS_WEIGHTINGS)}")


ModelFn = Callable[..., Tensor]


def make_beta_schedule(schedule: str, n_timestep: int = 1000, linear_start: float | None = None,
                       linear_end: float | None = None, cosine_s: float = 8e-3) -> Tensor:
    """β_1 … β_T (float64, shape (T,)).

    * ``"linear"``: DDPM's β_t = linspace(1e-4, 0.02) (Ho et al. 2020);
    * ``"scaled_linear"``: β_t = linspace(√0.00085, √0.012)² (Stable Diffusion; CompVis calls it "linear");
    * ``"cosine"``: ᾱ_t = cos²((t/T + s)/(1 + s) · π/2) / ᾱ_0, β_t = 1 − ᾱ_t/ᾱ_{t−1} clipped to 0.999
      (Nichol & Dhariwal 2021).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if not isinstance(n_timestep, int) or isinstance(n_timestep, bool) or n_timestep < 1:
        raise ValueError(f"n_timestep must be a positive int, got {n_timestep!r}")
    if schedule == "linear":
        start, end = linear_start or 1e-4, linear_end or 2e-2
        return torch.linspace(start, end, n_timestep, dtype=torch.float64)
    if schedule == "scaled_linear":
        start, end = linear_start or 8.5e-4, linear_end or 1.2e-2
        return torch.linspace(start ** 0.5, end ** 0.5, n_timestep, dtype=torch.float64) ** 2
    steps = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep
    alphas_cumprod = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)


def _extract(a: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """a[t] reshaped to broadcast over x: (B,) -> (B, 1, 1, 1), in x's dtype and device."""
    return a.to(x.device)[t.to(x.device)].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


@dataclass
class GaussianDiffusion:
    """The diffusion process of T steps for one schedule and parameterisation.

    Attributes (all float64, shape (T,)): ``betas``, ``alphas_cumprod`` (ᾱ_t),
    ``alphas_cumprod_prev`` (ᾱ_{t−1}, with ᾱ_{−1} = 1), ``posterior_variance`` (β̃_t).
    """

    schedule: str = "linear"
    num_timesteps: int = 1000
    parameterization: str = "eps"
    linear_start: float | None = None
    linear_end: float | None = None

    def __post_init__(self) -> None:
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {self.parameterization!r}: "
                             f"choose one of {', '.join(PARAMETERIZATIONS)}")
        self.betas = make_beta_schedule(self.schedule, self.num_timesteps, self.linear_start, self.linear_end)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(c0·x_0 + ct·x_t, β̃_t)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = torch.log(torch.cat([self.posterior_variance[1:2],
                                                                   self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = self.betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "num_timesteps": self.num_timesteps,
                "parameterization": self.parameterization, "linear_start": self.linear_start,
                "linear_end": self.linear_end}

    # -- checks ---------------------------------------------------------------------------
    def _check_t(self, t: Tensor, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        if t.dtype.is_floating_point or (t < 0).any() or (t >= self.num_timesteps).any():
            raise ValueError(f"t must be integer timesteps in [0, {self.num_timesteps}), got {t.tolist()}")
        return t.long()

    # -- forward process ------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: a sample of q(x_t | x_0). Shapes: x0 (B, …), t (B,) -> (B, …)."""
        t = self._check_t(t, x0)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return _extract(self.sqrt_alphas_cumprod, t, x0) * x0 + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    # -- conversions between parameterisations ----------------------------------------------
    def get_v(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0."""
        return _extract(self.sqrt_alphas_cumprod, t, x0) * noise - _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def predict_x0(self, x_t: Tensor, t: Tensor, out: Tensor, parameterization: str | None = None) -> Tensor:
        """x̂_0 from the model output ``out`` (ε, x_0 or v)."""
        p = parameterization or self.parameterization
        a, s = _extract(self.sqrt_alphas_cumprod, t, x_t), _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if p == "eps":
            return (x_t - s * out) / a
        if p == "v":
            return a * x_t - s * out
        return out

    def predict_eps(self, x_t: Tensor, t: Tensor, out: Tensor, parameterization: str | None = None) -> Tensor:
        """ε̂ from the model output ``out`` (ε, x_0 or v)."""
        p = parameterization or self.parameterization
        a, s = _extract(self.sqrt_alphas_cumprod, t, x_t), _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if p == "eps":
            return out
        if p == "v":
            return s * x_t + a * out
        return (x_t - a * out) / s

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output: ε, x_0 or v."""
        if self.parameterization == "eps":
            return noise
        if self.parameterization == "x0":
            return x0
        return self.get_v(x0, noise, t)

    # -- training ---------------------------------------------------------------------------
    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t) at timesteps t (float32, on t's device)."""
        a = self.alphas_cumprod.to(t.device)[t]
        return (a / (1 - a)).float()

    def training_losses(self, model: ModelFn, x0: Tensor, t: Tensor | None = None, noise: Tensor | None = None,
                        generator: torch.Generator | None = None, snr_gamma: float | None = None,
                        loss_weighting: str = "min_snr", **model_kwargs: Any) -> Tensor:
        """Per-example simple loss ‖target − model(x_t, t)‖² averaged over (C, H, W) -> (B,) (paper Eq. 2).

        ``t`` defaults to uniform random timesteps and ``noise`` to N(0, I), drawn from ``generator``.
        The parameterisation weighs the timesteps differently. In terms of x̂_0 the loss is
        w(t) · ‖x_0 − x̂_0‖² with w(t) = SNR(t) for ε, 1 + SNR(t) for v and 1 for x_0
        (SNR(t) = ᾱ_t / (1 − ᾱ_t)). At high noise, where a sample's composition is decided, SNR ≈ 0:
        the ε loss hardly cares *where* x̂_0 puts an object, the v loss does. A layout-to-image model
        trained on the ε loss drew its objects anywhere (centre error 0.35 of the image side, boxes
        ignored); on the v loss it put them in their boxes (0.025), which is why the conditional
        presets predict v.

        ``snr_gamma`` = γ reweights each example (None: the simple loss), as ``loss_weighting`` says:

        * ``"min_snr"``: min-SNR-γ (Hang et al., ICCV 2023), x̂_0 weight min(SNR, γ) whatever the
          parameterisation, i.e. min(SNR, γ) / SNR for ε, min(SNR, γ) / (SNR + 1) for v. It caps
          the weight of the low-noise timesteps, whose gradients conflict with the rest; but for v
          it also drops the high-noise weight from 1 to SNR ≈ 0, the ε loss's blind spot above.
        * ``"capped"``: the parameterisation's own x̂_0 weight capped at γ, min(w(t), γ), i.e. the
          loss times min(w(t), γ) / w(t). For ε it is min-SNR-γ; for v it keeps the weight 1 at
          high noise (layouts) and caps the unbounded 1 + SNR at low noise. Measured on the cpu
          preset (γ = 5): the layout model drew the right shape in 80 % of its boxes (uncapped:
          74 %); the class model's shapes did not recover (33 %; uncapped 37 %, ε / min-SNR-5 79 %).
        """
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), generator=generator,
                              device=generator.device if generator is not None else "cpu").to(x0.device)
        t = self._check_t(t, x0)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator,
                                device=generator.device if generator is not None else x0.device,
                                dtype=x0.dtype).to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t, **model_kwargs)
        if out.shape != x0.shape:
            raise ValueError(f"the model returned {tuple(out.shape)} for inputs {tuple(x0.shape)}")
        loss = F.mse_loss(out.float(), self.target(x0, noise, t).float(), reduction="none").mean(
            dim=tuple(range(1, x0.ndim)))
        check_loss_weighting(snr_gamma, loss_weighting)
        if snr_gamma is not None:
            snr = self.snr(t)
            w = {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}[self.parameterization]  # x̂_0 weight
            target_w = snr if loss_weighting == "min_snr" else w
            loss = loss * target_w.clamp(max=float(snr_gamma)) / w
        return loss

    # -- the reverse process' posterior (used by DDPM sampling) ------------------------------
    def p_mean_variance(self, model: ModelFn, x_t: Tensor, t: Tensor, clip_denoised: bool = False,
                        **model_kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, log-variance, x̂_0) of p(x_{t−1} | x_t) = q(x_{t−1} | x_t, x̂_0), each (B, …) like x_t
        (the log-variance (B, 1, …) broadcasts)."""
        out = model(x_t, t, **model_kwargs)
        x0 = self.predict_x0(x_t, t, out)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        # μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x̂_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t;  log β̃_t
        mean = _extract(self.posterior_mean_coef1, t, x_t) * x0 + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(self.posterior_log_variance_clipped, t, x_t), x0
