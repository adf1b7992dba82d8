"""The posterior of the KL-regularised first stage (CompVis ``ldm/modules/distributions``).

q(z | x) = N(μ(x), diag σ²(x)), with KL(q || N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), the
regulariser that keeps the latent close to a standard normal (paper Sec. 3.1). Taught in notebook 01.
"""
from __future__ import annotations

import math

import torch

__all__ = ["DiagonalGaussianDistribution"]


class DiagonalGaussianDistribution:
    """q(z|x) = N(μ, diag(σ²)), the KL-regularised encoder's posterior.

    Args:
        parameters: (B, 2c, h, w): μ = parameters[:, :c], log σ² = parameters[:, c:]. log σ² is
            clamped to [−30, 20] (as in CompVis) so that σ² neither underflows nor overflows.
        deterministic: σ = 0: ``sample()`` returns μ, ``kl()`` and ``nll()`` are 0.

    ``mean``, ``logvar``, ``std`` have shape (B, c, h, w) and the dtype of ``parameters``;
    ``kl`` and ``nll`` are computed in float32 (σ² = e^20 would overflow float16).
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        if not isinstance(parameters, torch.Tensor) or parameters.ndim != 4 or parameters.shape[1] % 2:
            shape = tuple(parameters.shape) if isinstance(parameters, torch.Tensor) else type(parameters).__name__
            raise ValueError(f"parameters must be a (B, 2c, h, w) tensor holding [mean, logvar], got {shape}")
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = bool(deterministic)
        if self.deterministic:
            self.std = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        """σ² (float32; zeros if deterministic)."""
        if self.deterministic:
            return torch.zeros_like(self.mean, dtype=torch.float32)
        return torch.exp(self.logvar.float())

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample z = μ + σ ⊙ ε, ε ~ N(0, I); gradients flow to μ and σ.

        ``generator`` may live on another device than the parameters (e.g. a CPU generator
        for device-independent noise); ε is then drawn there and moved.
        """
        if self.deterministic:
            return self.mean
        gen_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=gen_device, dtype=torch.float32)
        eps = eps.to(device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mode (= mean) μ, (B, c, h, w)."""
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL(q ‖ p) summed over (c, h, w) -> (B,).

        p = N(0, I) by default: ½ Σ (μ² + σ² − 1 − log σ²);
        else ½ Σ ((μ − μ_p)²/σ_p² + σ²/σ_p² − 1 − log σ² + log σ_p²).
        """
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=torch.float32)
        mean, logvar, var = self.mean.float(), self.logvar.float(), self.var
        if other is None:
            return 0.5 * torch.sum(mean.pow(2) + var - 1.0 - logvar, dim=[1, 2, 3])
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"kl: shapes differ, {tuple(self.mean.shape)} vs {tuple(other.mean.shape)}")
        o_mean, o_logvar, o_var = other.mean.float(), other.logvar.float(), other.var
        return 0.5 * torch.sum((mean - o_mean).pow(2) / o_var + var / o_var - 1.0 - logvar + o_logvar,
                               dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
        """−log q(sample) = ½ Σ (log 2π + log σ² + (sample − μ)² / σ²) over ``dims`` -> (B,)."""
        if sample.shape != self.mean.shape:
            raise ValueError(f"nll: sample shape {tuple(sample.shape)} != distribution shape {tuple(self.mean.shape)}")
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=torch.float32)
        log_two_pi = math.log(2.0 * math.pi)
        logvar = self.logvar.float()
        return 0.5 * torch.sum(log_two_pi + logvar + (sample.float() - self.mean.float()).pow(2) / self.var,
                               dim=list(dims))

    def __repr__(self) -> str:
        return (f"DiagonalGaussianDistribution(shape={tuple(self.mean.shape)}, "
                f"deterministic={self.deterministic})")
