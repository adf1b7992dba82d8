"""Presets: one switch that scales every notebook and command.

``MINILDM_PRESET`` selects ``smoke`` (CI: seconds, tiny models), ``cpu`` (a laptop:
minutes, results that visibly work) or ``gpu`` (full quality). When the variable is
unset the default is ``gpu`` if CUDA is available, else ``cpu``.

Presets choose *sizes and step counts*, never different code paths: the same
functions run in every preset.

Device choice, autocast and seeding live in :mod:`minildm.engine.device`. Taught in every notebook
(each reads ``MINILDM_PRESET`` in its first cell).
"""
from __future__ import annotations

import os

import torch

from .preset_sections import (T2I_HOLDOUT, AblationPreset, AutoencoderPreset, CheckerPreset, CondPreset,
                              FeatureNetPreset, FirstStagePreset, I2IPreset, LDMPreset, Preset, T2IPreset, T2ISize, UNetSize)

__all__ = ["PRESET_ENV", "PRESET_NAMES", "get_preset", "preset_name", "Preset", "UNetSize", "AutoencoderPreset",
           "FeatureNetPreset", "AblationPreset", "FirstStagePreset", "LDMPreset", "CheckerPreset", "CondPreset",
           "T2ISize", "T2IPreset", "T2I_HOLDOUT", "I2IPreset"]

PRESET_ENV = "MINILDM_PRESET"
PRESET_NAMES = ("smoke", "cpu", "gpu")


_PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        seed=0,
        num_workers=0,
        ae=AutoencoderPreset(
            image_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
            z_channels=4, norm_num_groups=4, n_embed=64, batch_size=8, steps=12, disc_start=6,
            disc_ndf=16, disc_weight_scale=1.0, lr=2e-3,
            lpips_net="alex", n_train=64, n_eval=16,
        ),
        features=FeatureNetPreset(image_size=64, width=8, batch_size=16, steps=10, lr=2e-3, n_train=64, n_eval=32),
        ablation=AblationPreset(
            factors=(1, 2, 4, 8, 16, 32), z_channels=((1, 3), (2, 3), (4, 3), (8, 4), (16, 16), (32, 64)), variant="l1-lpips", image_size=64,
            steps=3, unet=UNetSize(16, (1, 2), 1, (2,), 1),
            unet_batch_size=2, timing_steps=1,
        ),
        ldm=LDMPreset(
            factors=(1, 2, 4, 8, 16), image_size=64, unet=UNetSize(16, (1, 2), 1, (2,), 1),
            schedule="scaled_linear", timesteps=1000, batch_size=8, lr=1e-3,
            ema_decay=0.999, budget_s=2.0, eval_points=2, n_fid=16, eval_ddim_steps=5, n_train=32,
            linear_start=0.0015, linear_end=0.0155,
        ),
        checker=CheckerPreset(image_size=64, width=8, batch_size=16, steps=10, lr=2e-3, n_train=64, n_eval=32),
        cond=CondPreset(f=4, image_size=64, unet=UNetSize(16, (1, 2), 1, (1, 2), 2, 1), context_dim=16, layout_depth=1,
                        schedule="scaled_linear", linear_start=0.0015, linear_end=0.0155, timesteps=1000,
                        batch_size=8, lr=1e-3, ema_decay=0.99, p_uncond=0.1,
                        steps=4, n_train=32, n_eval=8, eval_ddim_steps=4, guidance_scales=(1.0, 3.0)),
        t2i=T2IPreset(f=4, image_size=64, size="M", max_length=48, schedule="linear", timesteps=1000,
                      sizes=(T2ISize("S", UNetSize(8, (1, 2), 1, (2,), 2, 1), 16, 1), T2ISize("M", UNetSize(16, (1, 2), 1, (1, 2), 2, 1), 16, 1),
                             T2ISize("L", UNetSize(24, (1, 2), 1, (1, 2), 2, 1), 24, 1)),
                      batch_size=8, lr=1e-3, ema_decay=0.99, p_uncond=0.1, steps=4, n_train=32, holdout=T2I_HOLDOUT,
                      n_eval_per_kind=1, samples_per_prompt=1, eval_ddim_steps=4, guidance_scales=(1.0, 3.0),
                      curve_points=2, curve_prompts=1, curve_scale=3.0, checkpoint_every=2),
        first_stage=FirstStagePreset(variant="l1-lpips", image_size=64, z_channels=4, steps=6, batch_size=8, lr=8e-4),
        i2i=I2IPreset(f=4, image_size=64, unet=UNetSize(16, (1, 2), 1, (2,), 2), schedule="scaled_linear",
                      linear_start=0.0015, linear_end=0.0155, timesteps=1000, batch_size=4, lr=1e-3, ema_decay=0.99,
                      n_train=16, n_eval=8, eval_ddim_steps=3, sr_steps=3, inpaint_steps=3, semantic_steps=3,
                      compare_steps=2, photo_first_stage_steps=3, asym_steps=3, asym_batch_size=4),
    ),
    "cpu": Preset(
        name="cpu",
        seed=0,
        num_workers=0,
        ae=AutoencoderPreset(
            image_size=64, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(),
            z_channels=4, norm_num_groups=4, n_embed=256, batch_size=8, steps=1000, disc_start=600,
            disc_ndf=16, disc_weight_scale=0.2, lr=3e-4,
            lpips_net="alex", n_train=4000, n_eval=256,
        ),
        features=FeatureNetPreset(image_size=64, width=32, batch_size=32, steps=3000, lr=2e-3, n_train=8000,
                                  n_eval=512),
        ablation=AblationPreset(
            factors=(1, 2, 4, 8, 16, 32), z_channels=((1, 3), (2, 3), (4, 3), (8, 4), (16, 16), (32, 64)), variant="l1-lpips", image_size=64,
            # 3,000 steps at the larger step size of kl-f4: after 1,000 steps at 3e-4, f = 16 and 32 still
            # decoded every input to the same image
            steps=3000, lr=8e-4, unet=UNetSize(64, (1, 2), 2, (2,), 4),
            unet_batch_size=8, timing_steps=5,
        ),
        # width 32 (1.2 M parameters, 2.4 MB in float16 per shipped model); 30 minutes per model on one CPU
        # thread, measured at four points (the shipped models; notebook 03 loads them)
        ldm=LDMPreset(
            factors=(1, 2, 4, 8, 16), image_size=64, unet=UNetSize(32, (1, 2, 2), 1, (4,), 4),
            schedule="scaled_linear", timesteps=1000, batch_size=32, lr=3e-4,
            ema_decay=0.999, budget_s=1800.0, eval_points=4, n_fid=128, eval_ddim_steps=20, n_train=4000,
            linear_start=0.0015, linear_end=0.0155,
        ),
        checker=CheckerPreset(image_size=64, width=24, batch_size=32, steps=4000, lr=2e-3, n_train=8000, n_eval=512),
        # attention at every level and the pooled condition, grown from (2, 4) without it at 38,000 (class) and
        # 19,000 (layout) steps: the class model drew round hexagons (circle vs hexagon: 62 of 70 errors in 512
        # samples at s = 4; every other shape ≥ 97 % right), the layout model placed boxes but missed shapes
        cond=CondPreset(f=4, image_size=64, unet=UNetSize(32, (1, 2, 2), 1, (1, 2, 4), 4, 1), context_dim=64,
                        pooled_context=True, layout_depth=2, schedule="scaled_linear", linear_start=0.0015,
                        linear_end=0.0155,
                        timesteps=1000, batch_size=32, lr=1e-3, ema_decay=0.999,
                        p_uncond=0.1, steps=24000, n_train=8000, n_eval=512, eval_ddim_steps=20,
                        guidance_scales=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5), warmup_steps=200,
                        min_lr_ratio=0.1, layout_steps=10000, snr_gamma=5.0,
                        # layout and class on v with the x̂₀ weight capped at 5 (layout boxes: IoU 0.64, shapes 76 %
                        # at s = 3). The shipped class model: 22,000 steps on ε with min-SNR-5 (54.5 % shape+colour at
                        # s = 7.5, 512 samples), then continued on v: on kl-f4's latents the ε model's x̂₀ at high
                        # noise is too imprecise (sampled latents 2-7x the data's std: textured backgrounds)
                        loss_weighting="capped"),
        t2i=T2IPreset(f=4, image_size=64, size="M", max_length=48, schedule="scaled_linear", linear_start=0.0015,
                      linear_end=0.0155, timesteps=1000,
                      # the scaling study's three widths; M (the main model) is the widest a CPU trains in
                      # about an hour (4.3 GFLOP per step for S, 17 for M; 8,000 steps)
                      sizes=(T2ISize("XS", UNetSize(8, (1, 2, 2), 1, (2, 4), 2, 1), 16, 1),
                             T2ISize("S", UNetSize(16, (1, 2, 2), 1, (2, 4), 2, 1), 32, 2),
                             T2ISize("M", UNetSize(32, (1, 2, 2), 1, (2, 4), 4, 1), 64, 2)),
                      # 32,000 captioned scenes: the shipped models train for tens of thousands of steps, and on
                      # 8,000 scenes every one would be seen over a hundred times
                      batch_size=32, lr=1e-3, ema_decay=0.999, p_uncond=0.1, steps=8000, n_train=32000,
                      # 50 prompts per kind x 2 samples: 300 samples per group, so all-correct is within ±3 points
                      holdout=T2I_HOLDOUT, n_eval_per_kind=50, samples_per_prompt=2, eval_ddim_steps=20,
                      guidance_scales=(0.0, 1.0, 3.0, 5.0, 7.5), curve_points=4, curve_prompts=8, curve_scale=5.0,
                      checkpoint_every=500, warmup_steps=200, min_lr_ratio=0.1,
                      # notebook 04's recipe, under which its class and layout models learned shapes and places:
                      # v with the x̂₀ weight capped at 5 on the scaled-linear schedule. Measured on M after
                      # 8,000 steps on the linear schedule (300 samples per group): ε with min-SNR-5 and the
                      # pooled caption (the first shipped models) shape 28 %, position 14 %, all correct
                      # 8.0 % seen / 6.7 % held-out; capped v without the pooled caption shape 15 % (chance),
                      # position 97 %, all correct 8 % / 7 %. The shipped models continue the ε models on v
                      parameterization="v", loss_weighting="capped", snr_gamma=5.0, pooled_context=True),
        # four latent channels, a larger step size and 4x the ablation's steps: the checker reads the right
        # shape in 92.6 % of its validation reconstructions (the ablation's ae-kl-f4: 73 %), PSNR 24.4 dB
        first_stage=FirstStagePreset(variant="l1-lpips", image_size=64, z_channels=4, steps=4000, batch_size=8,
                                     lr=8e-4),
        # notebook 04's schedule and loss on kl-f4's latents; 256 validation images per metric. Width 24 (0.7 M
        # parameters, 1.4 MB in float16 per shipped model: four of them fit the shipped-weights budget)
        i2i=I2IPreset(f=4, image_size=64, unet=UNetSize(24, (1, 2, 2), 1, (2, 4), 4), schedule="scaled_linear",
                      linear_start=0.0015, linear_end=0.0155, timesteps=1000, batch_size=32, lr=1e-3,
                      ema_decay=0.999, n_train=8000, n_eval=256, eval_ddim_steps=20, sr_steps=8000,
                      inpaint_steps=8000, semantic_steps=12000, compare_steps=1500, photo_first_stage_steps=3000,
                      warmup_steps=200, min_lr_ratio=0.1),
    ),
    "gpu": Preset(
        name="gpu",
        seed=0,
        num_workers=4,
        ae=AutoencoderPreset(
            image_size=128, ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(),
            z_channels=4, norm_num_groups=32, n_embed=8192, batch_size=32, steps=20000,
            disc_start=10000, disc_ndf=64, disc_weight_scale=1.0, lr=4.5e-6 * 32,
            lpips_net="vgg", n_train=50000, n_eval=1000,
        ),
        features=FeatureNetPreset(image_size=128, width=48, batch_size=64, steps=5000, lr=1e-3, n_train=50000,
                                  n_eval=2000),
        ablation=AblationPreset(
            factors=(1, 2, 4, 8, 16, 32), z_channels=((1, 3), (2, 3), (4, 3), (8, 4), (16, 16), (32, 64)), variant="l1-lpips-gan", image_size=128,
            steps=20000, unet=UNetSize(128, (1, 2, 2), 2, (2, 4), 4),
            unet_batch_size=32, timing_steps=20,
        ),
        ldm=LDMPreset(
            factors=(1, 2, 4, 8, 16), image_size=128, unet=UNetSize(128, (1, 2, 2, 4), 2, (4, 8), 8),
            schedule="scaled_linear", timesteps=1000,
            batch_size=64, lr=1e-4, ema_decay=0.9999, budget_s=3600.0, eval_points=6, n_fid=2000,
            eval_ddim_steps=50, n_train=50000,
            linear_start=0.0015, linear_end=0.0155,
        ),
        checker=CheckerPreset(image_size=128, width=48, batch_size=64, steps=8000, lr=1e-3, n_train=50000,
                              n_eval=2000),
        cond=CondPreset(f=4, image_size=128, unet=UNetSize(128, (1, 2, 2, 4), 2, (1, 2, 4, 8), 8, 1), context_dim=256,
                        layout_depth=4, schedule="scaled_linear", linear_start=0.0015, linear_end=0.0155,
                        timesteps=1000, batch_size=64, lr=1e-4, ema_decay=0.9999,
                        p_uncond=0.1, steps=100000, n_train=50000, n_eval=1120, eval_ddim_steps=50,
                        guidance_scales=(0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5)),
        t2i=T2IPreset(f=4, image_size=128, size="M", max_length=48, schedule="linear", timesteps=1000,
                      sizes=(T2ISize("S", UNetSize(64, (1, 2, 2, 4), 2, (2, 4, 8), 4, 1), 128, 2),
                             T2ISize("M", UNetSize(128, (1, 2, 2, 4), 2, (2, 4, 8), 8, 1), 256, 4),
                             T2ISize("L", UNetSize(192, (1, 2, 3, 4), 2, (2, 4, 8), 8, 2), 384, 6)),
                      batch_size=128, lr=1e-4, ema_decay=0.9999, p_uncond=0.1, steps=100000, n_train=200000,
                      holdout=T2I_HOLDOUT, n_eval_per_kind=100, samples_per_prompt=4, eval_ddim_steps=50,
                      guidance_scales=(0.0, 1.0, 2.0, 3.0, 5.0, 7.5), curve_points=10, curve_prompts=50,
                      curve_scale=3.0, checkpoint_every=2000),
        first_stage=FirstStagePreset(variant="l1-lpips-gan", image_size=128, z_channels=4, steps=40000, batch_size=32,
                                     lr=4.5e-6 * 32),
        i2i=I2IPreset(f=4, image_size=128, unet=UNetSize(128, (1, 2, 2, 4), 2, (2, 4, 8), 8), schedule="scaled_linear",
                      linear_start=0.0015, linear_end=0.0155, timesteps=1000, batch_size=64, lr=1e-4,
                      ema_decay=0.9999, n_train=50000, n_eval=1000, eval_ddim_steps=50, sr_steps=100000,
                      inpaint_steps=100000, semantic_steps=100000, compare_steps=20000,
                      photo_first_stage_steps=20000, asym_steps=20000, asym_batch_size=32, asym_lr=2e-4,
                      warmup_steps=1000, min_lr_ratio=0.1),
    ),
}


def preset_name(name: str | None = None) -> str:
    """The preset's name: ``name`` if given, else ``$MINILDM_PRESET``, else gpu/cpu by CUDA."""
    if name is None:
        name = os.environ.get(PRESET_ENV) or ("gpu" if torch.cuda.is_available() else "cpu")
    name = name.strip().lower()
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)} "
                         f"(set {PRESET_ENV} or pass preset=...)")
    return name


def get_preset(name: str | Preset | None = None) -> Preset:
    """Return the :class:`Preset` called ``name`` (default: see :func:`preset_name`)."""
    if isinstance(name, Preset):
        return name
    return _PRESETS[preset_name(name)]


