"""Privacy accounting for compositions of Poisson-subsampled Gaussian mechanisms.

Every query easyhard makes on private data (the DP "central images" and each DP-SGD step) is a
Poisson-subsampled Gaussian mechanism. This module composes them under add/remove adjacency with
one of three accountants and calibrates the DP-SGD noise multiplier given the earlier queries:

- ``"prv"``: opacus' PRV accountant (numerical composition of privacy loss random variables);
- ``"pld"``: Google dp-accounting's privacy loss distribution accountant;
- ``"rdp"``: opacus' Rényi DP accountant (looser, but fast and the historical standard).

All three return upper bounds on epsilon; prv and pld agree to about 1% and rdp is a few
percent larger. Heavy libraries (opacus, dp-accounting) are imported lazily.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from easyhard.config import ACCOUNTANTS
from easyhard.privacy.memo import remembered

#: PRV: absolute epsilon error of the first pass, then relative target and floor (_prv_epsilon).
PRV_EPS_ERROR = 0.01
PRV_REL_ERROR = 2.5e-3
PRV_MIN_EPS_ERROR = 1e-3
#: PLD: loss-discretization intervals tried (coarse to fine) and convergence tolerance.
PLD_START_INTERVAL = 1e-2
PLD_MIN_INTERVAL = 1e-6
PLD_RTOL = 5e-3
#: RDP: opacus' default orders plus larger ones (tighter for small epsilon, never looser).
RDP_ALPHAS = (
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + [64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024]
)
#: Search range of the noise-multiplier calibration.
SIGMA_MIN = 0.05
SIGMA_MAX = 1e4


class PrivacyBudgetError(ValueError):
    """The requested privacy budget cannot be met (or would be exceeded)."""


@dataclass(frozen=True)
class Mechanism:
    """A Poisson-subsampled Gaussian mechanism composed ``steps`` times.

    ``noise_multiplier`` is the noise std divided by the L2 sensitivity; ``sample_rate`` is the
    Poisson sampling probability q (q == 1: every record, i.e. the plain Gaussian mechanism).
    """

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"mechanism name must be a non-empty string, got {self.name!r}")
        for attr in ("noise_multiplier", "sample_rate"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{self.name}: {attr} must be a number, got {value!r}")
            object.__setattr__(self, attr, float(value))
        sigma, q, steps = self.noise_multiplier, self.sample_rate, self.steps
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"{self.name}: noise_multiplier must be > 0 and finite, got {sigma}")
        if not (0 < q <= 1):
            raise ValueError(f"{self.name}: sample_rate must be in (0, 1], got {q}")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"{self.name}: steps must be an integer >= 0, got {steps!r}")
        object.__setattr__(self, "steps", int(steps))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form ``{name, noise_multiplier, sample_rate, steps}``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Mechanism:
        """Inverse of :meth:`to_dict`; rejects missing or unknown keys."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(names - set(d))
        if unknown or missing:
            raise ValueError(
                f"bad mechanism record: unknown keys {unknown}, missing keys {missing}"
            )
        return cls(**d)


def steps_for_epochs(epochs: float, sample_rate: float) -> int:
    """Number of Poisson-sampled steps that make ``epochs`` expected passes over the data.

    One step samples each record with probability q, so an epoch is 1/q steps on average;
    the result is ``round(epochs / sample_rate)`` (nearest integer, ties to even).
    """
    if not (0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if not (math.isfinite(epochs) and epochs >= 0):
        raise ValueError(f"epochs must be >= 0 and finite, got {epochs}")
    return int(round(epochs / sample_rate))


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, numbers.Real) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}")


def _history(mechanisms: Sequence[Mechanism]) -> list[tuple[float, float, int]]:
    for m in mechanisms:
        if not isinstance(m, Mechanism):
            raise ValueError(f"expected Mechanism objects, got {type(m).__name__}")
    return [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechanisms if m.steps > 0]


def _prv_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    # opacus returns an upper bound ~ estimate + eps_error, so a fixed eps_error overstates a small
    # epsilon: refine once so that eps_error <= PRV_REL_ERROR * epsilon, but >= PRV_MIN_EPS_ERROR
    # (the cost grows like 1 / eps_error).
    from opacus.accountants import PRVAccountant

    def run(eps_error: float) -> float:
        acc = PRVAccountant()
        acc.history = list(history)
        return float(acc.get_epsilon(delta, eps_error=eps_error, delta_error=delta / 1000))

    eps = run(PRV_EPS_ERROR)
    eps_error = max(PRV_MIN_EPS_ERROR, PRV_REL_ERROR * eps)
    if eps_error < PRV_EPS_ERROR:
        eps = run(eps_error)
    return eps


def _pld_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    # Every discretization gives an upper bound (pessimistic PLD), but a coarse grid can overstate
    # epsilon badly when each step leaks little (many steps, small q / large sigma: +60% at
    # 1e-3). Refine the grid by 3x until two successive results agree to PLD_RTOL; the error
    # shrinks ~quadratically, so the finer result is then within ~PLD_RTOL / 8.
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    def run(interval: float) -> float:
        acc = PLDAccountant(
            dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
            value_discretization_interval=interval,
        )
        for sigma, q, steps in history:
            event = dp_accounting.GaussianDpEvent(sigma)
            if q < 1:
                event = dp_accounting.PoissonSampledDpEvent(q, event)
            acc.compose(event, steps)
        return float(acc.get_epsilon(delta))

    interval = PLD_START_INTERVAL
    eps = run(interval)
    while interval > PLD_MIN_INTERVAL:
        interval /= 3
        coarse, eps = eps, run(interval)
        if coarse - eps <= PLD_RTOL * eps + 1e-9:
            break
    return eps


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta, alphas=RDP_ALPHAS))


_BACKENDS: dict[str, Callable[[list[tuple[float, float, int]], float], float]] = {
    "prv": _prv_epsilon,
    "pld": _pld_epsilon,
    "rdp": _rdp_epsilon,
}


def compose_epsilon(
    mechanisms: Sequence[Mechanism], delta: float, accountant: str = "prv"
) -> float:
    """Epsilon (add/remove adjacency) of the composition of ``mechanisms`` at ``delta``.

    Mechanisms with ``steps == 0`` are ignored; an empty composition costs 0.0.
    The result may be ``inf`` for absurdly small noise (prv gives up there).
    """
    _check_delta(delta)
    _check_accountant(accountant)
    history = _history(mechanisms)
    if not history:
        return 0.0
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # opacus warns about log(1 - q) at q == 1 and about the largest RDP order; both harmless.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        eps = _BACKENDS[accountant](history, float(delta))
    return max(0.0, eps)


def _solve_sigma(
    eps_of: Callable[[float], float], target: float, rtol: float, start: float, step: float
) -> float:
    """Smallest sigma (to a factor 1 + rtol) with eps_of(sigma) <= target; eps_of decreasing.

    Brackets the root from ``start`` by factors of ``step``, then narrows [lo, hi] with log-log
    secant guesses probed alternately just above and just below the estimated root (plain
    geometric bisection when the secant stalls). Returns hi: eps_of(hi) in
    [target * (1 - rtol), target] and eps_of(lo) > target with hi / lo <= 1 + rtol.
    """
    f = functools.lru_cache(maxsize=None)(eps_of)
    hi = start
    while f(hi) > target:
        if hi >= SIGMA_MAX:
            raise PrivacyBudgetError(
                f"target epsilon {target:g} is unreachable even with noise multiplier {SIGMA_MAX:g}"
            )
        hi = min(hi * step, SIGMA_MAX)
    lo = hi / step
    while f(lo) <= target:
        if lo <= SIGMA_MIN:
            raise ValueError(
                f"target epsilon {target:g} allows a noise multiplier below {SIGMA_MIN:g}; "
                "that is not a meaningful privacy guarantee"
            )
        hi, lo = lo, max(lo / step, SIGMA_MIN)
    nudge = (1 + rtol) ** 0.25
    side, same_side = 1, 0  # probe above the root first; count one-sided updates
    for _ in range(200):
        if hi / lo <= 1 + rtol and f(hi) >= target * (1 - rtol):
            break
        if hi / lo < 1 + 1e-12:
            break  # epsilon jumps here (numerical accountant); hi is the best available
        guess = math.sqrt(lo * hi)
        y_lo, y_hi = math.log(f(lo) / target), math.log(max(f(hi), 1e-300) / target)
        if same_side < 2 and math.isfinite(y_lo) and y_lo > y_hi:
            x_lo, x_hi = math.log(lo), math.log(hi)
            guess = math.exp(x_lo + y_lo * (x_hi - x_lo) / (y_lo - y_hi)) * nudge**side
        if not lo < guess < hi:
            guess = math.sqrt(lo * hi)
        if f(guess) <= target:
            hi, new_side = guess, -1
        else:
            lo, new_side = guess, 1
        same_side = same_side + 1 if new_side == side else 0
        side = new_side
    return hi


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    *,
    sample_rate: float,
    steps: int,
    prior: Sequence[Mechanism] = (),
    accountant: str = "prv",
    name: str = "dp_sgd",
    rtol: float = 0.01,
) -> Mechanism:
    """Least-noise mechanism ``(sigma, sample_rate, steps)`` such that prior + it costs <= target.

    The achieved total epsilon lies in ``[target * (1 - rtol), target]`` and ``sigma / (1 + rtol)``
    would exceed the target (root search on sigma, bracketed with the cheaper accountants).
    Raises :class:`PrivacyBudgetError` if the prior alone spends the target or it is unreachable.
    """
    _check_delta(delta)
    _check_accountant(accountant)
    if not (isinstance(target_epsilon, numbers.Real) and math.isfinite(target_epsilon)):
        raise ValueError(f"target_epsilon must be a finite number, got {target_epsilon!r}")
    if target_epsilon <= 0:
        raise PrivacyBudgetError(f"target epsilon must be > 0, got {target_epsilon:g}")
    if not (0 < rtol < 1):
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 to calibrate, got {steps!r}")
    Mechanism(name, 1.0, sample_rate, steps)  # validates name and sample_rate
    prior = list(prior)
    spent = compose_epsilon(prior, delta, accountant)
    if spent >= target_epsilon:
        names = ", ".join(sorted({m.name for m in prior if m.steps > 0}))
        raise PrivacyBudgetError(
            f"{names} alone spend eps={spent:.4g} of the target eps={target_epsilon:g} "
            f"(delta={delta:g}, {accountant}); nothing is left for {name}"
        )

    def eps_with(acc: str) -> Callable[[float], float]:
        return lambda s: compose_epsilon(
            prior + [Mechanism(name, s, sample_rate, steps)], delta, acc
        )

    def search() -> float:
        return _search_sigma(eps_with, target_epsilon, rtol, accountant)

    def meets_target(sigma: float) -> bool:  # a remembered answer is checked, never trusted
        return SIGMA_MIN <= sigma <= SIGMA_MAX and eps_with(accountant)(sigma) <= target_epsilon

    key = {
        "target_epsilon": float(target_epsilon),
        "delta": float(delta),
        "sample_rate": float(sample_rate),
        "steps": int(steps),
        "prior": [list(h) for h in _history(prior)],
        "accountant": accountant,
        "rtol": float(rtol),
        "code": _code_version(),
    }
    sigma = remembered(key, search, meets_target)
    return Mechanism(name, sigma, sample_rate, steps)


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """Digest of this module's code and the versions of the libraries its accountants call: part
    of every remembered calibration's key (:mod:`easyhard.privacy.memo`)."""
    from importlib.metadata import version

    libs = [f"{n}=={version(n)}" for n in ("opacus", "dp-accounting", "numpy", "scipy")]
    text = Path(__file__).read_bytes() + "\n".join(libs).encode()
    return hashlib.sha256(text).hexdigest()


def _search_sigma(
    eps_with: Callable[[str], Callable[[float], float]],
    target_epsilon: float,
    rtol: float,
    accountant: str,
) -> float:
    """The root search of :func:`calibrate_noise_multiplier` (``eps_with(acc)``: epsilon of the
    composition as a function of sigma, under accountant ``acc``)."""
    # Chain of accountants, cheap to expensive: rdp >= pld ~ prv, and each stage's answer brackets
    # the next one within a few percent, so the slow prv accountant is evaluated only 2-4 times.
    chain = {"rdp": ["rdp"], "pld": ["rdp", "pld"], "prv": ["rdp", "pld", "prv"]}[accountant]
    sigma, step = 1.0, 2.0
    for stage in chain:
        final = stage == accountant
        try:
            tol = rtol if final else {"rdp": 0.05, "pld": 0.005}[stage]
            sigma = _solve_sigma(eps_with(stage), target_epsilon, tol, sigma, step)
        except PrivacyBudgetError:
            if final:
                raise
            sigma = SIGMA_MAX  # below rdp's floor; the tight accountants may still reach it
        step = 1.1 if stage == "rdp" else 1.01
        if sigma == SIGMA_MAX:
            step = 2.0
    return sigma
