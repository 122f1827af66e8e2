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
