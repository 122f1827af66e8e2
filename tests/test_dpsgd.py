"""DP-SGD: exact per-example gradients of the K-averaged loss, clipping, noise scale, sampling."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.func import functional_call

from easyhard.config import defaults
from easyhard.dpsgd import (
    DPSGD,
    clip_factors,
    clipped_sum,
    per_example_grads,
    per_example_norms,
    poisson_batches,
)
from easyhard.edm import Denoiser, NoiseDraws, draw_noise, edm_loss
from easyhard.multiplicity import PerExampleLoss
from easyhard.networks import build_unet
from easyhard.privacy.randomness import NoiseSource, SecureSource, SeededSource

DEFAULTS = defaults()  # params.yaml: the only place defaults live

SD = 0.5


def make_dpsgd(
    den: Denoiser, sigma: float, clip: float, expected: float, phys: int, noise: NoiseSource
) -> DPSGD:
    return DPSGD(
        PerExampleLoss(den),
        noise_multiplier=sigma,
        clip=clip,
        expected_batch=expected,
        physical_batch=phys,
        noise=noise,
    )


def small_denoiser(attention: bool, dtype=torch.float64) -> Denoiser:
    torch.manual_seed(0)
    net = replace(DEFAULTS.network, channels=(8, 16), attention=(False, attention), norm_groups=4)
    return Denoiser(build_unet(net, (1, 8, 8), 3), SD, 3).to(dtype)


def batch(b: int, k: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 1, 8, 8, generator=g, dtype=dtype) * 2 - 1
    y = torch.randint(0, 3, (b,), generator=g)
    d = draw_noise(b, (1, 8, 8), replace(DEFAULTS.edm, noise_multiplicity=k, label_dropout=0.3), g)
    return x, y, d.sigma.to(dtype), d.noise.to(dtype), d.drop


@pytest.mark.parametrize("grad_sampler", ["layerwise", "vmap"])
@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("k", [1, 4])
def test_per_example_grads_match_one_at_a_time_loop(attention, k, grad_sampler):
    den = small_denoiser(attention)
    x, y, sigma, noise, drop = batch(5, k)
    grads, values = per_example_grads(
        PerExampleLoss(den), x, y, sigma, noise, drop, grad_sampler=grad_sampler
    )
    for i in range(5):
        den.zero_grad()
        li = edm_loss(
            den,
            x[i : i + 1],
            y[i : i + 1],
            NoiseDraws(sigma[i : i + 1], noise[i : i + 1], drop[i : i + 1]),
            SD,
            3,
        )[0]
        li.backward()
        assert math.isclose(float(values[i]), float(li.detach()), rel_tol=1e-10)
        for name, p in den.named_parameters():
            ref = p.grad if p.grad is not None else torch.zeros_like(p)
            err = (grads["denoiser." + name][i] - ref).norm() / ref.norm().clamp_min(1e-12)
            assert err < 1e-5, (name, float(err))


def test_clipped_per_example_norms_at_most_c():
    den = small_denoiser(True)
    x, y, sigma, noise, drop = batch(6, 2)
    grads, _ = per_example_grads(PerExampleLoss(den), x, y, sigma, noise, drop)
    norms = per_example_norms(grads)
    for clip in (1e-3, float(norms.median()), 1e3):
        f = clip_factors(norms, clip)
        clipped_norms = per_example_norms(
            {k: g * f.view(-1, *[1] * (g.dim() - 1)) for k, g in grads.items()}
        )
        assert bool((clipped_norms <= clip * (1 + 1e-9)).all())
        # untouched when already below C
        small = norms <= clip
        assert torch.allclose(clipped_norms[small], norms[small])
    summed, _ = clipped_sum(grads, 1e-3)
    total = math.sqrt(sum(float(v.pow(2).sum()) for v in summed.values()))
    assert total <= 6 * 1e-3 * (1 + 1e-9)  # triangle inequality: |sum| <= B * C


def test_chunking_does_not_change_the_private_gradient():
    den = small_denoiser(True)
    x, y, sigma, noise, drop = batch(7, 2)
    outs = []
    for phys in (2, 3, 100):
        dp = make_dpsgd(den, 1.3, 0.5, 10.0, phys, SeededSource(5, "n"))
        outs.append(dp.private_gradient(x, y, sigma, noise, drop)[0])
    for k in outs[0]:
        assert torch.allclose(outs[0][k], outs[1][k], atol=1e-12)
        assert torch.allclose(outs[0][k], outs[2][k], atol=1e-12)


def test_private_gradient_equals_clip_sum_noise_over_expected_batch():
    den = small_denoiser(False)
    x, y, sigma, noise, drop = batch(4, 2)
    sigma_n, clip, expected = 0.8, 0.05, 12.5
    dp = make_dpsgd(den, sigma_n, clip, expected, 64, SeededSource(7, "n"))
    got, stats = dp.private_gradient(x, y, sigma, noise, drop)
    grads, _ = per_example_grads(PerExampleLoss(den), x, y, sigma, noise, drop)
    summed, _ = clipped_sum(grads, clip)
    replay = SeededSource(7, "n")
    for name in summed:
        z = torch.from_numpy(replay.normal(tuple(summed[name].shape))).to(summed[name])
        assert torch.allclose(got[name], (summed[name] + sigma_n * clip * z) / expected, atol=1e-12)
    assert stats.batch_size == 4


def test_noise_std_is_sigma_times_c_over_expected_batch():
    """On an empty Poisson batch the update is pure noise: std must be sigma*C/(qN)."""
    den = small_denoiser(True, dtype=torch.float32)
    empty = (
        torch.zeros(0, 1, 8, 8),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 2),
        torch.zeros(0, 2, 1, 8, 8),
        torch.zeros(0, 2, dtype=torch.bool),
    )
    dp = make_dpsgd(den, 2.0, 0.7, 20.0, 8, SecureSource())
    g, stats = dp.private_gradient(*empty)
    flat = torch.cat([v.flatten() for v in g.values()]).double()
    n = flat.numel()
    expected = 2.0 * 0.7 / 20.0
    # the sample std of n Gaussians has relative s.e. ~ 1/sqrt(2n)
    assert abs(float(flat.std()) / expected - 1) < 5 / math.sqrt(2 * n)
    assert abs(float(flat.mean())) < 5 * expected / math.sqrt(n)
    assert stats.batch_size == 0


def test_poisson_batch_sizes_are_binomial():
    n, q, steps = 500, 0.1, 2000
    sizes = np.array([len(b) for b in poisson_batches(n, q, steps, SecureSource())])
    assert len(sizes) == steps
    mean, var = n * q, n * q * (1 - q)
    assert abs(sizes.mean() - mean) < 5 * math.sqrt(var / steps)
    assert abs(sizes.var() / var - 1) < 0.15
    # indices are distinct within a batch (sampling without replacement per record)
    b = next(iter(poisson_batches(n, 0.5, 1, SecureSource())))
    assert len(set(b.tolist())) == len(b)


def test_functional_call_uses_given_params():
    den = small_denoiser(False)
    params = {k: torch.zeros_like(v) for k, v in den.named_parameters()}
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    out = functional_call(
        den, params, (x, torch.ones(2, dtype=torch.float64), torch.tensor([0, 1]))
    )
    assert torch.allclose(out, x * SD**2 / (1 + SD**2))  # zero network: D = c_skip x


def test_ceiling_gradient_is_the_plain_unclipped_sum():
    """No clipping and no noise (the non-private ceiling): one backward of the summed loss gives
    exactly the sum of the per-example gradients, normalised by the same public q*N."""
    den = small_denoiser(True)
    x, y, sigma, noise, drop = batch(5, 2)
    dp = make_dpsgd(den, 0.0, math.inf, 10.0, 3, SecureSource())
    assert dp.plain and dp.noise_std() == 0.0
    got, stats = dp.private_gradient(x, y, sigma, noise, drop)
    grads, _ = per_example_grads(PerExampleLoss(den), x, y, sigma, noise, drop)
    for k, g in grads.items():
        assert torch.allclose(got[k], g.sum(0) / 10.0, atol=1e-12), k
    assert stats.batch_size == 5 and stats.clipped_fraction == 0.0
