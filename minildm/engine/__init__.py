"""How things are trained: one Trainer (AMP, accumulation, DDP, exact resume) and what it needs.

* :mod:`minildm.engine.trainer`: ``Trainer`` (notebooks 01, 03, 05); its checkpoints in
  :mod:`minildm.engine.trainer_state`
* :mod:`minildm.engine.tasks`: the training objectives it optimises (autoencoder, latent diffusion)
* :mod:`minildm.engine.batches`: deterministic batches, pre-encoded latents
* :mod:`minildm.engine.checkpoint`: atomic safetensors checkpoints and weights
* :mod:`minildm.engine.ema`: exponential moving average of weights (notebook 05)
* :mod:`minildm.engine.distributed`: torchrun / DDP helpers (notebook 05)
* :mod:`minildm.engine.throughput`: FLOPs, MFU, timing (notebooks 02, 05)
* :mod:`minildm.engine.device`: device choice, autocast dtype, seeding
"""
