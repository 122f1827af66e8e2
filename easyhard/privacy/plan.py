"""Planning a release's privacy budget before any data is touched: the one place it is decided.

A release is a list of *warm-up* mechanisms (the central images, FETA-Pro's frequency release)
followed by DP-SGD. Each warm-up's noise is fixed or calibrated from its share of the target
epsilon (:func:`warmup_mechanism`); :func:`plan_release` checks that the warm-ups leave budget for
DP-SGD and calibrates the DP-SGD noise multiplier so that everything together meets the target
(epsilon, delta). The pipeline's stages, the paper-scale profiles and
``python -m easyhard.privacy plan`` all call these, with keyword arguments only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from easyhard.privacy.accounting import (
    Mechanism,
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compose_epsilon,
    steps_for_epochs,
)


@dataclass(frozen=True)
class Plan:
    """The mechanisms of one release, in order, and what the warm-ups alone cost."""

    warmups: tuple[Mechanism, ...]
    dp_sgd: Mechanism
    warmup_epsilon: float

    @property
    def mechanisms(self) -> tuple[Mechanism, ...]:
        return (*self.warmups, self.dp_sgd)


@functools.lru_cache(maxsize=64)
def warmup_mechanism(
    *,
    name: str,
    sample_rate: float,
    steps: int,
    epsilon: float,
    delta: float,
    accountant: str,
    noise_multiplier: float | None = None,
    budget_share: float | None = None,
) -> Mechanism:
    """A warm-up mechanism's ledger entry: a fixed ``noise_multiplier``, or the least noise whose
    ``steps`` Poisson-subsampled releases alone cost ``budget_share * epsilon`` (within 1% below).
    Public values only: known before any data is touched."""
    if (noise_multiplier is None) == (budget_share is None):
        raise ValueError(f"{name}: give exactly one of noise_multiplier and budget_share")
    if noise_multiplier is not None:
        return Mechanism(name, noise_multiplier, sample_rate, steps)
    if not 0 < budget_share < 1:
        raise ValueError(f"{name}: budget_share must be in (0, 1), got {budget_share}")
    return calibrate_noise_multiplier(
        budget_share * epsilon,
        delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
        name=name,
    )


def plan_release(
    *,
    epsilon: float,
    delta: float,
    accountant: str,
    dataset_size: int | None,
    sample_rate: float,
    epochs: float | None = None,
    steps: int | None = None,
    warmups: Sequence[Mechanism] = (),
) -> Plan:
    """Calibrate DP-SGD (rate ``sample_rate``, ``steps`` or ``round(epochs / q)`` steps) after
    ``warmups`` so that the whole release costs at most ``epsilon`` at ``delta``.

    ``dataset_size`` is the declared public N: the expected DP-SGD batch q*N must be at least one
    record (``None``: not checked, for planning without a dataset in mind). Raises :class:`PrivacyBudgetError` (one line) when the warm-ups alone spend the target,
    and ``ValueError`` for a plan that cannot run.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("plan_release: give exactly one of epochs and steps")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"the DP-SGD sample rate must be in (0, 1], got {sample_rate:g}")
    if dataset_size is not None and sample_rate * dataset_size < 1:
        raise ValueError(
            f"privacy.dataset_size={dataset_size} is too small for finetune.sample_rate="
            f"{sample_rate:g}: the expected Poisson batch q*N = {sample_rate * dataset_size:.2g} "
            "is below one image"
        )
    n_steps = steps if steps is not None else steps_for_epochs(epochs, sample_rate)
    if n_steps < 1:
        raise ValueError(f"DP-SGD needs at least one step, got {n_steps}")
    warm = tuple(warmups)
    spent = compose_epsilon(list(warm), delta, accountant)
    if spent >= epsilon:
        names = ", ".join(m.name for m in warm)
        raise PrivacyBudgetError(
            f"{names} alone spend eps={spent:.4g} of the target eps={epsilon:g} "
            f"(delta={delta:g}, {accountant}); nothing is left for dp_sgd"
        )
    sgd = calibrate_noise_multiplier(
        epsilon,
        delta,
        sample_rate=sample_rate,
        steps=n_steps,
        prior=list(warm),
        accountant=accountant,
        name="dp_sgd",
    )
    return Plan(warmups=warm, dp_sgd=sgd, warmup_epsilon=spent)
