"""Diffusion: schedule properties, q_sample statistics, eps/x0/v identities, samplers, guidance, bad input."""
from __future__ import annotations

import pytest
import torch

from minildm.diffusion.guidance import guided_model
from minildm.diffusion.process import GaussianDiffusion, make_beta_schedule
from minildm.diffusion.samplers import DDIMSampler, DDPMSampler


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_schedules(schedule):
    d = GaussianDiffusion(schedule, 1000)
    assert d.betas.shape == (1000,) and (d.betas > 0).all() and (d.betas <= 0.999).all()
    assert (d.alphas_cumprod[1:] < d.alphas_cumprod[:-1]).all()  # ᾱ_t decreasing
    snr = d.snr(torch.arange(1000))
    assert (snr[1:] < snr[:-1]).all()  # SNR monotone
    assert d.alphas_cumprod[-1] < 0.01  # ends (nearly) in pure noise


def test_schedule_values():
    lin = make_beta_schedule("linear", 1000)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    sl = make_beta_schedule("scaled_linear", 1000)
    assert sl[0].item() == pytest.approx(0.00085) and sl[-1].item() == pytest.approx(0.012)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_beta_schedule("quadratic")
    with pytest.raises(ValueError, match="n_timestep"):
        make_beta_schedule("linear", 0)
    with pytest.raises(ValueError, match="parameterization"):
        GaussianDiffusion(parameterization="score")


def test_q_sample_statistics():
    d = GaussianDiffusion("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7)
    for t in (0, 300, 999):
        xt = d.q_sample(x0, torch.full((20000,), t), generator=g)
        a = d.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(a ** 0.5 * 0.7, abs=0.02)
        assert xt.var().item() == pytest.approx(1 - a, abs=0.02 + 0.02 * (1 - a))


@pytest.mark.parametrize("p", ["eps", "x0", "v"])
def test_parameterization_identities(p):
    d = GaussianDiffusion("cosine", 100, parameterization=p)
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 98])
    xt = d.q_sample(x0, t, eps)
    out = d.target(x0, eps, t)  # a perfect model
    assert torch.allclose(d.predict_x0(xt, t, out), x0, atol=1e-8)
    assert torch.allclose(d.predict_eps(xt, t, out), eps, atol=1e-6)
    v = d.get_v(x0, eps, t)
    assert torch.allclose(d.predict_x0(xt, t, v, "v"), x0, atol=1e-8)


def _perfect_model(d: GaussianDiffusion, x0: torch.Tensor):
    """The exact ε-prediction for a point mass at x0: ε = (x_t − √ᾱ x0)/√(1 − ᾱ)."""
    def model(x, t, **_):
        return d.predict_eps(x, t, x0.expand_as(x), "x0")
    return model


def test_samplers_recover_a_point_mass_and_are_deterministic():
    d = GaussianDiffusion("linear", 200)
    x0 = torch.full((1, 2, 4, 4), 0.5)
    model = _perfect_model(d, x0)
    # DDIM's last step to ᾱ = 1 returns x̂_0 itself; its default, to ᾱ_0 (CompVis, Stable Diffusion), leaves
    # the noise of t = 0, √(1 − ᾱ_0) = 0.01 here (test_sd_samplers checks that step)
    for sample in (lambda g: DDPMSampler(d).sample(model, (3, 2, 4, 4), generator=g),
                   lambda g: DDIMSampler(d).sample(model, (3, 2, 4, 4), steps=20, generator=g, set_alpha_to_one=True),
                   lambda g: DDIMSampler(d).sample(model, (3, 2, 4, 4), steps=10, eta=1.0, generator=g,
                                                   set_alpha_to_one=True)):
        a = sample(torch.Generator().manual_seed(1))
        b = sample(torch.Generator().manual_seed(1))
        assert a.shape == (3, 2, 4, 4) and torch.equal(a, b)
        assert torch.allclose(a, x0.expand_as(a), atol=1e-3)
    c = DDIMSampler(d).sample(model, (3, 2, 4, 4), steps=10, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert c.shape == (3, 2, 4, 4)


def test_ddim_timesteps_and_bad_input():
    s = DDIMSampler(GaussianDiffusion("linear", 1000))
    taus = s.timesteps(50)
    assert len(taus) == 50 and taus[0] == 1 and taus[-1] == 981
    with pytest.raises(ValueError, match="steps"):
        s.timesteps(0)
    with pytest.raises(ValueError, match="steps"):
        s.timesteps(2000)
    with pytest.raises(ValueError, match="eta"):
        s.sample(lambda x, t: x, (1, 1, 2, 2), steps=2, eta=-1)
    d = GaussianDiffusion("linear", 10)
    with pytest.raises(ValueError, match="timesteps"):
        d.q_sample(torch.zeros(2, 1), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="shape"):
        d.q_sample(torch.zeros(2, 1), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="noise"):
        d.q_sample(torch.zeros(2, 1), torch.tensor([0, 1]), torch.zeros(3, 1))


def test_training_loss_zero_for_a_perfect_model():
    d = GaussianDiffusion("linear", 100)
    x0 = torch.full((1, 2, 4, 4), 0.5)
    loss = d.training_losses(_perfect_model(d, x0), x0.expand(8, -1, -1, -1).clone(),
                             generator=torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and loss.max() < 1e-8


def test_guidance():
    calls = []

    def model(x, t, context=None):
        calls.append(x.shape[0])
        return x * 0 + context.mean(dim=(1, 2))[:, None, None, None]

    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([1, 1])
    ctx, null = torch.ones(2, 3, 4), torch.zeros(1, 3, 4)
    assert torch.equal(guided_model(model, 1.0, null)(x, t, context=ctx), model(x, t, context=ctx))
    calls.clear()
    out = guided_model(model, 3.0, null)(x, t, context=ctx)
    assert calls == [4]  # one batched forward for both halves
    assert torch.allclose(out, torch.full_like(out, 3.0))  # 0 + 3 · (1 − 0)
    with pytest.raises(ValueError, match=">= 0"):
        guided_model(model, -1.0)


def test_guidance_passes_c_concat_to_both_halves():
    seen = []

    def model(x, t, context=None, c_concat=None):
        seen.append(c_concat)
        return x * 0 + context.mean(dim=(1, 2))[:, None, None, None] + c_concat

    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([1, 1])
    ctx, null, cc = torch.ones(2, 3, 4), torch.zeros(1, 3, 4), torch.randn(2, 1, 2, 2)
    out = guided_model(model, 3.0, null)(x, t, context=ctx, c_concat=cc)
    assert torch.equal(seen[-1], torch.cat([cc, cc]))  # the spatial condition is kept for the ∅ half
    assert torch.allclose(out, cc + 3.0)  # (0 + cc) + 3 · ((1 + cc) − (0 + cc))
    assert torch.equal(guided_model(model, 1.0, null)(x, t, context=ctx, c_concat=cc), 1 + cc)
    assert seen[-1] is cc


def test_min_snr_weighting():
    d = GaussianDiffusion("linear", 100)
    x0 = torch.randn(4, 3, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 50, 99])
    model = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    plain = d.training_losses(model, x0, t=t, noise=noise)
    weighted = d.training_losses(model, x0, t=t, noise=noise, snr_gamma=5.0)
    snr = d.snr(t)
    assert snr[0] > 5 > snr[-1]  # the weight is capped at small t only
    assert torch.allclose(weighted, plain * torch.clamp(snr, max=5.0) / snr)
    assert torch.allclose(weighted[-1], plain[-1])
    with pytest.raises(ValueError, match="snr_gamma"):
        d.training_losses(model, x0, t=t, noise=noise, snr_gamma=0.0)


X0_WEIGHTS = [("eps", lambda snr: snr), ("v", lambda snr: 1 + snr), ("x0", lambda snr: torch.ones_like(snr))]


def _x0_error_case(p: str):
    """A diffusion of parameterisation p, (x0, noise, t, out) and the per-example ‖x_0 − x̂_0‖² of out."""
    d = GaussianDiffusion("linear", 1000, p)
    x0, noise = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([5, 300, 700, 999])
    out = torch.randn_like(x0)
    x0_err = (d.predict_x0(d.q_sample(x0, t, noise), t, out) - x0).pow(2).mean(dim=(1, 2, 3))
    return d, x0, noise, t, out, x0_err


@pytest.mark.parametrize("p, weight", X0_WEIGHTS)
def test_each_loss_is_a_weighted_x0_error(p, weight):
    """ε loss = SNR · ‖x_0 − x̂_0‖², v loss = (1 + SNR) · ‖x_0 − x̂_0‖², x_0 loss = ‖x_0 − x̂_0‖²."""
    d, x0, noise, t, out, x0_err = _x0_error_case(p)
    loss = d.training_losses(lambda x, tt: out, x0, t=t, noise=noise)
    assert torch.allclose(loss.double(), weight(d.snr(t)).double() * x0_err, rtol=1e-4)
    if p == "eps":  # at t = T, an x̂_0 error costs the ε loss almost nothing
        assert weight(d.snr(t))[-1] < 1e-4


@pytest.mark.parametrize("p, weight", X0_WEIGHTS)
def test_capped_weighting_caps_the_x0_weight(p, weight):
    """"capped": x̂_0 weight min(w(t), γ); "min_snr": min(SNR, γ) (equal for ε, not for v at high noise)."""
    d, x0, noise, t, out, x0_err = _x0_error_case(p)
    snr = d.snr(t).double()
    capped = d.training_losses(lambda x, tt: out, x0, t=t, noise=noise, snr_gamma=5.0, loss_weighting="capped")
    assert torch.allclose(capped.double(), weight(snr).clamp(max=5.0) * x0_err, rtol=1e-4)
    min_snr = d.training_losses(lambda x, tt: out, x0, t=t, noise=noise, snr_gamma=5.0)
    assert torch.allclose(min_snr.double(), snr.clamp(max=5.0) * x0_err, rtol=1e-4)
    if p == "eps":
        assert torch.allclose(capped, min_snr)
    if p == "v":  # at t = T the capped v loss still weighs the x̂_0 error by ≈ 1; min-SNR by ≈ 0
        assert capped[-1] / x0_err[-1] > 0.99 and min_snr[-1] / x0_err[-1] < 1e-4
    with pytest.raises(ValueError, match="loss_weighting"):
        d.training_losses(lambda x, tt: out, x0, t=t, noise=noise, snr_gamma=5.0, loss_weighting="truncated")


@pytest.mark.parametrize("snr_gamma, weighting, match", [
    (0.0, "min_snr", "snr_gamma"), (-1.0, "capped", "snr_gamma"), (True, "min_snr", "snr_gamma"),
    ("5", "min_snr", "snr_gamma"), (5.0, "clipped", "loss_weighting"), (None, "", "loss_weighting")])
def test_check_loss_weighting_rejects_bad_settings(snr_gamma, weighting, match):
    from minildm.diffusion.process import check_loss_weighting

    with pytest.raises(ValueError, match=match):
        check_loss_weighting(snr_gamma, weighting)
    check_loss_weighting(None, "min_snr"), check_loss_weighting(5, "capped")  # valid ones pass
