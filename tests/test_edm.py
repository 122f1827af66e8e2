"""EDM math: preconditioning, the unit-loss property, noise multiplicity, samplers, guidance."""

import math

import pytest
import torch

from easyhard.config import EDMConfig, NetworkConfig, SampleConfig
from easyhard.edm import (
    Denoiser,
    NoiseDraws,
    c_in,
    c_out,
    c_skip,
    draw_noise,
    edm_loss,
    guided,
    karras_sigmas,
    loss_weight,
    network_calls,
    sample,
)
from easyhard.networks import build_unet

SD = 0.5


class ZeroNet(torch.nn.Module):
    """F = 0, so D(x; sigma) = c_skip x: the exact denoiser for data ~ N(0, sigma_data^2 I)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, class_labels=None):
        class Out:
            sample = x * self.w

        return Out()


def gaussian_denoiser(n_classes=3):
    return Denoiser(ZeroNet(), SD, n_classes)


def test_preconditioning_identities():
    s = torch.tensor([0.002, 0.1, 0.5, 1.0, 80.0], dtype=torch.float64)
    # c_in normalises the input variance to 1 for data with std sigma_data
    assert torch.allclose(c_in(s, SD) ** 2 * (SD**2 + s**2), torch.ones_like(s))
    # c_skip -> 1 and c_out -> 0 as sigma -> 0
    assert c_skip(s, SD)[0] > 0.9999 and c_out(s, SD)[0] < 0.0021
    # the effective training target has unit variance: lambda * c_out^2 = 1
    assert torch.allclose(loss_weight(s, SD) * c_out(s, SD) ** 2, torch.ones_like(s))


def test_unit_loss_of_exact_gaussian_denoiser():
    """For data ~ N(0, sd^2) and D = c_skip x, the EDM-weighted loss is exactly 1 in expectation."""
    torch.manual_seed(0)
    den = gaussian_denoiser()
    x = torch.randn(4000, 1, 4, 4, dtype=torch.float64) * SD
    draws = draw_noise(4000, (1, 4, 4), EDMConfig(noise_multiplicity=2))
    draws = NoiseDraws(draws.sigma.double(), draws.noise.double(), draws.drop)
    loss = edm_loss(den, x, torch.zeros(4000, dtype=torch.long), draws, SD, 3)
    assert loss.shape == (4000,)
    assert abs(float(loss.detach().mean()) - 1.0) < 0.03


def test_noise_multiplicity_is_the_mean_of_single_draws():
    torch.manual_seed(0)
    den = Denoiser(
        build_unet(NetworkConfig(channels=(8, 16), attention=(False, True)), (1, 8, 8), 3), SD, 3
    )
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2])
    d = draw_noise(3, (1, 8, 8), EDMConfig(noise_multiplicity=4, label_dropout=0.5))
    full = edm_loss(den, x, y, d, SD, 3)
    singles = torch.stack(
        [
            edm_loss(
                den,
                x,
                y,
                NoiseDraws(d.sigma[:, k : k + 1], d.noise[:, k : k + 1], d.drop[:, k : k + 1]),
                SD,
                3,
            )
            for k in range(4)
        ],
        1,
    )
    assert torch.allclose(full, singles.mean(1), atol=1e-5)


def test_label_dropout_uses_null_class():
    seen = []

    def spy(x, s, labels):
        seen.append(labels.clone())
        return x

    d = NoiseDraws(
        torch.ones(2, 3),
        torch.zeros(2, 3, 1, 2, 2),
        torch.tensor([[True, False, False], [False, False, True]]),
    )
    edm_loss(spy, torch.zeros(2, 1, 2, 2), torch.tensor([4, 5]), d, SD, null_label=9)
    assert seen[0].tolist() == [9, 4, 4, 5, 5, 9]


def test_karras_sigmas():
    t = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert len(t) == 19 and t[-1] == 0
    assert math.isclose(float(t[0]), 80.0) and math.isclose(float(t[-2]), 0.002, rel_tol=1e-9)
    assert bool((t[:-1] > t[1:]).all())


@pytest.mark.parametrize(
    "sampler, steps, churn, tol",
    [("heun", 64, 0.0, 0.01), ("euler", 256, 0.0, 0.02), ("heun", 512, 256.0, 0.01)],
)
def test_sampler_recovers_gaussian_data(sampler, steps, churn, tol):
    """With the exact denoiser of N(0, sd^2) data, samples must have std ~ sd."""
    den = gaussian_denoiser()
    cfg = SampleConfig(sampler=sampler, steps=steps, churn=churn)
    g = torch.Generator().manual_seed(0)
    x = sample(den, torch.zeros(2000, dtype=torch.long), (1, 4, 4), cfg, g)
    assert abs(float(x.std()) / SD - 1) < tol
    assert abs(float(x.mean())) < 0.01


def test_heun_error_shrinks_with_steps():
    den = gaussian_denoiser()
    errs = []
    for steps in (5, 10, 18, 50):
        g = torch.Generator().manual_seed(0)
        x = sample(
            den, torch.zeros(4000, dtype=torch.long), (1, 4, 4), SampleConfig(steps=steps), g
        )
        errs.append(abs(float(x.std()) - SD))
    assert errs == sorted(errs, reverse=True)


def test_network_calls():
    assert network_calls(SampleConfig(sampler="heun", steps=18)) == 35
    assert network_calls(SampleConfig(sampler="euler", steps=10)) == 10


def test_guidance_one_batched_forward_matches_separate_passes():
    torch.manual_seed(0)
    den = Denoiser(
        build_unet(NetworkConfig(channels=(8, 16), attention=(False, False)), (1, 8, 8), 3), SD, 3
    ).eval()
    x = torch.randn(5, 1, 8, 8)
    s = torch.full((5,), 1.3)
    y = torch.tensor([0, 1, 2, 0, 1])
    null = torch.full_like(y, 3)
    with torch.no_grad():
        dc, du = den(x, s, y), den(x, s, null)
        assert torch.allclose(guided(den, x, s, y, 1.0), dc, atol=1e-6)
        assert torch.allclose(guided(den, x, s, y, 0.0), du, atol=1e-6)
        assert torch.allclose(guided(den, x, s, y, 2.5), du + 2.5 * (dc - du), atol=1e-5)


# ------------------------------------------------------------------ DPM-Solver (diffusers) sampler


class GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of class-conditional data y ~ N(mu_label, s^2 I):
    D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2). Counts its calls and their batch sizes."""

    def __init__(self, mu, s, n_classes=3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))  # for the device lookup
        self.mu = torch.as_tensor(mu, dtype=torch.float64)  # [n_classes + 1]: the null class last
        self.s = s
        self.sigma_data = SD
        self.n_classes = n_classes
        self.batches = []

    @property
    def null_label(self):
        return self.n_classes

    def forward(self, x, sigma, labels):
        self.batches.append(len(x))
        s2 = sigma.reshape(-1, 1, 1, 1).double() ** 2
        mu = self.mu[labels].reshape(-1, 1, 1, 1)
        return ((self.s**2 * x.double() + s2 * mu) / (self.s**2 + s2)).to(x.dtype)


MU, S = [0.3, -0.4, 0.1, 0.0], 0.2


def exact_flow(labels, shape, cfg, seed=0):
    """Where the probability-flow ODE takes the sampler's initial noise (in closed form for
    Gaussian data: x(sigma) - mu scales with sqrt(s^2 + sigma^2)), then D(.; sigma_min)."""
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(len(labels), *shape, generator=g, dtype=torch.float64) * cfg.sigma_max
    mu = torch.tensor(MU, dtype=torch.float64)[labels].reshape(-1, 1, 1, 1)
    smin2 = cfg.sigma_min**2
    x_min = mu + (x_t - mu) * math.sqrt((S**2 + smin2) / (S**2 + cfg.sigma_max**2))
    return (S**2 * x_min + smin2 * mu) / (S**2 + smin2)


def draw(sampler, steps, labels, **kw):
    den = GaussianDenoiser(MU, S)
    cfg = SampleConfig(sampler=sampler, steps=steps, **kw)
    x = sample(den, labels, (1, 4, 4), cfg, torch.Generator().manual_seed(0)).double()
    return x, den, cfg


def test_dpmsolver_scheduler_conventions_match_ours():
    """diffusers' scheduler uses our schedule and preconditioning: Karras sigmas + final 0,
    c_in, c_noise = ln(sigma)/4, and D = c_skip x + c_out F for prediction_type='epsilon'."""
    from easyhard.edm import c_noise, dpmsolver_scheduler

    cfg = SampleConfig(sampler="dpmsolver", steps=12, sigma_min=0.01, sigma_max=40.0, rho=5.0)
    sched = dpmsolver_scheduler(cfg, SD)
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


def test_dpmsolver_recovers_gaussian_data():
    """~20-30 steps: per-class mean and std close to the truth; error shrinks with steps."""
    labels = torch.arange(3).repeat_interleave(800)
    errs = []
    for steps in (10, 20, 30):
        x, den, cfg = draw("dpmsolver", steps, labels)
        exact = exact_flow(labels, (1, 4, 4), cfg)
        errs.append(float((x - exact).abs().max()))
        assert len(den.batches) == network_calls(cfg) == steps  # one network call per step
    print("dpmsolver max |x - exact ODE solution| at 10/20/30 steps:", errs)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.035
    for k in range(3):
        xk = x[labels == k]
        assert abs(float(xk.mean()) - MU[k]) < 0.01
        assert abs(float(xk.std()) / S - 1) < 0.04


def test_dpmsolver_agrees_with_heun_at_many_steps():
    """Both integrate the same probability-flow ODE from the same initial noise."""
    labels = torch.arange(3).repeat_interleave(100)
    x_dpm, _, _ = draw("dpmsolver", 250, labels)
    x_heun, _, cfg = draw("heun", 200, labels)
    assert float((x_dpm - x_heun).abs().max()) < 1e-3
    assert float((x_heun - exact_flow(labels, (1, 4, 4), cfg)).abs().max()) < 1e-3


def test_dpmsolver_guidance_is_one_batched_call_per_step():
    labels = torch.tensor([0, 1, 2, 0])
    x, den, cfg = draw("dpmsolver", 8, labels, guidance=2.0)
    assert den.batches == [2 * len(labels)] * 8 and network_calls(cfg) == 8
    assert torch.isfinite(x).all()
    # guidance w on the exact denoisers = exact denoiser of mu_u + w (mu_c - mu_u) with the same s
    mu = torch.tensor(MU)
    guided_mu = mu[3] + 2.0 * (mu[:3] - mu[3])
    x, _, _ = draw("dpmsolver", 40, torch.arange(3).repeat_interleave(500), guidance=2.0)
    for k in range(3):
        assert abs(float(x[k * 500 : (k + 1) * 500].mean()) - float(guided_mu[k])) < 0.01


def test_dpmsolver_refuses_churn():
    from easyhard.config import ConfigError

    with pytest.raises(ConfigError, match="churn must be 0"):
        SampleConfig(sampler="dpmsolver", churn=1.0)


def test_churn_window_and_noise_scale():
    """EDM's S_tmin/S_tmax: no churn outside the window, so a window below sigma_min is
    deterministic and equals churn 0; S_noise scales the added noise."""
    labels = torch.zeros(200, dtype=torch.long)
    x0, _, _ = draw("heun", 12, labels)
    x_off, _, _ = draw("heun", 12, labels, churn=30.0, churn_tmin=0.0, churn_tmax=0.001)
    assert torch.equal(x0, x_off)
    x_on, _, _ = draw("heun", 12, labels, churn=30.0, churn_tmin=0.05, churn_tmax=50.0)
    assert not torch.equal(x0, x_on)
    # S_noise -> 0: churn raises t_hat without adding the matching noise, so samples shrink
    x_quiet, _, _ = draw("heun", 12, labels, churn=30.0, churn_noise=1e-9)
    x_full, _, _ = draw("heun", 12, labels, churn=30.0)
    assert float(x_quiet.std()) < 0.5 * float(x_full.std())
