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


def _concat_ldm(key: str, cc: int = 3, context_dim: int | None = None):
    torch.manual_seed(0)
    fs = IdentityFirstStage(IdentityConfig(3, 8))
    unet = UNetModel(in_channels=3 + cc, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=2, num_groups=4, context_dim=context_dim)
    for p in unet.parameters():
        p.data.normal_(0, 0.05)
    return LatentDiffusion(fs, unet, GaussianDiffusion("linear", 20), image_size=8, conditioning_key=key)


@pytest.mark.parametrize("key", ["concat", "hybrid"])
def test_concat_conditioning_loss_and_sampling(key):
    ldm = _concat_ldm(key, context_dim=6 if key == "hybrid" else None)
    assert ldm.conditioning_key == key and ldm.concat_channels == 3
    z, cc = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    ctx = {"context": torch.randn(2, 4, 6)} if key == "hybrid" else {}
    loss = ldm.loss(z, c_concat=cc, generator=torch.Generator().manual_seed(0), **ctx)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and ldm.model.input_blocks[0][0].weight.grad[:, 3:].abs().sum() > 0
    other = ldm.loss(z, c_concat=torch.randn(2, 3, 8, 8), generator=torch.Generator().manual_seed(0), **ctx)
    assert other.item() != pytest.approx(loss.item())  # the condition reaches the UNet
    guide = {"guidance_scale": 3.0, "uncond": torch.zeros(1, 4, 6)} if key == "hybrid" else {}
    for sampler in ("ddim", "ddpm"):
        a = ldm.sample(2, sampler=sampler, steps=4, c_concat=cc, generator=torch.Generator().manual_seed(1), **ctx,
                       **guide)
        b = ldm.sample(2, sampler=sampler, steps=4, c_concat=cc, generator=torch.Generator().manual_seed(1), **ctx,
                       **guide)
        assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)
    eps = ldm.apply_model(z, torch.tensor([1, 5]), c_concat=cc, **ctx)
    assert eps.shape == z.shape
    with pytest.raises(ValueError, match=r"needs c_concat of shape \(2, 3, 8, 8\)"):
        ldm.loss(z, **ctx)
    with pytest.raises(ValueError, match=r"expects 6 input channels = 3 latent channels \+ 3 condition channels, "
                                         r"got c_concat with 2 channels \(3 \+ 2 = 5\)"):
        ldm.sample(2, c_concat=torch.randn(2, 2, 8, 8), **ctx)
    with pytest.raises(ValueError, match=r"c_concat must have shape \(2, 3, 8, 8\)"):
        ldm.loss(z, c_concat=torch.randn(2, 3, 4, 4), **ctx)


def test_conditioning_key_channel_checks():
    fs = IdentityFirstStage(IdentityConfig(3, 8))
    unet7 = UNetModel(in_channels=7, out_channels=3, model_channels=16, channel_mult=(1,), num_groups=4)
    with pytest.raises(ValueError, match=r"take the 3 latent channels, it has in_channels=7 .*'concat' or 'hybrid'"):
        LatentDiffusion(fs, unet7, GaussianDiffusion("linear", 20), 8)
    unet3 = UNetModel(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1,), num_groups=4)
    with pytest.raises(ValueError, match=r"count the 3 latent channels \+ the condition channels"):
        LatentDiffusion(fs, unet3, GaussianDiffusion("linear", 20), 8, conditioning_key="concat")
    with pytest.raises(ValueError, match="out_channels=7"):
        LatentDiffusion(fs, UNetModel(in_channels=7, out_channels=7, model_channels=16, channel_mult=(1,),
                                      num_groups=4), GaussianDiffusion("linear", 20), 8, conditioning_key="concat")
    with pytest.raises(ValueError, match="unknown conditioning_key 'adm'"):
        LatentDiffusion(fs, unet3, GaussianDiffusion("linear", 20), 8, conditioning_key="adm")
    ldm = LatentDiffusion(fs, unet3, GaussianDiffusion("linear", 20), 8)
    assert ldm.conditioning_key == "crossattn" and ldm.concat_channels == 0
    with pytest.raises(ValueError, match="c_concat needs a model with conditioning_key='concat' or 'hybrid'"):
        ldm.loss(torch.randn(2, 3, 8, 8), c_concat=torch.randn(2, 1, 8, 8))
