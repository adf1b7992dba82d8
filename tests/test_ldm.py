"""LatentDiffusion: frozen first stage, scale factor = 1/std, loss, sampling shapes and determinism, task."""
from __future__ import annotations

import pytest
import torch

from minildm.diffusion.ldm import LatentDiffusion
from minildm.diffusion.process import GaussianDiffusion
from minildm.engine.tasks import LatentDiffusionTask
from minildm.models.autoencoder import AutoencoderKL, IdentityConfig, IdentityFirstStage
from minildm.models.encoder_decoder import AutoencoderConfig
from minildm.models.unet import UNetModel


def _ldm(first_stage=None, c=4):
    torch.manual_seed(0)
    fs = first_stage or AutoencoderKL(AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                                        z_channels=c, norm_num_groups=4))
    unet = UNetModel(in_channels=c, out_channels=c, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=2, num_groups=4)
    return LatentDiffusion(fs, unet, GaussianDiffusion("linear", 50), image_size=16)


def test_first_stage_frozen_and_scale_factor():
    ldm = _ldm()
    assert not any(p.requires_grad for p in ldm.first_stage_model.parameters())
    assert ldm.latent_shape == (4, 8, 8)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    s = ldm.compute_scale_factor(x, batch_size=4)
    z = ldm.encode_first_stage(x)
    assert z.std().item() == pytest.approx(1.0, rel=1e-4) and s == pytest.approx(float(ldm.scale_factor))
    assert ldm.decode_first_stage(z).shape == x.shape
    ldm.train()
    assert not ldm.first_stage_model.training


def test_pixel_space_is_the_identity_first_stage():
    ldm = _ldm(IdentityFirstStage(IdentityConfig(3, 16)), c=3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(ldm.encode_first_stage(x), x) and ldm.latent_shape == (3, 16, 16)


def test_loss_backward_and_sampling():
    ldm = _ldm()
    z = torch.randn(2, 4, 8, 8)
    loss = ldm.loss(z)
    loss.backward()
    assert loss.ndim == 0 and all(p.grad is not None for p in ldm.model.parameters())
    for sampler, steps in (("ddim", 5), ("ddpm", None)):
        kw = {"steps": steps} if steps else {}
        a = ldm.sample(2, sampler=sampler, generator=torch.Generator().manual_seed(3), **kw)
        b = ldm.sample(2, sampler=sampler, generator=torch.Generator().manual_seed(3), **kw)
        assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert ldm.sample(1, steps=3, decode=False).shape == (1, 4, 8, 8)


def test_bad_inputs():
    ldm = _ldm()
    with pytest.raises(ValueError, match="latents"):
        ldm.loss(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="latents"):
        ldm.loss(torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="sampler"):
        ldm.sample(1, sampler="euler")
    with pytest.raises(ValueError, match="steps"):
        ldm.sample(1, steps=0)
    with pytest.raises(ValueError, match="n must"):
        ldm.sample(0)
    with pytest.raises(ValueError, match="latent channels"):
        LatentDiffusion(ldm.first_stage_model, UNetModel(in_channels=3, out_channels=3, model_channels=16,
                                                         channel_mult=(1,), num_groups=4),
                        GaussianDiffusion(), 16)
    with pytest.raises(ValueError, match="divisible"):
        LatentDiffusion(ldm.first_stage_model, ldm.model, GaussianDiffusion(), 15)


def test_task_step_and_nan_loss():
    ldm = _ldm()
    task = LatentDiffusionTask(ldm, lr=1e-3)
    opt = task.configure_optimizers()["unet"]
    loss, logs = task.training_step({"image": torch.rand(2, 3, 16, 16) * 2 - 1}, 0, "unet")
    loss.backward()
    opt.step()
    assert "train/loss" in logs
    with pytest.raises(FloatingPointError, match="loss"):
        task.training_step({"latent": torch.full((2, 4, 8, 8), float("nan"))}, 1, "unet")


def test_task_loss_weighting():
    ldm = _ldm()
    ldm.diffusion = GaussianDiffusion("linear", 50, "v")  # for ε, "capped" is min-SNR itself
    z = torch.randn(4, 4, 8, 8)
    losses = {}
    for weighting in ("min_snr", "capped"):
        task = LatentDiffusionTask(ldm, lr=1e-3, snr_gamma=2.0, loss_weighting=weighting)
        torch.manual_seed(1)
        losses[weighting] = task.training_step({"latent": z}, 0, "unet")[0].item()
        torch.manual_seed(1)
        expected = ldm.loss(z, snr_gamma=2.0, loss_weighting=weighting).item()
        assert losses[weighting] == pytest.approx(expected, rel=1e-6)
    assert losses["capped"] != pytest.approx(losses["min_snr"])
    with pytest.raises(ValueError, match="loss_weighting"):
        LatentDiffusionTask(ldm, lr=1e-3, loss_weighting="max")
