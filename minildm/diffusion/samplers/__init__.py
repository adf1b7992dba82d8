"""Samplers of the reverse process behind one interface (notebooks 03 and 05).

* :mod:`minildm.diffusion.samplers.base`: the :class:`Sampler` interface, the registry
  (:func:`register_sampler`, :func:`get_sampler`, :data:`SAMPLERS`) and the loops' shared helpers;
* :mod:`minildm.diffusion.samplers.ddpm`: :class:`DDPMSampler`, ancestral sampling in T steps;
* :mod:`minildm.diffusion.samplers.ddim`: :class:`DDIMSampler`, S ≤ T steps, η from 0 to 1;
* :mod:`minildm.diffusion.samplers.dpm_solver`: :class:`DPMPP2MSampler`, DPM-Solver++(2M), the
  second-order multistep ODE solver (``"dpmpp-2m"``, notebook 05).
"""
from .base import SAMPLERS, Sampler, get_sampler, register_sampler
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMPP2MSampler

__all__ = ["SAMPLERS", "DDIMSampler", "DDPMSampler", "DPMPP2MSampler", "Sampler", "get_sampler",
           "register_sampler"]
