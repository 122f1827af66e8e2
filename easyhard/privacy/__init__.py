"""Differential-privacy accounting for easyhard: mechanisms, composition, calibration, ledger.

``python -m easyhard.privacy plan ...`` plans a budget; ``... epsilon LEDGER.json`` rechecks one.
"""

from easyhard.privacy import spend
from easyhard.privacy.accounting import (
    ACCOUNTANTS,
    Mechanism,
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compose_epsilon,
    steps_for_epochs,
)
from easyhard.privacy.ledger import Ledger

__all__ = [
    "ACCOUNTANTS",
    "Ledger",
    "Mechanism",
    "PrivacyBudgetError",
    "calibrate_noise_multiplier",
    "compose_epsilon",
    "spend",
    "steps_for_epochs",
]
