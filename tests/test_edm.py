"""EDM math: preconditioning, the unit-loss property, noise multiplicity, label dropout.

The samplers are tested in ``test_samplers.py``."""

from dataclasses import replace

import torch

from easyhard.config import defaults
from easyhard.edm import (
    Denoiser,
    NoiseDraws,
    c_in,
    c_out,
    c_skip,
    draw_noise,
    edm_loss,
    loss_weight,
)
from easyhard.networks import build_unet

DEFAULTS = defaults()  # params.yaml: the only place defaults live

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
    draws = draw_noise(4000, (1, 4, 4), replace(DEFAULTS.edm, noise_multiplicity=2))
    draws = NoiseDraws(draws.sigma.double(), draws.noise.double(), draws.drop)
    loss = edm_loss(den, x, torch.zeros(4000, dtype=torch.long), draws, SD, 3)
    assert loss.shape == (4000,)
    assert abs(float(loss.detach().mean()) - 1.0) < 0.03


def test_noise_multiplicity_is_the_mean_of_single_draws():
    torch.manual_seed(0)
    den = Denoiser(
        build_unet(
            replace(DEFAULTS.network, channels=(8, 16), attention=(False, True)), (1, 8, 8), 3
        ),
        SD,
        3,
    )
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2])
    d = draw_noise(3, (1, 8, 8), replace(DEFAULTS.edm, noise_multiplicity=4, label_dropout=0.5))
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
