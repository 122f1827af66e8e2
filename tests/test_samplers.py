"""Samplers on the Gaussian toy of ``gaussian_toy.py`` (exact denoiser, closed-form ODE endpoint,
exact output moments of each discretised sampler).

Stochastic samplers: sampled per-class mean and variance within 4 standard errors of the exact
moments at the tested step count, and so within (exact discretisation error + 4 SE) of the data's.
Deterministic samplers: close to the closed-form probability-flow ODE endpoint.
"""

import math
from dataclasses import replace

import pytest
import torch
from gaussian_toy import MU, SD, GaussianDenoiser, S, exact_flow, exact_moments

from easyhard.config import defaults
from easyhard.edm import Denoiser, c_in, c_noise, c_out, c_skip
from easyhard.networks import build_unet
from easyhard.samplers import (
    dpmsolver_scheduler,
    guided,
    karras_sigmas,
    network_calls,
    restart_plan,
    sample,
)
from easyhard.schema import ConfigError

DEFAULTS = defaults()  # params.yaml: the only place defaults live
# every test states the sampler settings it needs on top of params.yaml's sample section, starting
# from no churn and the paper's Restart settings (params.yaml's defaults may be anything valid)
BASE = replace(
    DEFAULTS.sample,
    sampler="heun",
    steps=18,
    churn=0.0,
    churn_tmin=0.0,
    churn_tmax=None,
    churn_noise=1.0,
    restart_k=2,
    restart_steps=2,
    restart_tmin=0.06,
    restart_tmax=0.3,
    sigma_min=0.002,
    sigma_max=80.0,
    rho=7.0,
    guidance=1.0,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Elementwise work on small tensors: one intra-op thread is faster and kinder to a shared
    machine (two threads on two busy cores ran these tests ~10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def draw(labels, shape=(1, 4, 4), seed=0, **kw):
    den = GaussianDenoiser()
    cfg = replace(BASE, **kw)
    x = sample(den, labels, shape, cfg, torch.Generator().manual_seed(seed)).double()
    return x, den, cfg


# ------------------------------------------------------------------------ stochastic samplers


FEW_STEP = [
    dict(sampler="heun", steps=18, churn=10.0, churn_tmin=0.025, churn_tmax=50.0),
    dict(sampler="heun", steps=12, churn=3.0, churn_tmin=0.05, churn_tmax=10.0),
    dict(sampler="euler", steps=30, churn=10.0, churn_tmin=0.025, churn_tmax=50.0),
    dict(sampler="sde-dpmsolver", steps=20),
    dict(sampler="restart", steps=10, restart_k=2, restart_steps=2),
    dict(sampler="restart", steps=8, restart_k=3, restart_steps=2, restart_tmax=1.0),
]
MANY_STEP = [  # exact discretisation error in the variance: 0.52%, 0.62%, 0.77%
    dict(sampler="heun", steps=128, churn=10.0, churn_tmin=0.025, churn_tmax=50.0),
    dict(sampler="sde-dpmsolver", steps=128),
    dict(sampler="restart", steps=128, restart_k=4, restart_steps=16, restart_tmax=1.0),
]
N_PER_CLASS, SHAPE = 2000, (1, 8, 8)  # 128,000 pixel values per class


def check_moments(x, labels, cfg, disc_bound=None):
    """Per class: sampled mean / variance vs exact_moments within 4 standard errors; the exact
    discretisation error |Var / S^2 - 1| (<= disc_bound if given) plus 4 SE bounds the gap to
    the data's own mean and variance. Returns the measured numbers."""
    m_off, var = exact_moments(cfg)
    disc = abs(var / S**2 - 1)
    if disc_bound is not None:
        assert disc <= disc_bound
    out = {"disc_var": disc, "disc_mean": m_off, "mean_err": [], "var_err_vs_exact": []}
    for k in range(3):
        xk = x[labels == k].flatten()
        n = len(xk)
        se_mean, se_var = math.sqrt(var / n), math.sqrt(2.0 / (n - 1))  # var: relative SE
        exact_mean = MU[k] * (1 + m_off)  # the initial noise is centred on 0, not on mu
        assert abs(float(xk.mean()) - exact_mean) < 4 * se_mean
        assert abs(float(xk.mean()) - MU[k]) < abs(m_off * MU[k]) + 4 * se_mean
        rel = float(xk.var()) / var - 1
        assert abs(rel) < 4 * se_var
        assert abs(float(xk.var()) / S**2 - 1) < disc + 4 * se_var * (1 + disc)
        out["mean_err"].append(float(xk.mean()) - MU[k])
        out["var_err_vs_exact"].append(rel)
    return out


@pytest.mark.parametrize("kw", FEW_STEP, ids=lambda kw: f"{kw['sampler']}-{kw['steps']}")
def test_few_step_stochastic_moments(kw):
    """NFE <= 35: mean within 4 SE (SE ~ 0.0006), variance within 4 SE (~ 1.1%) of the exact
    moments of the discretised sampler; its discretisation error (printed) is what few steps cost
    on this stiff toy (S = 0.2 << sigma_data)."""
    labels = torch.arange(3).repeat_interleave(N_PER_CLASS)
    x, den, cfg = draw(labels, SHAPE, **kw)
    assert network_calls(cfg) <= 35 and len(den.batches) == network_calls(cfg)
    print(kw, "NFE", network_calls(cfg), check_moments(x, labels, cfg))


@pytest.mark.parametrize("kw", MANY_STEP, ids=lambda kw: f"{kw['sampler']}-{kw['steps']}")
def test_many_step_stochastic_samplers_converge_to_data_moments(kw):
    """With enough steps each stochastic family's exact discretisation error is < 1% in variance,
    so the samples match the data's mean (4 SE ~ 0.0023) and variance (< 1% + 4 SE ~ 1.6%)."""
    labels = torch.arange(3).repeat_interleave(N_PER_CLASS)
    x, _, cfg = draw(labels, SHAPE, **kw)
    print(kw, check_moments(x, labels, cfg, disc_bound=0.01))


@pytest.mark.parametrize(
    "kw",
    [
        dict(sampler="heun", steps=6, churn=10.0, churn_tmin=0.05, churn_tmax=50.0),
        dict(sampler="sde-dpmsolver", steps=6),
        dict(sampler="restart", steps=6, restart_k=2, restart_steps=2),
    ],
    ids=lambda kw: kw["sampler"],
)
def test_stochastic_samplers_reproducible_from_the_generator(kw):
    """Same generator seed: identical images whatever the global RNG; another seed: different."""
    labels = torch.arange(3).repeat_interleave(4)
    torch.manual_seed(1)
    a, _, _ = draw(labels, seed=7, **kw)
    torch.manual_seed(2)
    b, _, _ = draw(labels, seed=7, **kw)
    c, _, _ = draw(labels, seed=8, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------- network calls


ALL_SETTINGS = [
    dict(sampler="heun", steps=7),
    dict(sampler="heun", steps=7, churn=10.0, churn_tmin=0.05),
    dict(sampler="euler", steps=7, churn=5.0),
    dict(sampler="dpmsolver", steps=7),
    dict(sampler="sde-dpmsolver", steps=7),
    dict(sampler="restart", steps=7, restart_k=3, restart_steps=2),
    dict(sampler="restart", steps=5, restart_k=0),
    dict(sampler="restart", steps=2, restart_k=1, restart_steps=1, restart_tmin=0.002),
]


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("kw", ALL_SETTINGS, ids=lambda kw: str(kw))
def test_denoiser_calls_equal_network_calls(kw, guidance):
    labels = torch.tensor([0, 1, 2])
    x, den, cfg = draw(labels, guidance=guidance, **kw)
    assert len(den.batches) == network_calls(cfg)
    assert set(den.batches) == {3 if guidance == 1.0 else 6}  # guidance: one batched call
    assert torch.isfinite(x).all()


def test_network_call_formulas():
    assert network_calls(replace(BASE, sampler="heun", steps=18)) == 35
    assert network_calls(replace(BASE, sampler="euler", steps=10)) == 10
    assert network_calls(replace(BASE, sampler="dpmsolver", steps=20)) == 20
    assert network_calls(replace(BASE, sampler="sde-dpmsolver", steps=20)) == 20
    # Xu et al.'s CIFAR-10 setting: 18 main steps, 2 restarts of N_restart = 3 levels: NFE 43
    paper = replace(BASE, sampler="restart", steps=18, restart_k=2, restart_steps=2)
    assert network_calls(paper) == 43


# -------------------------------------------------------------------- deterministic samplers


@pytest.mark.parametrize(
    "kw, tol",
    [
        (dict(sampler="heun", steps=200), 1e-3),
        (dict(sampler="euler", steps=2000), 2e-3),
        (dict(sampler="dpmsolver", steps=250), 1e-3),
        (dict(sampler="restart", steps=200, restart_k=0), 1e-3),
    ],
    ids=lambda p: str(p),
)
def test_deterministic_samplers_follow_the_probability_flow(kw, tol):
    """Max |x - closed-form ODE endpoint| from the same initial noise."""
    labels = torch.arange(3).repeat_interleave(50)
    x, _, cfg = draw(labels, **kw)
    err = float((x - exact_flow(labels, (1, 4, 4), cfg)).abs().max())
    print(kw, "max |x - exact ODE endpoint|", err)
    assert err < tol


def test_restart_without_restarts_is_heun_and_restarts_stay_in_the_interval():
    labels = torch.arange(3).repeat_interleave(20)
    heun, _, _ = draw(labels, sampler="heun", steps=12)
    r0, _, _ = draw(labels, sampler="restart", steps=12, restart_k=0)
    assert torch.equal(heun, r0)
    x, den, cfg = draw(labels, sampler="restart", steps=12, restart_k=2, restart_steps=3)
    t, j, levels = restart_plan(cfg)
    # t_min snapped to the main level nearest restart_tmin = 0.06
    assert float(t[j]) == min((float(u) for u in t[1:-1]), key=lambda u: abs(u - 0.06))
    assert math.isclose(float(levels[0]), 0.3) and float(levels[-1]) == pytest.approx(float(t[j]))
    main_before = 2 * j  # Heun steps t_0 -> t_j: two calls each
    inside = den.sigmas[main_before : main_before + 2 * 2 * 3]
    assert max(inside) == pytest.approx(0.3, rel=1e-6)
    assert min(inside) >= float(t[j]) * (1 - 1e-6)
    assert not torch.equal(x, r0)


def test_dpmsolver_scheduler_conventions_match_ours():
    """diffusers' scheduler uses our schedule and preconditioning: Karras sigmas + final 0,
    c_in, c_noise = ln(sigma)/4, and D = c_skip x + c_out F for prediction_type='epsilon'."""
    for sampler in ("dpmsolver", "sde-dpmsolver"):
        cfg = replace(BASE, sampler=sampler, steps=12, sigma_min=0.01, sigma_max=40.0, rho=5.0)
        sched = dpmsolver_scheduler(cfg, SD)
        want = "sde-dpmsolver++" if sampler == "sde-dpmsolver" else "dpmsolver++"
        assert sched.config.algorithm_type == want
        ours = karras_sigmas(12, 0.01, 40.0, 5.0)
        assert torch.allclose(sched.sigmas.double(), ours, rtol=1e-5, atol=0)
        assert sched.sigmas[-1] == 0 and len(sched.timesteps) == 12
    sig = ours[:-1].float()
    assert torch.allclose(sched.timesteps, c_noise(sig), atol=1e-6)
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    f = torch.randn_like(x)
    for s in sig[[0, 5, -1]]:
        assert torch.allclose(sched.precondition_inputs(x, s), c_in(s, SD) * x)
        d = c_skip(s, SD) * x + c_out(s, SD) * f
        assert torch.allclose(sched.precondition_outputs(x, f, s), d)


def test_dpmsolver_error_shrinks_with_steps():
    """~20-30 steps: close to the exact ODE endpoint; error shrinks with steps."""
    labels = torch.arange(3).repeat_interleave(200)
    errs = []
    for steps in (10, 20, 30):
        x, _, cfg = draw(labels, sampler="dpmsolver", steps=steps)
        errs.append(float((x - exact_flow(labels, (1, 4, 4), cfg)).abs().max()))
    print("dpmsolver max |x - exact ODE solution| at 10/20/30 steps:", errs)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.035


def test_heun_error_shrinks_with_steps():
    labels = torch.zeros(1000, dtype=torch.long)
    errs = []
    for steps in (5, 10, 18, 50):
        x, _, cfg = draw(labels, sampler="heun", steps=steps)
        errs.append(float((x - exact_flow(labels, (1, 4, 4), cfg)).abs().max()))
    assert errs == sorted(errs, reverse=True)


def test_guided_sampling_targets_the_guided_mean():
    """Guidance w on the exact denoisers = exact denoiser of mu_u + w (mu_c - mu_u), same S."""
    mu = torch.tensor(MU)
    guided_mu = mu[3] + 2.0 * (mu[:3] - mu[3])
    labels = torch.arange(3).repeat_interleave(500)
    for sampler in ("dpmsolver", "sde-dpmsolver", "restart"):
        x, _, _ = draw(labels, sampler=sampler, steps=30, guidance=2.0)
        for k in range(3):
            assert abs(float(x[labels == k].mean()) - float(guided_mu[k])) < 0.01


def test_guidance_one_batched_forward_matches_separate_passes():
    torch.manual_seed(0)
    net = replace(DEFAULTS.network, channels=(8, 16), attention=(False, False))
    den = Denoiser(build_unet(net, (1, 8, 8), 3), SD, 3).eval()
    x = torch.randn(5, 1, 8, 8)
    s = torch.full((5,), 1.3)
    y = torch.tensor([0, 1, 2, 0, 1])
    null = torch.full_like(y, 3)
    with torch.no_grad():
        dc, du = den(x, s, y), den(x, s, null)
        assert torch.allclose(guided(den, x, s, y, 1.0), dc, atol=1e-6)
        assert torch.allclose(guided(den, x, s, y, 0.0), du, atol=1e-6)
        assert torch.allclose(guided(den, x, s, y, 2.5), du + 2.5 * (dc - du), atol=1e-5)


def test_karras_sigmas():
    t = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert len(t) == 19 and t[-1] == 0
    assert math.isclose(float(t[0]), 80.0) and math.isclose(float(t[-2]), 0.002, rel_tol=1e-9)
    assert bool((t[:-1] > t[1:]).all())
    assert torch.equal(karras_sigmas(1, 0.002, 80.0, 7.0), torch.tensor([80.0, 0.0]).double())


def test_churn_window_and_noise_scale():
    """EDM's S_tmin/S_tmax: no churn outside the window, so a window below sigma_min is
    deterministic and equals churn 0; S_noise scales the added noise."""
    labels = torch.zeros(200, dtype=torch.long)
    x0, _, _ = draw(labels, sampler="heun", steps=12)
    x_off, _, _ = draw(
        labels, sampler="heun", steps=12, churn=30.0, churn_tmin=0.0, churn_tmax=0.001
    )
    assert torch.equal(x0, x_off)
    x_on, _, _ = draw(labels, sampler="heun", steps=12, churn=30.0, churn_tmin=0.05)
    assert not torch.equal(x0, x_on)
    # S_noise -> 0: churn raises t_hat without adding the matching noise, so samples shrink
    x_quiet, _, _ = draw(labels, sampler="heun", steps=12, churn=30.0, churn_noise=1e-9)
    x_full, _, _ = draw(labels, sampler="heun", steps=12, churn=30.0)
    assert float(x_quiet.std()) < 0.5 * float(x_full.std())


# ------------------------------------------------------------------------------ bad configs


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(sampler="ddim"), r"sample\.sampler must be one of heun, euler, dpmsolver, sde-"),
        (dict(sampler="dpmsolver", churn=1.0), r"sample\.churn must be 0 with .*dpmsolver"),
        (dict(sampler="sde-dpmsolver", churn=1.0), r"sample\.churn must be 0 with .*sde-dpm"),
        (dict(sampler="restart", churn=1.0), r"sample\.churn must be 0 with .*restart"),
        (dict(churn=-1.0), r"sample\.churn must be >= 0"),
        (dict(churn_tmin=0.5, churn_tmax=0.1), r"sample\.churn_tmax must be > "),
        (dict(churn_noise=0.0), r"sample\.churn_noise must be > 0"),
        (dict(steps=0), r"sample\.steps must be > 0"),
        (dict(restart_k=-1), r"sample\.restart_k must be >= 0"),
        (dict(restart_steps=0), r"sample\.restart_steps must be > 0"),
        (dict(restart_tmin=0.0), r"sample\.restart_tmin must be > 0"),
        (dict(restart_tmin=0.5, restart_tmax=0.5), r"sample\.restart_tmax must be > "),
        (dict(sampler="restart", restart_tmax=90.0), r"must lie in \[sigma_min, sigma_max\]"),
        (dict(sampler="restart", restart_tmin=0.001), r"must lie in \[sigma_min, sigma_max\]"),
        (dict(sampler="restart", steps=1), r"sample\.steps must be >= 2 with .*restart"),
    ],
    ids=lambda p: str(p),
)
def test_bad_sample_configs_rejected_in_one_line(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        replace(BASE, **kw)
    assert "\n" not in str(e.value)


def test_restart_keys_do_not_constrain_other_samplers():
    """The restart interval is only checked against sigma_min / sigma_max for sampler=restart."""
    cfg = replace(BASE, sampler="heun", sigma_min=0.1, restart_tmin=0.06)
    assert network_calls(cfg) == 35
