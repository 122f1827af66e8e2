"""The white-box audit can fail: correct DP-SGD passes, deliberately broken DP-SGD does not.

Claimed epsilon 1 (sigma calibrated for it), m = 1,000 Dirac canaries through the project's own
Poisson sampler, per-example gradients, clipping, noise and normaliser.
"""

from __future__ import annotations

import pytest

from easyhard import dpsgd
from easyhard.canaries import AuditSettings, DiracLoss, dirac_audit
from easyhard.privacy import calibrate_noise_multiplier
from easyhard.privacy.randomness import SecureSource, SeededSource

DELTA, Q, STEPS, CLIP, N, M = 1e-5, 0.2, 30, 1.0, 2000, 1000
SIGMA = calibrate_noise_multiplier(1.0, DELTA, sample_rate=Q, steps=STEPS).noise_multiplier


def _settings(sigma: float = SIGMA, **kw) -> AuditSettings:
    return AuditSettings(
        noise_multiplier=sigma,
        sample_rate=Q,
        steps=STEPS,
        clip=CLIP,
        dataset_size=N,
        canaries=M,
        **kw,
    )


def _audit(settings: AuditSettings, noise=None, replay=None, claim: AuditSettings | None = None):
    res = dirac_audit(
        settings,
        noise=noise or SecureSource(),
        seed=0,
        delta=DELTA,
        replay=replay,
        progress=False,
    )
    if claim is not None:  # what the ledger says, when the code does something else
        from easyhard.privacy import compose_epsilon

        return res, compose_epsilon([claim.mechanism], DELTA, "prv")
    return res, res.claimed_epsilon


def test_dirac_loss_gradients_are_scaled_diracs():
    import torch

    from easyhard.dpsgd import per_example_grads

    loss = DiracLoss(5).double()
    idx = torch.tensor([0, 3, 4])
    scale = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    expected = torch.zeros(3, 5, dtype=torch.float64)
    expected[torch.arange(3), idx] = scale
    for engine in ("layerwise", "vmap"):
        g, _ = per_example_grads(loss, idx, scale, grad_sampler=engine)
        assert torch.equal(g["table.weight"].squeeze(-1), expected), engine


@pytest.mark.parametrize("engine", ["layerwise", "vmap"])
def test_correct_dp_sgd_passes(engine):
    res, claimed = _audit(_settings(grad_sampler=engine))
    assert claimed == pytest.approx(1.0, rel=0.02)
    assert res.passed and res.epsilon_lower_bound <= claimed
    # the canaries are visible at all (IN scores higher on average): the audit has power
    assert res.scores[res.included].mean() > res.scores[~res.included].mean()


def test_noise_far_below_the_ledger_fails():
    res, claimed = _audit(_settings(SIGMA / 10), claim=_settings())
    assert res.epsilon_lower_bound > claimed


def test_noise_the_auditor_can_replay_fails():
    seed = 7
    res, claimed = _audit(
        _settings(), noise=SeededSource(seed, "dp_sgd"), replay=SeededSource(seed, "dp_sgd")
    )
    assert res.epsilon_lower_bound > claimed
    assert not res.passed


def test_clipping_disabled_fails(monkeypatch):
    monkeypatch.setattr(dpsgd, "clip_factors", lambda norms, clip: norms.new_ones(norms.shape))
    res, claimed = _audit(_settings(canary_norm=20.0))
    assert res.epsilon_lower_bound > claimed


def test_cli_audits_a_configuration_in_seconds():
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "easyhard.privacy", "audit", "--sigma", str(SIGMA)]
    cmd += ["--sample-rate", str(Q), "--steps", str(STEPS), "--dataset-size", str(N)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("epsilon_lower_bound=")
    assert 0.0 <= float(last.split("=")[1]) < 1.0  # honest DP-SGD at claimed eps = 1
    assert "ok" in done.stdout
