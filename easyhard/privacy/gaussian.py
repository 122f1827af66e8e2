"""The plain Gaussian mechanism's exact privacy (Balle & Wang, ICML 2018): delta(eps) for a
sensitivity-1 release with noise std sigma, and its inverses. Reference values for the audit."""

from __future__ import annotations

import math

from scipy import special

#: Bisection tolerance (relative) of the inverses.
EPS_TOL = 1e-7


def gaussian_delta(eps: float, sigma: float) -> float:
    """Exact delta(eps) of the Gaussian mechanism with sensitivity 1 and noise std ``sigma``.

    Balle & Wang (ICML 2018), Theorem 8: ``Phi(1/(2 sigma) - eps sigma) - e^eps
    Phi(-1/(2 sigma) - eps sigma)``; the second term is evaluated in log space (no overflow).
    """
    if not sigma > 0.0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    a = 0.5 / sigma - eps * sigma
    b = -0.5 / sigma - eps * sigma
    first = float(special.ndtr(a))
    second = math.exp(eps + float(special.log_ndtr(b)))
    return max(first - second, 0.0)


def gaussian_epsilon(sigma: float, delta: float) -> float:
    """Smallest eps with ``gaussian_delta(eps, sigma) <= delta`` (bisection; 0.0 if eps = 0 does).

    The true privacy of one release of a sensitivity-1 sum plus N(0, sigma^2) noise.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1) for the Gaussian mechanism, got {delta!r}")
    if gaussian_delta(0.0, sigma) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: gaussian_delta(lo) > delta >= gaussian_delta(hi)
    while gaussian_delta(hi, sigma) > delta:
        lo, hi = hi, 2.0 * hi
    while hi - lo > EPS_TOL * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mid, sigma) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_sigma(eps: float, delta: float) -> float:
    """Noise std of the sensitivity-1 Gaussian mechanism that is exactly (eps, delta)-DP."""
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    # delta(eps, sigma) decreases in sigma: invariant delta(eps, lo) > delta >= delta(eps, hi)
    lo, hi = 0.0, 1.0
    while gaussian_delta(eps, hi) > delta:
        lo, hi = hi, 2.0 * hi
    while hi - lo > EPS_TOL * hi:
        mid = 0.5 * (lo + hi)
        if gaussian_delta(eps, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi
