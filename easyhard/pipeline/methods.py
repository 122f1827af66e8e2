"""Methods as data: what each method runs. ``dvc.yaml`` runs every per-method stage for each name
in ``params.yaml``'s ``methods`` (``foreach``); this table says what that stage does for it.

* **DP-FETA** (``dpfeta``): the easy stage (DP central images, pretraining on them), then DP-SGD.
* **DPDM** (``dpdm``): the baseline, the same code with the easy stage off: the central stage
  writes an empty image set at no cost and pretraining keeps the fresh initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

from easyhard.central import central_mechanism
from easyhard.config import METHODS as NAMES
from easyhard.config import Params
from easyhard.privacy import Mechanism


@dataclass(frozen=True)
class Method:
    """One row of the table: a name, a title for figures, and the stages it runs."""

    name: str
    title: str
    central_images: bool  # easy stage: query DP central images and pretrain on them

    def warmups(self, params: Params) -> list[Mechanism]:
        """The mechanisms this method spends before DP-SGD, known before any data is touched."""
        return [central_mechanism(params.central)] if self.central_images else []


METHODS: dict[str, Method] = {
    "dpfeta": Method("dpfeta", "DP-FETA", central_images=True),
    "dpdm": Method("dpdm", "DPDM", central_images=False),
}
if tuple(METHODS) != NAMES:  # the allowed values live in config.py; the table must cover them
    raise RuntimeError(f"method table {tuple(METHODS)} differs from config.METHODS {NAMES}")


def method(name: str) -> Method:
    """The table row of ``name`` (one-line error for an unknown one)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
