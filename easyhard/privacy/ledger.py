"""The privacy ledger: every mechanism a run applied to private data, and its total epsilon."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from easyhard.io import write_json
from easyhard.privacy.accounting import (
    ACCOUNTANTS,
    Mechanism,
    PrivacyBudgetError,
    compose_epsilon,
)

_FIELDS = ("delta", "target_epsilon", "accountant", "mechanisms", "private")
_DERIVED = ("epsilon", "epsilon_by_accountant")


@dataclass
class Ledger:
    """Privacy record of a run: target (epsilon, delta) and the mechanisms spent so far.

    ``private`` is False when the noise came from the public seed (``privacy.randomness: seeded``):
    the accounting is then what the mechanisms *would* cost, but the release protects nothing.
    """

    delta: float
    target_epsilon: float
    accountant: str = "prv"
    mechanisms: list[Mechanism] = field(default_factory=list)
    private: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if not (
            isinstance(self.target_epsilon, (int, float))
            and math.isfinite(self.target_epsilon)
            and self.target_epsilon > 0
        ):
            raise ValueError(f"target_epsilon must be > 0 and finite, got {self.target_epsilon!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {self.accountant!r}; choose one of {ACCOUNTANTS}")
        if not isinstance(self.private, bool):
            raise ValueError(f"private must be true or false, got {self.private!r}")
        self.mechanisms = list(self.mechanisms)
        for m in self.mechanisms:
            if not isinstance(m, Mechanism):
                raise ValueError(f"mechanisms must be Mechanism objects, got {type(m).__name__}")

    def epsilon(self, accountant: str | None = None) -> float:
        """Total epsilon of all mechanisms (the ledger's accountant unless one is given)."""
        return compose_epsilon(self.mechanisms, self.delta, accountant or self.accountant)

    def remaining_check(self, planned: Mechanism) -> None:
        """Raise :class:`PrivacyBudgetError` if adding ``planned`` would exceed the target."""
        total = compose_epsilon([*self.mechanisms, planned], self.delta, self.accountant)
        if total > self.target_epsilon * (1 + 1e-9):
            raise PrivacyBudgetError(
                f"adding {planned.name} (sigma={planned.noise_multiplier:g}, "
                f"q={planned.sample_rate:g}, steps={planned.steps}) would bring epsilon to "
                f"{total:.4g} > target {self.target_epsilon:g} (delta={self.delta:g}, "
                f"{self.accountant})"
            )

    def add(self, mechanism: Mechanism) -> None:
        """Record ``mechanism``; refuses (nothing recorded) if the target would be exceeded."""
        self.remaining_check(mechanism)
        self.mechanisms.append(mechanism)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``epsilon`` and ``epsilon_by_accountant`` are derived, for information."""
        by_acc = {acc: self.epsilon(acc) for acc in ACCOUNTANTS}
        return {
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "epsilon": by_acc[self.accountant],
            "accountant": self.accountant,
            "mechanisms": [m.to_dict() for m in self.mechanisms],
            "epsilon_by_accountant": by_acc,
            "private": self.private,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ledger:
        """Inverse of :meth:`to_dict`: derived keys are ignored, unknown keys rejected."""
        if not isinstance(d, dict):
            raise ValueError(f"a ledger must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_FIELDS) - set(_DERIVED))
        if unknown:
            raise ValueError(f"unknown ledger keys {unknown}; expected {list(_FIELDS)}")
        missing = [k for k in ("delta", "target_epsilon") if k not in d]
        if missing:
            raise ValueError(f"ledger is missing keys {missing}")
        mechanisms = d.get("mechanisms", [])
        if not isinstance(mechanisms, list):
            raise ValueError("ledger 'mechanisms' must be a list")
        return cls(
            delta=d["delta"],
            target_epsilon=d["target_epsilon"],
            accountant=d.get("accountant", "prv"),
            mechanisms=[Mechanism.from_dict(m) for m in mechanisms],
            # ledgers written before secret randomness existed used the public seed: not private
            private=d.get("private", False),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON atomically (temporary file in the same folder, then ``os.replace``)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ledger:
        """Read a ledger written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
