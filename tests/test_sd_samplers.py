"""Stable Diffusion's samplers against diffusers' schedulers: DDIM (both final-step conventions), DDPM and
DPM-Solver++(2M), whole trajectories on SD's schedule with ε- and v-prediction, max |Δ| ≤ 1e-5."""
from __future__ import annotations

import math

import pytest
import torch

from minildm.diffusion.process import GaussianDiffusion
from minildm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMPP2MSampler, get_sampler

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # noqa: E402

# diffusers' DPM-Solver hands a tensor to np.array (a NumPy 2 deprecation inside diffusers, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

T = 1000
SHAPE = (2, 4, 8, 8)
ATOL = 1e-5
PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction"}


def _diffusion(parameterization: str) -> GaussianDiffusion:
    """Stable Diffusion's schedule: β_t = linspace(√0.00085, √0.012, 1000)²."""
    return GaussianDiffusion("scaled_linear", T, parameterization, 0.00085, 0.012)


def _model(d: GaussianDiffusion):
    """A fixed deterministic prediction (ε or v, as ``d`` says): the exact denoiser of x_0 ~ N(0, s² I),
    s = 0.5, bent by a sine, x̂_0 = √ᾱ s² x / (ᾱ s² + 1 − ᾱ) + 0.1 (1 − ᾱ) sin 2x. Its samples stay of
    order 1, so an absolute tolerance means something."""
    ac = d.alphas_cumprod.float()

    def model(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        a = ac[t].view(-1, 1, 1, 1).to(x.dtype)
        x0 = a.sqrt() * 0.25 * x / (0.25 * a + 1 - a) + 0.1 * (1 - a) * torch.sin(2 * x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if d.parameterization == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
    return model


def _sd_scheduler(parameterization: str, set_alpha_to_one: bool = False) -> DDIMScheduler:
    """The DDIM scheduler of Stable Diffusion's ``scheduler_config.json``."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=set_alpha_to_one, steps_offset=1, timestep_spacing="leading",
                         prediction_type=PREDICTION_TYPE[parameterization])


def _run(scheduler, model, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """diffusers' sampling loop (``init_noise_sigma`` is 1 for these schedulers)."""
    assert scheduler.init_noise_sigma == 1.0
    for t in scheduler.timesteps:
        out = model(x, t.expand(x.shape[0]))
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def _x_T() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def test_schedule_matches_diffusers_to_float32_rounding():
    d = _diffusion("eps")
    ac = _sd_scheduler("eps").alphas_cumprod.double()
    assert ((ac - d.alphas_cumprod) / d.alphas_cumprod).abs().max() < 2e-6


# -- DDIM ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 10, 20, 50, 100, 500])
def test_ddim_timesteps_are_diffusers_leading_with_offset_1(steps):
    scheduler = _sd_scheduler("eps")
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.flip(0).tolist() == DDIMSampler(_diffusion("eps")).timesteps(steps).tolist()


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_ddim_matches_diffusers(parameterization, steps, set_alpha_to_one):
    d = _diffusion(parameterization)
    model, x_T = _model(d), _x_T()
    scheduler = _sd_scheduler(parameterization, set_alpha_to_one)
    scheduler.set_timesteps(steps)
    theirs = _run(scheduler, model, x_T)
    ours = DDIMSampler(d).sample(model, SHAPE, steps, x_T=x_T, set_alpha_to_one=set_alpha_to_one)
    assert (ours - theirs).abs().max() <= ATOL


def test_ddim_final_step_conventions_differ_in_the_last_step_only():
    d = _diffusion("eps")
    model, x_T = _model(d), _x_T()
    trajectories = {}
    for set_alpha_to_one in (False, True):
        steps: list = []
        DDIMSampler(d).sample(model, SHAPE, 20, x_T=x_T, set_alpha_to_one=set_alpha_to_one,
                              callback=lambda *a: steps.append(a))
        trajectories[set_alpha_to_one] = steps
    compvis, to_one = trajectories[False], trajectories[True]
    assert len(compvis) == len(to_one) == 20
    for (t1, x1, p1), (t2, x2, p2) in zip(compvis[:-1], to_one[:-1]):
        assert t1 == t2 and torch.equal(x1, x2) and torch.equal(p1, p2)
    (t, x_compvis, x0_hat), (_, x_one, x0_hat_one) = compvis[-1], to_one[-1]
    assert t == 1 and torch.equal(x0_hat, x0_hat_one)
    # set_alpha_to_one=True ends at x̂_0; the default at √ᾱ_0 x̂_0 + √(1 − ᾱ_0) ε̂, ε̂ that of x_{τ_1}
    assert torch.equal(x_one, x0_hat)
    a_1, a_0 = float(d.alphas_cumprod[t]), float(d.alphas_cumprod[0])
    eps = (compvis[-2][1] - math.sqrt(a_1) * x0_hat) / math.sqrt(1 - a_1)
    assert torch.allclose(x_compvis, math.sqrt(a_0) * x0_hat + math.sqrt(1 - a_0) * eps, atol=ATOL)
    assert (x_compvis - x_one).abs().max() > 1e-3


# -- DDPM ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_ddpm_matches_diffusers_over_the_whole_trajectory(parameterization):
    """Both draw one N(0, I) of the sample's shape per step t > 0 from the generator, in the same order, so
    the same seed gives the same noise. diffusers computes β_t = 1 − ᾱ_t / ᾱ_{t−1} from float32 ᾱ, which
    loses ~1e-4 of the small β_t (about 3e-5 after 1000 steps), so it gets minildm's float64 ᾱ here: what is
    compared is the update. SD's ``steps_offset=1`` would make ``set_timesteps(1000)`` start at t = 1000,
    past the schedule; minildm's DDPM runs t = T − 1, …, 0, diffusers' timesteps with offset 0."""
    d = _diffusion(parameterization)
    model, x_T = _model(d), _x_T()
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              variance_type="fixed_small", clip_sample=False,
                              prediction_type=PREDICTION_TYPE[parameterization])
    scheduler.set_timesteps(T)
    assert scheduler.timesteps.tolist() == list(range(T - 1, -1, -1))
    scheduler.alphas_cumprod = d.alphas_cumprod.clone()
    theirs = _run(scheduler, model, x_T, torch.Generator().manual_seed(3))
    ours = DDPMSampler(d).sample(model, SHAPE, x_T=x_T, generator=torch.Generator().manual_seed(3))
    assert (ours - theirs).abs().max() <= ATOL


# -- DPM-Solver++(2M) ------------------------------------------------------------------------------------
def _dpm_scheduler(parameterization: str, spacing: str = "leading") -> DPMSolverMultistepScheduler:
    """DPM-Solver++ the way users switch an SD pipeline to it: from the DDIM scheduler's config, one that sets
    ``timestep_spacing="leading"`` or (``spacing="linspace"``) one that leaves it out, as SD's shipped
    configs do, so that the solver's own default applies."""
    ddim = _sd_scheduler(parameterization)
    if spacing == "linspace":
        ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                             set_alpha_to_one=False, steps_offset=1, prediction_type=PREDICTION_TYPE[parameterization])
    scheduler = DPMSolverMultistepScheduler.from_config(ddim.config)
    c = scheduler.config
    assert (c.algorithm_type, c.solver_order, c.solver_type, c.final_sigmas_type) == ("dpmsolver++", 2,
                                                                                    "midpoint", "zero")
    assert c.lower_order_final and not (c.use_karras_sigmas or c.thresholding or c.euler_at_final)
    assert (c.timestep_spacing, c.steps_offset) == (spacing, 1)
    return scheduler


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 2, 10, 25, 50, 998])
def test_dpm_solver_timesteps_match_diffusers(steps, spacing):
    scheduler = _dpm_scheduler("eps", spacing)
    scheduler.set_timesteps(steps)
    ours = DPMPP2MSampler(_diffusion("eps")).timesteps(steps, spacing)
    assert scheduler.timesteps.flip(0).tolist() == ours.tolist()


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
@pytest.mark.parametrize("steps", [3, 10, 25])
@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_dpm_solver_matches_diffusers(parameterization, steps, spacing):
    d = _diffusion(parameterization)
    model, x_T = _model(d), _x_T()
    scheduler = _dpm_scheduler(parameterization, spacing)
    scheduler.set_timesteps(steps)
    theirs = _run(scheduler, model, x_T)
    calls: list = []
    ours = get_sampler("dpmpp-2m", d).sample(model, SHAPE, steps, x_T=x_T, callback=lambda *a: calls.append(a),
                                             timestep_spacing=spacing)
    assert (ours - theirs).abs().max() <= ATOL
    # one model call per step; the last step returns that call's x̂_0
    assert [t for t, _, _ in calls] == scheduler.timesteps.tolist()
    assert torch.equal(calls[-1][1], calls[-1][2]) and torch.equal(calls[-1][1], ours)


def test_dpm_solver_is_exact_for_a_point_mass_and_seeded():
    """x̂_0 constant makes D = x̂_0 and the solution exact: the point mass comes back to float rounding."""
    d = _diffusion("eps")
    x0 = torch.full((1, 4, 8, 8), 0.5)

    def model(x, t, **_):
        return d.predict_eps(x, t, x0.expand_as(x), "x0")

    s = DPMPP2MSampler(d)
    a = s.sample(model, SHAPE, 10, generator=torch.Generator().manual_seed(1))
    b = s.sample(model, SHAPE, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.allclose(a, x0.expand(SHAPE), atol=1e-5)


def test_dpm_solver_skip_starts_later():
    d = _diffusion("eps")
    model, x_T = _model(d), _x_T()
    s = DPMPP2MSampler(d)
    calls: list = []
    s.sample(model, SHAPE, 10, x_T=x_T, skip=4, callback=lambda *a: calls.append(a[0]))
    assert calls == s.timesteps(10).flip(0)[4:].tolist()


@pytest.mark.parametrize("steps, match", [(0, "steps must be a positive int"), (-3, "steps must be a positive int"),
                                          (True, "steps must be a positive int"), (2.5, "steps must be a positive int"),
                                          (1000, "steps must be <= T − 1 = 999")])
def test_dpm_solver_bad_steps(steps, match):
    with pytest.raises(ValueError, match=match) as err:
        DPMPP2MSampler(_diffusion("eps")).sample(lambda x, t: x, SHAPE, steps)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="T − 2 = 998"):
        DPMPP2MSampler(_diffusion("eps")).sample(lambda x, t: x, SHAPE, 999, timestep_spacing="leading")
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        DPMPP2MSampler(_diffusion("eps")).sample(lambda x, t: x, SHAPE, 10, timestep_spacing="trailing")


def test_dpm_solver_bad_skip():
    with pytest.raises(ValueError, match=r"skip must be an int in \[0, 5\)"):
        DPMPP2MSampler(_diffusion("eps")).sample(lambda x, t: x, SHAPE, 5, skip=5)
