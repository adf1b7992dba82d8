"""What every sampler of the reverse process shares (taught in notebook 03).

* :class:`Sampler`: the interface, ``sampler.sample(model_fn, shape, *, x_T, mask, x0, callback,
  generator, progress, ...) -> x_0`` with x of shape (B, c, h, w);
* a registry: :func:`register_sampler` names a sampler class, :func:`get_sampler` builds one by
  name, :data:`SAMPLERS` lists them (``"ddpm"``, ``"ddim"``, ``"dpmpp-2m"``);
* the helpers of the sampling loops: :func:`initial_noise`, :func:`timestep_iter`,
  :func:`check_sample_inputs`, :func:`check_steps`, :func:`check_skip` and :class:`Inpainting`.

Inpainting (CompVis ``DDIMSampler`` with ``mask`` and ``x0``): after each step from t to t' the known
region (mask = 1) is replaced by a fresh sample of the forward process at t',

    x_{t'} ← m ⊙ q_sample(x_0, t') + (1 − m) ⊙ x_{t'},     q(x_{t'} | x_0) = N(√ᾱ_{t'} x_0, (1 − ᾱ_{t'}) I)

and by x_0 itself after the last step, so the result equals x_0 exactly where m = 1 and the
model fills in the rest consistently with it.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ..process import GaussianDiffusion, ModelFn

__all__ = [
    "SAMPLERS",
    "Callback",
    "Inpainting",
    "Sampler",
    "check_eta",
    "check_sample_inputs",
    "check_skip",
    "check_steps",
    "get_sampler",
    "initial_noise",
    "register_sampler",
    "timestep_iter",
]

#: ``callback(t, x_t, x̂_0)``: called after every step with the timestep just done, the new sample
#: and the model's estimate of the clean sample, both (B, c, h, w).
Callback = Callable[[int, Tensor, Tensor], None]

S = TypeVar("S", bound="type[Sampler]")


def initial_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: str | torch.device) -> Tensor:
    """z ~ N(0, I) of ``shape``, drawn on the generator's device and moved to ``device``, so that a
    seeded generator gives the same numbers whatever device the samples live on."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def timestep_iter(it: Iterable[int], total: int, progress: bool, desc: str) -> Iterable[int]:
    """``it`` itself, or wrapped in a tqdm progress bar of ``total`` steps when ``progress``."""
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False)


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a sequence of positive ints (B, c, h, w), got {shape!r}") from None
    if not out or any(s < 1 for s in out) or any(isinstance(s, bool) for s in shape):
        raise ValueError(f"shape must be a sequence of positive ints (B, c, h, w), got {shape!r}")
    return out


def _broadcasts_to(t: Tensor, shape: tuple[int, ...]) -> bool:
    try:
        return torch.broadcast_shapes(t.shape, shape) == shape
    except RuntimeError:
        return False


@dataclass
class Inpainting:
    """The known region of an inpainting run: ``mask`` (1 = keep, broadcast to the sample's shape)
    and ``x0`` (the clean sample whose known region is kept), both (B, c, h, w) on the sample's device."""

    mask: Tensor
    x0: Tensor

    def apply(self, diffusion: GaussianDiffusion, x: Tensor, t_prev: int | None,
              generator: torch.Generator | None) -> Tensor:
        """Replace the known region of x (now at timestep ``t_prev``; None after the last step)."""
        if t_prev is None:
            # the last step: the known region is x_0 itself
            known = self.x0
        else:
            # x_{t'}^known ~ q(x_{t'} | x_0) = N(√ᾱ_{t'} x_0, (1 − ᾱ_{t'}) I)
            t = torch.full((x.shape[0],), t_prev, device=x.device, dtype=torch.long)
            known = diffusion.q_sample(self.x0, t, initial_noise(tuple(x.shape), generator, x.device))
        # x ← m ⊙ x^known + (1 − m) ⊙ x
        return known * self.mask + (1 - self.mask) * x


def check_sample_inputs(shape: Sequence[int], device: str | torch.device, x_T: Tensor | None = None,
                        mask: Tensor | None = None, x0: Tensor | None = None
                        ) -> tuple[tuple[int, ...], Tensor | None, Inpainting | None]:
    """Validate a sampler's inputs: (shape as ints, x_T on ``device``, the :class:`Inpainting` or None).

    ``x_T`` must have exactly ``shape``; ``mask`` (values in [0, 1], bool or float) and ``x0`` (finite)
    come together and must broadcast to ``shape``. Each mistake is a one-line ValueError.
    """
    shape = _check_shape(shape)
    if x_T is not None:
        if not isinstance(x_T, Tensor) or tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must be a tensor of shape {shape}, got "
                             f"{tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__}")
        x_T = x_T.to(device)
    if (mask is None) != (x0 is None):
        raise ValueError("inpainting needs both mask and x0 (mask = 1 marks the region of x0 to keep), "
                         f"got only {'mask' if x0 is None else 'x0'}")
    if mask is None or x0 is None:
        return shape, x_T, None
    for name, t in (("mask", mask), ("x0", x0)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if not _broadcasts_to(t, shape):
            raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to the sample shape {shape}")
    dtype = x_T.dtype if x_T is not None else torch.get_default_dtype()
    mask = mask.to(device=device, dtype=dtype)
    if not torch.isfinite(mask).all() or (mask < 0).any() or (mask > 1).any():
        raise ValueError("mask values must lie in [0, 1] (1 = keep x0, 0 = generate)")
    x0 = x0.to(device=device, dtype=dtype)
    if not torch.isfinite(x0).all():
        raise ValueError("x0 must be finite (it has NaN or inf values)")
    return shape, x_T, Inpainting(mask.expand(shape), x0.expand(shape))


def check_eta(eta: float) -> float:
    """η as a float; ValueError unless it is a finite number >= 0."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


def check_steps(steps: int, maximum: int, bound: str) -> int:
    """``steps`` if it is an int in [1, ``maximum``]; else a one-line ValueError (``bound`` says why
    ``maximum`` is the most, e.g. "the 1000 diffusion timesteps")."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if steps > maximum:
        raise ValueError(f"steps must be <= {bound}, got {steps}")
    return steps


def check_skip(skip: int, steps: int) -> int:
    """``skip`` (how many of the ``steps`` noisiest steps to leave out) if it is an int in [0, steps);
    else a one-line ValueError."""
    if not isinstance(skip, int) or isinstance(skip, bool) or not 0 <= skip < steps:
        raise ValueError(f"skip must be an int in [0, {steps}), got {skip!r}")
    return skip


class Sampler(ABC):
    """A sampler of the reverse process p_θ(x_{t−1} | x_t) of a :class:`GaussianDiffusion`.

    Subclasses implement :meth:`sample` and list in :attr:`options` the extra keyword arguments of
    their ``sample`` that :meth:`minildm.diffusion.ldm.LatentDiffusion.sample` should hand on
    (DDIM: ``steps``, ``eta``, ``set_alpha_to_one``; DPM-Solver++: ``steps``).
    """

    #: the name under which :func:`register_sampler` filed the class
    name: ClassVar[str] = ""
    #: sampler-specific keyword arguments of :meth:`sample`
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(f"a sampler needs a GaussianDiffusion, got {type(diffusion).__name__}")
        self.diffusion = diffusion

    @abstractmethod
    def sample(self, model_fn: ModelFn, shape: Sequence[int], *, x_T: Tensor | None = None,
               mask: Tensor | None = None, x0: Tensor | None = None, callback: Callback | None = None,
               generator: torch.Generator | None = None, progress: bool = False,
               device: str | torch.device = "cpu", clip_denoised: bool = False, **model_kwargs: Any) -> Tensor:
        """x_T ~ N(0, I) (or the given ``x_T``) -> x_0, both of ``shape`` (B, c, h, w).

        ``model_fn(x_t, t, **model_kwargs)`` predicts ε, x_0 or v (the diffusion's parameterisation);
        ``mask`` / ``x0`` inpaint (see the module docstring); ``callback(t, x_t, x̂_0)`` sees each step;
        noise comes from ``generator`` (on its own device); ``clip_denoised`` clamps x̂_0 to [-1, 1].
        """


SAMPLERS: dict[str, type[Sampler]] = {}


def register_sampler(name: str) -> Callable[[S], S]:
    """Class decorator: file a :class:`Sampler` subclass under ``name`` in :data:`SAMPLERS`."""
    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"@register_sampler({name!r}) needs a Sampler subclass, got {cls!r}")
        if name in SAMPLERS and SAMPLERS[name] is not cls:
            raise ValueError(f"a sampler named {name!r} is already registered ({SAMPLERS[name].__name__})")
        cls.name = name
        SAMPLERS[name] = cls
        return cls
    return decorate


def get_sampler(name: str, diffusion: GaussianDiffusion, **kwargs: Any) -> Sampler:
    """The sampler registered as ``name`` for ``diffusion`` (``kwargs`` go to its constructor)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name](diffusion, **kwargs)
