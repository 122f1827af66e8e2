"""Tests of the one-run privacy audit (Steinke, Nasr & Jagielski, NeurIPS 2023, arXiv:2305.08846).

Fast (a few seconds on 2 cores) and deterministic: every random draw is seeded.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import optimize, special, stats

from easyhard.privacy.audit import (
    best_guesses,
    canaries_needed,
    default_guess_grid,
    epsilon_lower_bound,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_sigma,
    guesses,
    max_epsilon,
    p_value,
    verdict,
)
from easyhard.privacy.gaussian_audit import expected_gaussian_audit, gaussian_mechanism_audit

DELTA = 1e-5


def theorem_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The main theorem's bound written out literally, for comparison (slow, no shortcuts):
    f(v) + 2 m delta max_{i=1..m} (f(v - i) - f(v)) / i, f(x) = P[Binomial(r, q) >= x]."""
    q = math.exp(eps) / (1.0 + math.exp(eps))

    def f(x: int) -> float:
        return 1.0 if x <= 0 else float(stats.binom.sf(x - 1, r, q))

    ratios = [(f(v - i) - f(v)) / i for i in range(1, m + 1)]
    return min(f(v) + 2 * m * delta * max(ratios), 1.0)


# 1. The paper's published values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "published"),
    [
        # arXiv:2305.08846v1, Appendix D (p. 46): the worked example of the audit code,
        # 1000 canaries, 100 guesses, 75 correct, delta = 1e-4, 95% -> 0.673 (printed, rounded).
        (1000, 100, 75, 1e-4, 0.673),
        # arXiv:2305.08846v1, Section 7 (p. 28, Fig. 11): m = 100,000, r = 1510, v = 1439,
        # delta = 1e-5, 95% -> 2.675 (printed, truncated; the exact value is 2.67585).
        (100_000, 1510, 1439, 1e-5, 2.675),
    ],
)
def test_reproduces_paper_values(m: int, r: int, v: int, delta: float, published: float) -> None:
    # the values were read from a transcription of the paper; one unit in the last printed digit
    assert epsilon_lower_bound(m, r, v, delta, 0.95) == pytest.approx(published, abs=1e-3)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [(1000, 100, 75, 0.5, 1e-4), (1000, 1000, 1000, 5.5, 1e-5), (300, 120, 90, 1.2, 1e-3)],
)
def test_p_value_equals_main_theorem_written_out(
    m: int, r: int, v: int, eps: float, delta: float
) -> None:
    assert p_value(m, r, v, eps, delta) == pytest.approx(
        theorem_p_value(m, r, v, eps, delta), rel=1e-9
    )


def test_max_epsilon_1000_canaries_is_about_5_8() -> None:
    # the project's "about 5.8 is the best one run with 1,000 canaries can certify"
    assert max_epsilon(1000, DELTA) == pytest.approx(5.7823, abs=1e-3)
    assert max_epsilon(10_000, DELTA) == pytest.approx(7.8343, abs=1e-3)
    # delta = 0, every guess right: P = q^m, so eps = log(1 / (0.05^(-1/m) - 1))
    for m in (10, 1000, 10_000):
        closed_form = -math.log(0.05 ** (-1.0 / m) - 1.0)
        assert max_epsilon(m, 0.0) == pytest.approx(closed_form, abs=1e-6)


# 2. delta = 0 is the binomial tail ---------------------------------------------------------------


@pytest.mark.parametrize(("r", "v"), [(20, 18), (100, 75), (500, 300), (1000, 1000), (60, 31)])
def test_delta_zero_is_binomial_tail(r: int, v: int) -> None:
    def tail_minus_level(eps: float) -> float:
        return float(stats.binom.sf(v - 1, r, special.expit(eps))) - 0.05

    eps = epsilon_lower_bound(2000, r, v, 0.0, 0.95)
    if tail_minus_level(0.0) >= 0.0:
        assert eps == 0.0
    else:
        assert eps == pytest.approx(optimize.brentq(tail_minus_level, 0.0, 50.0), abs=1e-6)
    # and m does not matter when delta = 0
    assert epsilon_lower_bound(r, r, v, 0.0, 0.95) == eps


# 3. Monotonicity and chance level ----------------------------------------------------------------


def test_more_correct_guesses_never_lower_the_bound() -> None:
    m, r = 1000, 200
    bounds = [epsilon_lower_bound(m, r, v, DELTA) for v in range(r + 1)]
    assert all(b2 >= b1 - 1e-6 for b1, b2 in zip(bounds, bounds[1:], strict=False))
    assert bounds[-1] > 3.0
    # nothing is certified at or near chance level (v ~ r / 2 +- 1 standard deviation)
    assert bounds[r // 2] == 0.0
    assert bounds[r // 2 + 7] == 0.0  # sd of Binomial(200, 1/2) is 7.07
    assert bounds[0] == 0.0


def test_bound_decreases_with_confidence_and_delta() -> None:
    m, r, v = 1000, 400, 320
    by_conf = [epsilon_lower_bound(m, r, v, DELTA, c) for c in (0.5, 0.9, 0.95, 0.99, 0.999)]
    assert by_conf == sorted(by_conf, reverse=True)
    by_delta = [epsilon_lower_bound(m, r, v, d) for d in (0.0, 1e-6, 1e-4, 1e-3, 1e-2)]
    assert by_delta == sorted(by_delta, reverse=True)


def test_bound_is_calibrated_on_randomized_response() -> None:
    # Randomized response is exactly eps-DP per canary and makes the one-run test exact:
    # W ~ Binomial(r, e^eps / (1 + e^eps)). Sum that law over every outcome: the audit must
    # overstate eps with probability <= 5%, and (being exact at delta = 0) close to 5%.
    # Measured: 0.0411 at delta = 0 (below 0.05 only by discreteness), 0.0222 at delta = 1e-3.
    eps, r = 1.0, 300
    law = stats.binom.pmf(np.arange(r + 1), r, special.expit(eps))
    for delta, lowest in ((0.0, 0.03), (1e-3, 0.0)):
        bounds = np.array([epsilon_lower_bound(r, r, v, delta) for v in range(r + 1)])
        overstated = float(law[bounds > eps].sum())
        assert lowest <= overstated <= 0.05


def test_max_epsilon_is_the_ceiling() -> None:
    m = 300
    ceiling = max_epsilon(m, DELTA)
    assert ceiling == pytest.approx(epsilon_lower_bound(m, m, m, DELTA))
    assert all(epsilon_lower_bound(m, r, r, DELTA) <= ceiling for r in range(1, m + 1, 7))
    assert max_epsilon(1000, DELTA) > max_epsilon(300, DELTA)


def test_fast_for_10000_canaries() -> None:
    start = time.perf_counter()
    epsilon_lower_bound(10_000, 10_000, 9_000, DELTA)
    epsilon_lower_bound(10_000, 5_000, 2_700, DELTA)
    max_epsilon(10_000, DELTA)
    assert time.perf_counter() - start < 3.0  # about 0.3 s measured on a loaded 2-core machine


# guesses / best_guesses --------------------------------------------------------------------------


def test_guesses_counts_top_and_bottom() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.8])
    included = np.array([True, False, True, False, True, True])
    # top 2 = canaries 0 (IN, right) and 5 (IN, right); bottom 2 = 1 (OUT, right) and 4 (IN, wrong)
    assert guesses(scores, included, 2, 2) == (4, 3)
    assert guesses(scores, included.astype(int) * 2 - 1, 2, 2) == (4, 3)  # -1/+1 form
    assert guesses(scores, included, 0, 0) == (0, 0)
    assert guesses(scores, included, 6, 0) == (6, 4)


def test_best_guesses_applies_bonferroni() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    scores = included + rng.normal(0.0, 1.0, 1000)
    out = best_guesses(scores, included, DELTA)
    n = len(default_guess_grid(1000))
    assert out["n_tests"] == n
    assert out["confidence_per_test"] == pytest.approx(1 - 0.05 / n)
    assert (out["r"], out["v"]) == guesses(scores, included, out["k_plus"], out["k_minus"])
    assert out["eps"] == epsilon_lower_bound(1000, out["r"], out["v"], DELTA, 1 - 0.05 / n)
    assert out["eps"] > 0.0
    # a single pre-registered (k+, k-) pays no correction
    single = best_guesses(scores, included, DELTA, ks=[(out["k_plus"], out["k_minus"])])
    assert single["confidence_per_test"] == 0.95
    assert single["eps"] >= out["eps"]


# 4. Monte-Carlo soundness on the Gaussian mechanism ----------------------------------------------


def test_gaussian_epsilon_matches_dp_accounting() -> None:
    dp_accounting = pytest.importorskip("dp_accounting")
    for sigma in (0.5, 1.0, 2.0, 5.0):
        assert gaussian_epsilon(sigma, DELTA) == pytest.approx(
            dp_accounting.get_epsilon_gaussian(sigma, DELTA), rel=1e-5
        )
    sigma = gaussian_sigma(2.0, DELTA)
    assert gaussian_epsilon(sigma, DELTA) == pytest.approx(2.0, abs=1e-5)
    assert gaussian_delta(2.0, sigma) == pytest.approx(DELTA, rel=1e-4)


def test_gaussian_audit_is_sound() -> None:
    # sigma = 1.9938 makes one release exactly (2, 1e-5)-DP. Measured over seeds 0..39 with
    # m = 1000: eps_hat 0.35 .. 0.93, mean 0.62, all 40 below 2 (the one-run audit of a single
    # Gaussian release is far from tight). m = 10,000, seeds 0..4: eps_hat 0.92 .. 1.13.
    sigma = gaussian_sigma(2.0, DELTA)
    trials = [
        gaussian_mechanism_audit(sigma, 1000, np.random.default_rng(s), DELTA) for s in range(40)
    ]
    assert trials[0]["eps_true"] == pytest.approx(2.0, abs=1e-5)
    sound = [t["eps_hat"] <= t["eps_true"] for t in trials]
    assert np.mean(sound) >= 0.95
    assert np.mean([t["eps_hat"] for t in trials]) > 0.3  # the audit does detect leakage
    for s in range(5):
        t = gaussian_mechanism_audit(sigma, 10_000, np.random.default_rng(s), DELTA)
        assert 0.5 < t["eps_hat"] <= t["eps_true"]


def test_gaussian_audit_approaches_the_limit_with_many_canaries() -> None:
    # A (nearly) noiseless release, m = 10,000: every guess of the 9000-guess grid point is right.
    # Limits at delta = 1e-5: 7.834 at 95% for one pre-chosen r (max_epsilon), 6.218 at the
    # per-test confidence 1 - 0.05/7 of the 7-point grid, 6.113 for the grid's largest r = 9000.
    # Measured eps_hat = 6.113 (sigma = 0.1, true eps 91.8), i.e. the grid's ceiling.
    m = 10_000
    t = gaussian_mechanism_audit(0.1, m, np.random.default_rng(0), DELTA)
    per_test = 1 - 0.05 / len(default_guess_grid(m))
    limit = max_epsilon(m, DELTA, per_test)
    assert (t["r"], t["v"]) == (9000, 9000)
    assert limit - 0.15 < t["eps_hat"] <= limit <= max_epsilon(m, DELTA)
    assert t["eps_hat"] < t["eps_true"]


# 5. Broken mechanisms are caught -----------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.0])  # sigma / 10, and noise replayed = subtracted
def test_broken_gaussian_is_caught(fraction: float) -> None:
    # Claimed (2, 1e-5)-DP; measured eps_hat = 5.12 for both with m = 1000 (the grid's ceiling).
    sigma = gaussian_sigma(2.0, DELTA)
    t = gaussian_mechanism_audit(
        sigma, 1000, np.random.default_rng(1), DELTA, actual_sigma=fraction * sigma
    )
    assert t["eps_hat"] > t["eps_true"] + 2.0


# 6. Bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, 11, 5, DELTA, 0.95), "r <= m"),
        ((10, 5, 6, DELTA, 0.95), "v <= r"),
        ((10, 5, -1, DELTA, 0.95), "0 <= v"),
        ((10, 5, 3, DELTA, 0.0), "confidence"),
        ((10, 5, 3, DELTA, 1.0), "confidence"),
        ((10, 5, 3, DELTA, 1.5), "confidence"),
        ((10, 5, 3, -0.1, 0.95), "delta"),
        ((10, 5, 3, 1.0, 0.95), "delta"),
        ((10, 5.0, 3, DELTA, 0.95), "integer"),
    ],
)
def test_bad_input_raises_one_line(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        epsilon_lower_bound(*args)
    assert "\n" not in str(info.value)


def test_bad_input_elsewhere() -> None:
    scores, included = np.zeros(5), np.ones(5, dtype=bool)
    for call in (
        lambda: guesses(scores, included, 3, 3),
        lambda: guesses(scores, included[:4], 1, 1),
        lambda: guesses(scores, included, -1, 1),
        lambda: max_epsilon(0, DELTA),
        lambda: max_epsilon(100, 1.0),
        lambda: best_guesses(scores, included, DELTA, ks=[]),
        lambda: best_guesses(scores, included, DELTA, confidence=1.0),
        lambda: gaussian_mechanism_audit(0.0, 10, np.random.default_rng(0), DELTA),
        lambda: gaussian_epsilon(1.0, 0.0),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "\n" not in str(info.value)


# ------------------------------------------ the method's limit on the plain Gaussian mechanism
@pytest.mark.parametrize("m, seeds, tol", [(1000, 10, 0.25), (10000, 4, 0.2)])
def test_monte_carlo_audit_approaches_the_method_limit(m, seeds, tol):
    """eps = 2, no subsampling: the Monte-Carlo audit concentrates around the bound at the
    expected outcome (the one-run method's limit at that m); measured: m = 1,000 -> 0.60 +- 0.14
    vs limit 0.50; m = 10,000 -> 1.03 +- 0.08 vs 0.90 (both far below eps = 2: one run of a
    single Gaussian release is a loose audit)."""

    sigma = gaussian_sigma(2.0, 1e-5)
    limit = expected_gaussian_audit(sigma, m, 1e-5)
    assert limit["eps_true"] == pytest.approx(2.0, rel=1e-4)
    runs = [
        gaussian_mechanism_audit(sigma, m, np.random.default_rng(s), 1e-5)["eps_hat"]
        for s in range(seeds)
    ]
    assert abs(np.mean(runs) - limit["eps"]) < tol
    assert max(runs) < 2.0 and limit["eps"] < 2.0


def test_method_limit_grows_with_the_number_of_canaries():

    sigma = gaussian_sigma(2.0, 1e-5)
    limits = [expected_gaussian_audit(sigma, m, 1e-5)["eps"] for m in (100, 1000, 10000)]
    assert limits[0] < limits[1] < limits[2] < 2.0


# 6. Verdicts and the canaries a claim needs ------------------------------------------------------


def test_verdict_fails_above_the_claim_and_is_inconclusive_above_the_ceiling() -> None:
    ceiling = max_epsilon(1000, DELTA)
    assert verdict(1.2, 1.0, ceiling) == "fail"
    assert verdict(0.3, 1.0, ceiling) == "conclusive-pass"
    # the release's claim at the defaults: no outcome of 1,000 canaries could exceed it
    assert verdict(ceiling, 9.9, ceiling) == "inconclusive"
    assert verdict(6.0, 5.0, 4.0) == "fail"  # a certified leak is a failure whatever the ceiling


def test_canaries_needed_is_the_fewest_m_whose_ceiling_reaches_the_claim() -> None:
    need = canaries_needed(6.0, DELTA)
    m = need["m"]
    assert max_epsilon(m, DELTA) >= 6.0
    assert max_epsilon(int(m * 0.98), DELTA) < 6.0  # bisected to 1%
    assert 1000 < m < 2000  # 5.78 at m = 1,000, 6.45 at m = 2,000


def test_no_number_of_canaries_certifies_eps_10_at_delta_1e_5() -> None:
    # the delta term 2 m delta caps the one-run ceiling near 8.2 (m ~ 30,000-50,000)
    need = canaries_needed(9.9, DELTA)
    assert need["m"] is None
    assert 8.1 < need["best"] < 8.4 and need["best"] >= max_epsilon(100_000, DELTA) - 1e-9
