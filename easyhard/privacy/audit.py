"""One-run privacy auditing: an empirical lower bound on epsilon from a single training run.

Implements the auditing scheme of Steinke, Nasr & Jagielski, "Privacy Auditing with One (1)
Training Run" (NeurIPS 2023, arXiv:2305.08846). Notation follows the paper:

- ``m`` canaries ("auditing examples"); canary ``i`` is included in training independently with
  probability 1/2, recorded as ``S_i in {-1, +1}`` (+1 = IN);
- after training the auditor scores every canary, guesses ``T_i = +1`` (IN) for the ``k+`` highest
  scores, ``T_i = -1`` (OUT) for the ``k-`` lowest and abstains (``T_i = 0``) on the rest
  (the paper's Algorithm 1);
- ``r = k+ + k-`` guesses are made and ``v = W = sum_i max(0, T_i * S_i)`` of them are correct.

The paper's main theorem (stated in Section 3; Corollary 5.4, pp. 15-16 of arXiv v1, which
specialises its Theorem 5.2) says that if the training algorithm is (eps, delta)-DP then for
every ``v``

    P[W >= v] <= f(v) + 2 m delta * max_{i in 1..m} (f(v - i) - f(v)) / i,

where ``f(v) = P[Binomial(r, q) >= v]`` with ``q = e^eps / (1 + e^eps)`` (the accuracy of
eps-DP randomized response). For delta = 0 the delta term vanishes and the bound is the plain
binomial tail (W is stochastically dominated by Binomial(r, q)). The right-hand side is a p-value
for the null hypothesis "the algorithm is (eps, delta)-DP"; the audit reports the largest eps
it rejects at the requested confidence. This is the numerical procedure the paper gives in its
Appendix D (binomial tail, plus the delta term whose maximum over ``i`` is taken over
``i = 1..v``: for ``i >= v``, ``f(v - i) = 1`` and the ratio only decreases), with eps found by
bisection. Everything here is this module's own code. :func:`verdict` and :func:`canaries_needed`
say whether a run's claim lies within what its ``m`` canaries can certify at all
(:func:`max_epsilon`), and how many canaries a claim would need.

:mod:`easyhard.privacy.gaussian_audit` runs the scheme on the plain Gaussian mechanism and
compares with its exact epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import special, stats

from easyhard.privacy.gaussian import gaussian_delta, gaussian_epsilon, gaussian_sigma

__all__ = [
    "CONCLUSIVE_PASS",
    "DEFAULT_GUESS_FRACTIONS",
    "FAIL",
    "INCONCLUSIVE",
    "best_guesses",
    "canaries_needed",
    "default_guess_grid",
    "epsilon_lower_bound",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_sigma",
    "guesses",
    "max_epsilon",
    "p_value",
    "verdict",
]

#: Fractions r/m of the canaries guessed on by ``best_guesses``' default grid (k+ = ceil(r/2)).
DEFAULT_GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9)
#: Absolute tolerance on epsilon of every bisection in this module.
EPS_TOL = 1e-7
#: No audit certifies an epsilon above this (a one-run bound grows like log(m)).
EPS_MAX = 200.0


def _check_mrv(m: int, r: int, v: int) -> None:
    for name, value in (("m", m), ("r", r), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float, np.floating)) and 0.0 <= delta < 1.0):
        raise ValueError(f"delta must be in [0, 1), got {delta!r}")


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float, np.floating)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _delta_coefficient(r: int, v: int, q: float, tail: float) -> float:
    """``max_{i >= 1} P[v - i <= Binomial(r, q) < v] / i``: the main theorem's delta term / 2m delta.

    ``tail`` is ``P[Binomial(r, q) < v]``, an upper bound on every numerator: once ``tail / i``
    falls below the running maximum no larger ``i`` can win, so the pmf is evaluated in growing
    blocks and the scan stops early (typically after a few dozen terms even for r = 10,000).
    """
    if v == 0 or tail <= 0.0:
        return 0.0
    best = 0.0
    cumulative = 0.0
    start = 1  # i of the first term of the block
    block = 64
    while start <= v:
        stop = min(v, start + block - 1)
        i = np.arange(start, stop + 1)
        pmf = stats.binom.pmf(v - i, r, q)
        sums = cumulative + np.cumsum(pmf)
        best = max(best, float(np.max(sums / i)))
        cumulative = float(sums[-1])
        if tail / stop <= best:
            break
        start = stop + 1
        block *= 2
    return best


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Upper bound on ``P[W >= v]`` for any (eps, delta)-DP algorithm (the paper's main theorem).

    ``f(v) + 2 m delta * max_i (f(v - i) - f(v)) / i`` with ``f(v) = P[Binomial(r, q) >= v]`` and
    ``q = e^eps / (1 + e^eps)``, capped at 1. A value below ``1 - confidence`` rejects the null
    hypothesis that the audited algorithm is (eps, delta)-DP.
    """
    _check_mrv(m, r, v)
    _check_delta(delta)
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if v == 0:
        return 1.0
    q = float(special.expit(eps))
    beta = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta == 0.0 or beta >= 1.0:
        return min(beta, 1.0)
    alpha = _delta_coefficient(r, v, q, 1.0 - beta)
    return min(beta + 2.0 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest eps the one-run audit certifies from ``v`` correct out of ``r`` guesses.

    Args:
        m: number of canaries, each included independently with probability 1/2 (paper's ``m``).
        r: number of guesses, ``k+ + k-`` (abstentions excluded).
        v: number of correct guesses (the observed value of the paper's ``W``).
        delta: the delta of the (eps, delta)-DP claim being audited, in [0, 1).
        confidence: the bound holds with this probability over the canaries' coin flips.

    Returns:
        The largest eps (to ``EPS_TOL``) with ``p_value(m, r, v, eps, delta) < 1 - confidence``,
        i.e. with the stated confidence the algorithm is not (eps', delta)-DP for any eps' below
        it; 0.0 when nothing can be certified (e.g. at chance level, ``v ~ r / 2``). For
        ``delta = 0`` it is exact: the eps at which ``P[Binomial(r, q) >= v] = 1 - confidence``.
        For ``delta > 0`` it adds the main theorem's delta term, as in the paper's Appendix D.

    Any eps whose p-value is below ``1 - confidence`` is a valid certificate: an (eps0, delta)-DP
    algorithm is also (eps, delta)-DP for every eps >= eps0, so ``P[W >= v]`` is at most the
    p-value at each such eps, and reporting an eps above eps0 happens with probability at most
    ``1 - confidence``. Bisection is therefore sound even if the delta term made the p-value
    non-monotone in eps (not seen in practice). About 20 ms for m = r = 10,000.
    """
    _check_mrv(m, r, v)
    _check_delta(delta)
    _check_confidence(confidence)
    significance = 1.0 - confidence
    if v == 0 or p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p_value(lo) < significance <= p_value(hi)
    while p_value(m, r, v, hi, delta) < significance:
        lo, hi = hi, 2.0 * hi
        if hi > EPS_MAX:
            return EPS_MAX
    while hi - lo > EPS_TOL:
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < significance:
            lo = mid
        else:
            hi = mid
    return lo


def max_epsilon(m: int, delta: float, confidence: float = 0.95) -> float:
    """The most any one-run audit with ``m`` canaries can certify: every guess correct.

    ``max over r in 1..m of epsilon_lower_bound(m, r, r, delta, confidence)``. With all guesses
    correct the bound grows with ``r`` (for delta = 0 the p-value is ``q^r``, so the limit is
    ``log(1 / ((1 - confidence)^(-1/m) - 1))``, about ``log(m / log(1 / (1 - confidence)))``);
    the maximum is searched on a log-spaced grid of ``r`` and refined over the integers around
    the best grid point. In every case checked (all r for m = 50, 300, 1,000 and delta = 0, 1e-5,
    1e-3, 1e-2; a log grid for m = 100,000) the bound increases with r and the best is r = m.
    At delta = 1e-5 and 95% confidence: 5.7823 for m = 1,000, 7.8343 for m = 10,000 and 8.1277
    for m = 100,000 (delta = 0: 5.8091, 8.1130, 10.4157): the delta term 2 m delta grows with m
    and caps what more canaries can certify.
    """
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    _check_delta(delta)
    _check_confidence(confidence)

    cache: dict[int, float] = {}

    def bound(r: int) -> float:
        if r not in cache:
            cache[r] = epsilon_lower_bound(m, r, r, delta, confidence)
        return cache[r]

    grid = sorted({int(x) for x in np.unique(np.round(np.geomspace(1, m, num=24)))} | {m})
    best_r = max(grid, key=bound)
    # refine between the neighbouring grid points (the bound is unimodal in r in practice)
    k = grid.index(best_r)
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    while hi - lo > 2:
        a, b = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if bound(a) < bound(b):
            lo = a
        else:
            hi = b
    return max(bound(r) for r in [*range(lo, hi + 1), best_r])


def guesses(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> tuple[int, int]:
    """Number of guesses ``r`` and correct guesses ``v`` of the paper's Algorithm 1.

    Guess IN (``T_i = +1``) for the ``k_plus`` highest scores and OUT (``T_i = -1``) for the
    ``k_minus`` lowest; abstain on the rest. ``included`` is the true ``S`` as booleans (or 0/1,
    or -1/+1). Ties are broken by canary index (a stable sort), never by ``included``.

    Returns:
        ``(r, v)`` with ``r = k_plus + k_minus`` and ``v = sum_i max(0, T_i * S_i)``.
    """
    scores = np.asarray(scores, dtype=float)
    inc = np.asarray(included)
    if scores.ndim != 1 or inc.shape != scores.shape:
        raise ValueError(
            f"scores and included must be 1-D of the same length, got {scores.shape} and {inc.shape}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    m = scores.shape[0]
    for name, k in (("k_plus", k_plus), ("k_minus", k_minus)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {k!r}")
    if k_plus + k_minus > m:
        raise ValueError(f"k_plus + k_minus = {k_plus + k_minus} exceeds the m = {m} canaries")
    inside = inc > 0
    order = np.argsort(-scores, kind="stable")  # highest score first
    correct_in = int(np.count_nonzero(inside[order[:k_plus]]))
    correct_out = int(np.count_nonzero(~inside[order[m - k_minus :]])) if k_minus else 0
    return k_plus + k_minus, correct_in + correct_out


def default_guess_grid(m: int) -> list[tuple[int, int]]:
    """``best_guesses``' default (k+, k-) grid: r = f * m for f in ``DEFAULT_GUESS_FRACTIONS``,
    split ``k+ = ceil(r / 2)``, ``k- = floor(r / 2)`` (duplicates and r = 0 dropped)."""
    grid: list[tuple[int, int]] = []
    for fraction in DEFAULT_GUESS_FRACTIONS:
        r = int(round(fraction * m))
        pair = ((r + 1) // 2, r // 2)
        if r > 0 and pair not in grid:
            grid.append(pair)
    return grid


def best_guesses(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    ks: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Best one-run bound over a fixed grid of (k+, k-), corrected for choosing after the fact.

    The paper's Algorithm 1 takes ``k+`` and ``k-`` as inputs fixed before the outcome is seen;
    its guarantee is for one such choice. Trying several and keeping the best is a multiple
    comparison, so each of the ``n`` grid points is evaluated at confidence
    ``1 - (1 - confidence) / n`` (a Bonferroni / union bound): the reported maximum then holds
    with probability at least ``confidence``. Keep the grid small: each extra point costs a
    little confidence per test. (Splitting the canaries into a selection half and an evaluation
    half would avoid the correction at the price of half the canaries.)

    Args:
        scores: one score per canary, higher = more likely IN.
        included: the true inclusion of every canary (booleans, 0/1 or -1/+1).
        delta: delta of the audited (eps, delta)-DP claim.
        confidence: overall confidence of the returned bound.
        ks: (k+, k-) pairs to try; default ``default_guess_grid(m)``.

    Returns:
        dict with ``eps`` (the best bound; 0.0 if none), ``k_plus``, ``k_minus``, ``r``, ``v`` of
        the chosen grid point, ``m``, ``n_tests`` (grid size) and ``confidence_per_test``.
    """
    _check_delta(delta)
    _check_confidence(confidence)
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    m = scores.shape[0]
    grid = default_guess_grid(m) if ks is None else [(int(a), int(b)) for a, b in ks]
    if not grid:
        raise ValueError("the (k+, k-) grid is empty")
    per_test = 1.0 - (1.0 - confidence) / len(grid)
    best: dict[str, Any] | None = None
    for k_plus, k_minus in grid:
        r, v = guesses(scores, included, k_plus, k_minus)
        eps = epsilon_lower_bound(m, r, v, delta, per_test)
        if best is None or eps > best["eps"]:
            best = {"eps": eps, "k_plus": k_plus, "k_minus": k_minus, "r": r, "v": v}
    assert best is not None
    return {**best, "m": m, "n_tests": len(grid), "confidence_per_test": per_test}


#: Verdicts of one audited run (``verdict``).
CONCLUSIVE_PASS, FAIL, INCONCLUSIVE = "conclusive-pass", "fail", "inconclusive"


def verdict(eps_hat: float, claimed: float, ceiling: float) -> str:
    """``fail`` when the certified ``eps_hat`` exceeds the claim; otherwise ``conclusive-pass`` when
    the claim is at most ``ceiling`` (:func:`max_epsilon`: so a leak above the claim could have
    been certified), else ``inconclusive`` (no outcome of this audit could have failed it)."""
    if eps_hat > claimed:
        return FAIL
    return CONCLUSIVE_PASS if claimed <= ceiling else INCONCLUSIVE


def canaries_needed(
    epsilon: float, delta: float, confidence: float = 0.95, start: int = 1000
) -> dict[str, Any]:
    """The fewest canaries ``m`` whose :func:`max_epsilon` reaches ``epsilon``, or None.

    ``m`` doubles from ``start`` up to ``1 / delta`` (beyond it the theorem's ``2 m delta`` term
    makes the ceiling fall: at delta = 1e-5 it peaks near 8.2 around m = 30,000-50,000), then the
    first doubling that reaches ``epsilon`` is bisected to 1%. Returns ``m`` (None when no m up
    to ``1 / delta`` suffices) and the highest ceiling seen with its ``m`` (``best_m``, ``best``).
    """
    _check_delta(delta)
    _check_confidence(confidence)
    limit = int(1 / delta) if delta > 0 else 10**7
    m, best_m, best, below = start, start, -1.0, None
    while m <= limit:
        ceiling = max_epsilon(m, delta, confidence)
        if ceiling > best:
            best_m, best = m, ceiling
        if ceiling >= epsilon:
            lo = below if below is not None else 0
            while m - lo > max(1, m // 100):
                mid = (lo + m) // 2
                lo, m = (lo, mid) if max_epsilon(mid, delta, confidence) >= epsilon else (mid, m)
            return {"m": m, "best_m": best_m, "best": best}
        below, m = m, 2 * m
    return {"m": None, "best_m": best_m, "best": best}
