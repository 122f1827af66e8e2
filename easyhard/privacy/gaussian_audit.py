"""The one-run audit (:mod:`easyhard.privacy.audit`) on the plain Gaussian mechanism.

Sensitivity 1, no subsampling, Dirac canaries: a Monte-Carlo audit of a (possibly broken)
implementation, and the bound at the *expected* outcome, which is the limit the one-run method
reaches with ``m`` canaries. Both compare with the mechanism's exact epsilon (the analytic
Gaussian mechanism of Balle & Wang, ICML 2018, Theorem 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import special

from easyhard.privacy.audit import (
    _check_confidence,
    _check_delta,
    best_guesses,
    default_guess_grid,
    epsilon_lower_bound,
)
from easyhard.privacy.gaussian import gaussian_epsilon

__all__ = ["expected_gaussian_audit", "gaussian_mechanism_audit"]


def gaussian_mechanism_audit(
    sigma: float,
    m: int,
    rng: np.random.Generator,
    delta: float,
    confidence: float = 0.95,
    *,
    actual_sigma: float | None = None,
) -> dict[str, Any]:
    """Monte-Carlo one-run audit of the plain Gaussian mechanism (no subsampling).

    ``m`` Dirac canaries: canary ``i`` adds 1 to coordinate ``i`` of an m-dimensional sum
    (sensitivity 1), each included with probability 1/2. One release is the sum plus
    N(0, sigma^2) noise per coordinate; canary ``i``'s score is released coordinate ``i``. The
    canaries are then guessed with ``best_guesses`` (default grid, Bonferroni-corrected).

    ``actual_sigma`` (default ``sigma``) is the noise actually drawn: set it below ``sigma`` to
    simulate a broken implementation that claims ``sigma`` (0 = the noise was removed again,
    e.g. replayed and subtracted).

    Returns:
        dict with ``eps_hat`` (certified lower bound), ``eps_true`` (exact epsilon of the claimed
        ``sigma`` at ``delta``), ``r``, ``v``, ``k_plus``, ``k_minus``, ``m``, ``sigma``,
        ``actual_sigma``, ``delta``, ``confidence``.
    """
    if not sigma > 0.0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    noise_sigma = sigma if actual_sigma is None else actual_sigma
    if not noise_sigma >= 0.0:
        raise ValueError(f"actual_sigma must be >= 0, got {actual_sigma!r}")
    _check_delta(delta)
    _check_confidence(confidence)
    included = rng.random(m) < 0.5
    release = included.astype(float) + noise_sigma * rng.standard_normal(m)
    best = best_guesses(release, included, delta, confidence)
    return {
        "eps_hat": best["eps"],
        "eps_true": gaussian_epsilon(sigma, delta),
        "r": best["r"],
        "v": best["v"],
        "k_plus": best["k_plus"],
        "k_minus": best["k_minus"],
        "m": m,
        "sigma": sigma,
        "actual_sigma": noise_sigma,
        "delta": delta,
        "confidence": confidence,
    }


def expected_gaussian_audit(
    sigma: float,
    m: int,
    delta: float,
    confidence: float = 0.95,
    ks: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The one-run bound at the *expected* outcome of auditing the plain Gaussian mechanism.

    Sensitivity 1, noise std ``sigma``, no subsampling, ``m`` canaries each IN with probability
    1/2: scores of IN canaries are N(1, sigma^2), of OUT ones N(0, sigma^2). For each (k+, k-) of
    the grid (as :func:`best_guesses`, Bonferroni-corrected) the expected number of correct
    guesses among the k+ highest and k- lowest scores of that mixture gives ``v``; the best bound
    over the grid is the limit the method reaches on this mechanism with ``m`` canaries (the value
    a Monte-Carlo audit concentrates around).
    """
    from scipy import optimize

    _check_delta(delta)
    _check_confidence(confidence)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")

    def mixture_cdf(t: float) -> float:
        return 0.5 * float(special.ndtr(t / sigma)) + 0.5 * float(special.ndtr((t - 1) / sigma))

    def quantile(p: float) -> float:
        span = 1 + 40 * sigma
        return optimize.brentq(lambda t: mixture_cdf(t) - p, -span, 1 + span, xtol=1e-12)

    grid = default_guess_grid(m) if ks is None else [(int(a), int(b)) for a, b in ks]
    per_test = 1.0 - (1.0 - confidence) / len(grid)
    best: dict[str, Any] | None = None
    for k_plus, k_minus in grid:
        correct = 0.0
        if k_plus:
            t = quantile(1 - k_plus / m)
            correct += 0.5 * m * (1 - float(special.ndtr((t - 1) / sigma)))
        if k_minus:
            t = quantile(k_minus / m)
            correct += 0.5 * m * float(special.ndtr(t / sigma))
        r, v = k_plus + k_minus, min(int(round(correct)), k_plus + k_minus)
        eps = epsilon_lower_bound(m, r, v, delta, per_test)
        if best is None or eps > best["eps"]:
            best = {"eps": eps, "k_plus": k_plus, "k_minus": k_minus, "r": r, "v": v}
    assert best is not None
    return {**best, "m": m, "sigma": sigma, "eps_true": gaussian_epsilon(sigma, delta)}
