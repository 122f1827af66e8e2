"""White-box one-run audit of the DP-SGD code path with Dirac gradient canaries.

The accountant says what DP-SGD *should* leak; this measures what the code *does* leak. The
auditor builds its own copy of a training run's DP-SGD settings (noise multiplier, sample rate,
steps, clip, declared dataset size, gradient engine, physical batch, noise source) and runs the
project's own machinery on it: :func:`easyhard.dpsgd.poisson_batches` draws the Poisson batches
and :class:`easyhard.dpsgd.DPSGD` computes per-example gradients, clips, sums, adds the noise and
normalises. Only the model is replaced, by one whose per-example gradients the auditor chooses:

* ``m`` **canaries**: record ``i`` has loss ``s * w[i]`` on a weight table ``w``, so its gradient is
  ``s * e_i``, a Dirac vector on its own coordinate with norm ``s = canary_norm * C`` (above the
  clip ``C``, so that clipping matters). Each canary is in the audited dataset independently with
  probability 1/2 (a coin flip from the auditor's own seed);
* ``N - m`` **fillers** with zero gradient, so the Poisson batches have the real size q*N.

The white-box adversary observes every noisy step (the strongest setting DP-SGD's guarantee
covers); canary ``i``'s score is its coordinate summed over the released steps. The one-run bound
(:mod:`easyhard.privacy.audit`) turns the guesses into a lower bound on epsilon. It never touches
the sensitive data and its canaries never enter a released model.

Deliberately broken code (noise far below the ledger's, noise the auditor can replay, clipping
off) makes the bound exceed the claimed epsilon: ``tests/test_canaries.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from easyhard.dpsgd import DPSGD, poisson_batches
from easyhard.privacy.accounting import Mechanism, compose_epsilon
from easyhard.privacy.audit import best_guesses
from easyhard.privacy.randomness import NoiseSource
from easyhard.progress import progress_bar


class DiracLoss(nn.Module):
    """Per-record loss ``scale * w[index]``: the gradient of record (index, scale) is
    ``scale * e_index`` on the ``coordinates``-long weight table (an ``nn.Embedding``, which both
    per-example gradient engines support)."""

    def __init__(self, coordinates: int) -> None:
        super().__init__()
        self.table = nn.Embedding(coordinates, 1)
        nn.init.zeros_(self.table.weight)

    def forward(self, index: Tensor, scale: Tensor) -> Tensor:
        return scale * self.table(index).squeeze(-1)


@dataclass(frozen=True)
class AuditSettings:
    """The DP-SGD settings of the audited run (its own copy) and the audit's size."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip: float
    dataset_size: int  # declared N: the audited dataset has this many records (q*N normaliser)
    canaries: int  # m
    grad_sampler: str = "layerwise"
    physical_batch: int = 256
    canary_norm: float = 4.0  # canary gradient norm / C (> 1: clipping must bring it down to C)

    def __post_init__(self) -> None:
        if not 0 < self.canaries <= self.dataset_size:
            raise ValueError(
                f"audit: need 0 < canaries <= dataset size, got {self.canaries} of "
                f"{self.dataset_size}"
            )
        if self.steps < 1 or not 0 < self.sample_rate <= 1 or self.clip <= 0:
            raise ValueError("audit: steps >= 1, sample rate in (0, 1] and clip > 0 required")

    @property
    def mechanism(self) -> Mechanism:
        """The ledger entry these settings claim."""
        return Mechanism("dp_sgd", self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class AuditResult:
    """Canary scores and inclusion, the certified lower bound and the claimed epsilon."""

    scores: np.ndarray
    included: np.ndarray
    epsilon_lower_bound: float
    claimed_epsilon: float
    delta: float
    confidence: float
    guesses: dict[str, Any]
    settings: AuditSettings

    @property
    def passed(self) -> bool:
        """The code leaks no more than it claims (the lower bound does not exceed the claim)."""
        return self.epsilon_lower_bound <= self.claimed_epsilon

    def summary(self) -> dict[str, Any]:
        """JSON-able: everything but the per-canary arrays."""
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "claimed_epsilon": self.claimed_epsilon,
            "passed": self.passed,
            "delta": self.delta,
            "confidence": self.confidence,
            "canaries": int(len(self.scores)),
            "canaries_in": int(self.included.sum()),
            **{
                f"guess_{k}": v
                for k, v in self.guesses.items()
                if k in ("k_plus", "k_minus", "r", "v")
            },
            **{f"settings_{k}": v for k, v in asdict(self.settings).items()},
        }


def dirac_audit(
    settings: AuditSettings,
    *,
    noise: NoiseSource,
    seed: int,
    delta: float,
    confidence: float = 0.95,
    accountant: str = "prv",
    replay: NoiseSource | None = None,
    progress: bool = True,
) -> AuditResult:
    """Run DP-SGD (the project's code) on Dirac canaries and certify a lower bound on epsilon.

    ``noise`` is the stream DP-SGD draws masks and noise from, as in the audited run (secure:
    unpredictable to the auditor). ``replay``, a copy of a *seeded* stream given to the auditor,
    models an attacker who can regenerate the noise: the auditor then subtracts it (and the bound
    must exceed any claim). ``seed`` only decides the canaries' coin flips.
    """
    s = settings
    rng = np.random.default_rng(seed)
    included = rng.random(s.canaries) < 0.5
    present = np.concatenate([np.flatnonzero(included), np.arange(s.canaries, s.dataset_size)])
    # record r of the audited dataset -> (coordinate, gradient norm); fillers sit on a spare one
    coord = torch.as_tensor(np.where(present < s.canaries, present, s.canaries), dtype=torch.long)
    scale = torch.where(coord < s.canaries, s.canary_norm * s.clip, 0.0).to(torch.float64)
    loss = DiracLoss(s.canaries + 1).double()
    dp = DPSGD(
        loss,
        noise_multiplier=s.noise_multiplier,
        clip=s.clip,
        expected_batch=s.sample_rate * s.dataset_size,
        physical_batch=s.physical_batch,
        noise=noise,
        grad_sampler=s.grad_sampler,
    )
    total = torch.zeros(s.canaries + 1, dtype=torch.float64)
    batches = poisson_batches(len(present), s.sample_rate, s.steps, noise)
    if replay is not None:  # the auditor's copy of the stream: same masks, same noise
        shadow = poisson_batches(len(present), s.sample_rate, s.steps, replay)
    std = s.noise_multiplier * s.clip
    for idx in progress_bar(
        batches, total=s.steps, desc="audit (Dirac canaries)", disable=not progress
    ):
        noisy, _ = dp.private_gradient(coord[idx], scale[idx])
        step = noisy["table.weight"].squeeze(-1) * dp.expected_batch  # clipped sum + noise
        if replay is not None:
            next(shadow)
            step = step - torch.from_numpy(replay.normal((s.canaries + 1, 1), std)).squeeze(-1)
        total += step
    scores = total[: s.canaries].numpy()
    best = best_guesses(scores, included, delta, confidence)
    claimed = compose_epsilon([s.mechanism], delta, accountant)
    return AuditResult(
        scores=scores,
        included=included,
        epsilon_lower_bound=float(best["eps"]),
        claimed_epsilon=claimed,
        delta=delta,
        confidence=confidence,
        guesses=best,
        settings=s,
    )
