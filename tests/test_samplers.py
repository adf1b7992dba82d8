"""Samplers: the registry, bit-identity with the loops they replaced, inpainting with mask / x0, bad input."""
from __future__ import annotations

import math

import pytest
import torch

from minildm.diffusion.ldm import LatentDiffusion
from minildm.diffusion.process import GaussianDiffusion
from minildm.diffusion.samplers import (SAMPLERS, DDIMSampler, DDPMSampler, DPMPP2MSampler, Sampler, get_sampler,
                                        register_sampler)
from minildm.diffusion.samplers.base import initial_noise
from minildm.models.autoencoder import IdentityConfig, IdentityFirstStage
from minildm.models.unet import UNetModel

SHAPE = (3, 2, 4, 4)


def _model(d: GaussianDiffusion):
    """A fixed, non-trivial prediction that depends on x and t (no network needed)."""
    def model(x, t, **_):
        return torch.tanh(0.7 * x + 0.3) * (1 + t.float()[:, None, None, None] / d.num_timesteps)
    return model


# -- the loops of GaussianDiffusion.ddpm_sample and DDIMSampler.sample before the sampler interface ----------
def _old_ddpm(d, model, shape, generator, x_T=None, callback=None):
    x = initial_noise(shape, generator, "cpu") if x_T is None else x_T
    for i in reversed(range(d.num_timesteps)):
        t = torch.full((shape[0],), i, dtype=torch.long)
        mean, log_var, x0 = d.p_mean_variance(model, x, t)
        x = mean + (0.5 * log_var).exp() * initial_noise(shape, generator, "cpu") if i > 0 else mean
        if callback is not None:
            callback(i, x, x0)
    return x


def _old_ddim(d, model, shape, steps, eta, generator, x_T=None, callback=None, inpaint=None, set_alpha_to_one=True):
    """The old DDIM loop; with ``inpaint`` = (mask, x0) the CompVis-style replacement written out.

    The old loop's last step went to ᾱ = 1 (``set_alpha_to_one=True``, still the sampler's default); with
    ``set_alpha_to_one=False`` (CompVis / Stable Diffusion) it goes to ᾱ_0 and, for η > 0, adds noise there too."""
    T = d.num_timesteps
    c = T // steps
    taus = (torch.arange(0, T, c)[:steps] + (1 if c > 1 else 0)).clamp(max=T - 1)
    x = initial_noise(shape, generator, "cpu") if x_T is None else x_T
    ac = d.alphas_cumprod
    for k in range(len(taus) - 1, -1, -1):
        tau = int(taus[k])
        t = torch.full((shape[0],), tau, dtype=torch.long)
        out = model(x, t)
        x0 = d.predict_x0(x, t, out)
        eps = d.predict_eps(x, t, out)
        a_t = float(ac[tau])
        a_prev = float(ac[int(taus[k - 1])]) if k > 0 else (1.0 if set_alpha_to_one else float(ac[0]))
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:  # at the last step only with ᾱ_0 (σ = 0 there with ᾱ = 1)
            x = x + sigma * initial_noise(shape, generator, "cpu")
        if inpaint is not None:
            m, known = inpaint
            if k > 0:
                z = initial_noise(shape, generator, "cpu")
                a = ac[int(taus[k - 1])]
                known = (a.sqrt().float() * known + (1 - a).sqrt().float() * z)
            x = known * m + (1 - m) * x
        if callback is not None:
            callback(tau, x, x0)
    return x


def test_registry():
    assert SAMPLERS["ddpm"] is DDPMSampler and SAMPLERS["ddim"] is DDIMSampler
    assert SAMPLERS["dpmpp-2m"] is DPMPP2MSampler
    d = GaussianDiffusion("linear", 20)
    s = get_sampler("ddim", d)
    assert isinstance(s, DDIMSampler) and isinstance(s, Sampler) and s.diffusion is d and s.name == "ddim"
    assert DDIMSampler.options == ("steps", "eta", "set_alpha_to_one") and DDPMSampler.options == ()
    assert DPMPP2MSampler.options == ("steps", "timestep_spacing")
    with pytest.raises(ValueError, match="unknown sampler 'euler': choose one of ddim, ddpm, dpmpp-2m$") as err:
        get_sampler("euler", d)
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="Sampler subclass"):
        register_sampler("nope")(object)
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("ddim")(DDPMSampler)
    with pytest.raises(ValueError, match="GaussianDiffusion"):
        DDPMSampler("linear")
    with pytest.raises(TypeError):
        Sampler(d)  # abstract

    @register_sampler("test-last-x0")
    class LastX0(Sampler):
        def sample(self, model_fn, shape, *, x_T=None, mask=None, x0=None, callback=None, generator=None,
                   progress=False, device="cpu", clip_denoised=False, **model_kwargs):
            return torch.zeros(shape)

    try:
        assert isinstance(get_sampler("test-last-x0", d), LastX0) and LastX0.name == "test-last-x0"
    finally:
        del SAMPLERS["test-last-x0"]


@pytest.mark.parametrize("kind", ["ddpm", "ddim-eta0", "ddim-eta1"])
def test_samples_are_bit_identical_to_the_old_loops(kind):
    """The old loops' DDIM ended at ᾱ = 1: ``set_alpha_to_one=True`` reproduces them bit for bit."""
    d = GaussianDiffusion("linear", 40)
    model = _model(d)
    new_traj, old_traj = [], []
    for x_T in (None, torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))):
        if kind == "ddpm":
            new = DDPMSampler(d).sample(model, SHAPE, x_T=x_T, generator=torch.Generator().manual_seed(1),
                                        callback=lambda *a: new_traj.append(a))
            old = _old_ddpm(d, model, SHAPE, torch.Generator().manual_seed(1), x_T,
                            callback=lambda *a: old_traj.append(a))
        else:
            eta = float(kind[-1])
            new = DDIMSampler(d).sample(model, SHAPE, 7, eta, x_T=x_T, generator=torch.Generator().manual_seed(1),
                                        callback=lambda *a: new_traj.append(a), set_alpha_to_one=True)
            old = _old_ddim(d, model, SHAPE, 7, eta, torch.Generator().manual_seed(1), x_T,
                            callback=lambda *a: old_traj.append(a), set_alpha_to_one=True)
        assert torch.equal(new, old)
    assert len(new_traj) == len(old_traj) > 0
    for (t1, x1, p1), (t2, x2, p2) in zip(new_traj, old_traj):
        assert t1 == t2 and torch.equal(x1, x2) and torch.equal(p1, p2)


def test_latent_diffusion_samples_are_bit_identical_to_the_old_loops():
    torch.manual_seed(0)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=2, num_groups=4)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = GaussianDiffusion("linear", 30)
    ldm = LatentDiffusion(IdentityFirstStage(IdentityConfig(3, 8)), unet, d, image_size=8)
    shape = (2, 3, 8, 8)
    with torch.no_grad():
        for sampler, kw, old in (("ddpm", {}, lambda g: _old_ddpm(d, unet, shape, g)),
                                 ("ddim", {"steps": 6}, lambda g: _old_ddim(d, unet, shape, 6, 0.0, g, set_alpha_to_one=True)),
                                 ("ddim", {"steps": 5, "eta": 1.0},
                                  lambda g: _old_ddim(d, unet, shape, 5, 1.0, g, set_alpha_to_one=True)),
                                 ("ddim", {"steps": 5, "eta": 1.0, "sampler_options": {"set_alpha_to_one": False}},
                                  lambda g: _old_ddim(d, unet, shape, 5, 1.0, g, set_alpha_to_one=False))):
            new = ldm.sample(2, sampler=sampler, generator=torch.Generator().manual_seed(4), decode=False, **kw)
            assert torch.equal(new, old(torch.Generator().manual_seed(4))), (sampler, kw)


def _known_case():
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0  # keep the left half
    return x0, mask


@pytest.mark.parametrize("sampler, kw", [("ddpm", {}), ("ddim", {"steps": 6}), ("ddim", {"steps": 6, "eta": 1.0}),
                                        ("ddim", {"steps": 6, "eta": 1.0, "set_alpha_to_one": True}),
                                        ("dpmpp-2m", {"steps": 6})])
def test_inpainting_keeps_the_known_region_exactly(sampler, kw):
    d = GaussianDiffusion("linear", 30)
    x0, mask = _known_case()
    s = get_sampler(sampler, d)
    out = s.sample(_model(d), SHAPE, mask=mask, x0=x0, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(out[..., :2], x0[..., :2])
    assert not torch.allclose(out[..., 2:], x0[..., 2:], atol=0.1)  # the model fills in the rest
    full = s.sample(_model(d), SHAPE, mask=torch.ones(4, 4), x0=x0, generator=torch.Generator().manual_seed(0),
                    **kw)
    assert torch.equal(full, x0)
    bool_mask = s.sample(_model(d), SHAPE, mask=mask.bool(), x0=x0, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(bool_mask, out)


def test_inpainting_follows_the_compvis_replacement():
    """After each step to τ', x ← q_sample(x0, τ') · m + (1 − m) · x; after the last, x0 itself."""
    d = GaussianDiffusion("linear", 30)
    x0, mask = _known_case()
    model = _model(d)
    new = DDIMSampler(d).sample(model, SHAPE, 6, mask=mask, x0=x0, generator=torch.Generator().manual_seed(2))
    old = _old_ddim(d, model, SHAPE, 6, 0.0, torch.Generator().manual_seed(2), inpaint=(mask, x0))
    assert torch.allclose(new, old, atol=1e-6)
    # a mask of zeros changes nothing for the deterministic DDIM (the extra noise draws are not used)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    plain = DDIMSampler(d).sample(model, SHAPE, 6, x_T=x_T)
    zero = DDIMSampler(d).sample(model, SHAPE, 6, x_T=x_T, mask=torch.zeros(SHAPE), x0=x0)
    assert torch.equal(plain, zero)


def test_latent_diffusion_inpaints_in_latent_space():
    torch.manual_seed(0)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1,), num_res_blocks=1,
                     attention_resolutions=(), num_heads=2, num_groups=4)
    ldm = LatentDiffusion(IdentityFirstStage(IdentityConfig(3, 8)), unet, GaussianDiffusion("linear", 20), 8)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    for sampler in ("ddim", "ddpm", "dpmpp-2m"):
        z = ldm.sample(2, sampler=sampler, steps=4, mask=mask, x0=x0, decode=False)
        assert torch.equal(z[..., 2:6, 2:6], x0[..., 2:6, 2:6])
    with pytest.raises(ValueError, match="x0"):
        ldm.sample(2, mask=mask)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask=torch.ones(SHAPE)), "both mask and x0"),
    (dict(x0=torch.ones(SHAPE)), "both mask and x0"),
    (dict(mask=torch.ones(3, 3, 4, 4), x0=torch.ones(SHAPE)), "mask of shape .* does not broadcast"),
    (dict(mask=torch.ones(SHAPE), x0=torch.ones(2, 2, 4, 4)), "x0 of shape .* does not broadcast"),
    (dict(mask=torch.full(SHAPE, 1.5), x0=torch.ones(SHAPE)), r"mask values must lie in \[0, 1\]"),
    (dict(mask=torch.full(SHAPE, -0.5), x0=torch.ones(SHAPE)), r"mask values must lie in \[0, 1\]"),
    (dict(mask=torch.full(SHAPE, float("nan")), x0=torch.ones(SHAPE)), r"mask values must lie in \[0, 1\]"),
    (dict(mask=torch.ones(SHAPE), x0=torch.full(SHAPE, float("inf"))), "x0 must be finite"),
    (dict(mask=[[1.0]], x0=torch.ones(SHAPE)), "mask must be a tensor"),
    (dict(x_T=torch.ones(1, 2, 4, 4)), "x_T must be a tensor of shape"),
])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp-2m"])
def test_bad_inputs_are_one_line_value_errors(sampler, kwargs, match):
    d = GaussianDiffusion("linear", 10)
    with pytest.raises(ValueError, match=match) as err:
        get_sampler(sampler, d).sample(_model(d), SHAPE, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("eta", [-1.0, float("nan"), float("inf"), True, "0"])
def test_bad_eta(eta):
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        DDIMSampler(GaussianDiffusion("linear", 10)).sample(lambda x, t: x, SHAPE, 2, eta)


@pytest.mark.parametrize("shape", [(0, 2, 4, 4), (2, -1), (), ("a", 2)])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="shape must be a sequence of positive ints"):
        DDPMSampler(GaussianDiffusion("linear", 10)).sample(lambda x, t: x, shape)
