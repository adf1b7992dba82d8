"""Samplers of the reverse process behind one interface (notebook 03).

* :mod:`minildm.diffusion.samplers.base`: the :class:`Sampler` interface, the registry
  (:func:`register_sampler`, :func:`get_sampler`, :data:`SAMPLERS`) and the loops' shared helpers;
* :mod:`minildm.diffusion.samplers.ddpm`: :class:`DDPMSampler`, ancestral sampling in T steps;
* :mod:`minildm.diffusion.samplers.ddim`: :class:`DDIMSampler`, S ≤ T steps, η from 0 to 1.
"""
from .base import SAMPLERS, Sampler, get_sampler, register_sampler
from .ddim import DDIMSampler
from .ddpm import DDPMSampler

__all__ = ["SAMPLERS", "DDIMSampler", "DDPMSampler", "Sampler", "get_sampler", "register_sampler"]
