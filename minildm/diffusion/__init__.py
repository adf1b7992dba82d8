"""Diffusion in the latent space (paper Sec. 3.2): the Gaussian process, its samplers, guidance, the LDM.

* :mod:`minildm.diffusion.process`: schedules, q(x_t | x_0), the ε / x_0 / v losses (notebook 03)
* :mod:`minildm.diffusion.samplers`: DDPM, DDIM and DPM-Solver++(2M) behind one interface and a registry
  (notebooks 03, 05)
* :mod:`minildm.diffusion.guidance`: classifier-free guidance (notebooks 04, 05)
* :mod:`minildm.diffusion.ldm`: ``LatentDiffusion``, first stage + UNet + process (notebooks 03–05)
* :mod:`minildm.diffusion.stable_diffusion`: ``StableDiffusion``, a text-to-image LDM called like diffusers'
  pipeline (notebook 05)
"""
from .guidance import guided_model
from .ldm import LatentDiffusion
from .process import GaussianDiffusion, make_beta_schedule
from .samplers import SAMPLERS, DDIMSampler, DDPMSampler, DPMPP2MSampler, Sampler, get_sampler, register_sampler
from .stable_diffusion import StableDiffusion

__all__ = ["SAMPLERS", "DDIMSampler", "DDPMSampler", "DPMPP2MSampler", "GaussianDiffusion", "LatentDiffusion", "Sampler",
           "StableDiffusion", "get_sampler", "guided_model", "make_beta_schedule", "register_sampler"]
