"""Samplers of the reverse process (notebook 03)."""
from .ddim import DDIMSampler

__all__ = ["DDIMSampler"]
