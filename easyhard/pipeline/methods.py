"""Methods as data: what each method runs. ``dvc.yaml`` runs every per-method stage for each name
in ``params.yaml``'s ``methods`` (``foreach``); this table says what that stage does for it.

* **DP-FETA** (``dpfeta``): the easy stage (DP central images, pretraining on them), then DP-SGD.
* **DPDM** (``dpdm``): the baseline, the same code with the easy stage off: the central stage
  writes an empty image set at no cost and pretraining keeps the fresh initialisation.
* **FETA-Pro** (``fetapro``): DP-FETA's central images, then a DP frequency release (per-class
  random-Fourier-feature mean embeddings) whose auxiliary generator's images the model also warms
  up on, then DP-SGD.
* **Non-private ceiling** (``nonprivate``): DP-FETA's steps with no noise and no clipping (exact
  central statistics, plain SGD on the same batches): what the same compute reaches without
  privacy. Not a release: nothing is recorded in the spend log and its epsilon is infinite.
"""

from __future__ import annotations

from dataclasses import dataclass

from easyhard.central import central_mechanism
from easyhard.config import METHODS as NAMES
from easyhard.config import SHARES_RUN_OF, WARMUP_SECTIONS, Params
from easyhard.frequency import frequency_mechanism, frequency_params
from easyhard.layout import Layout
from easyhard.privacy import Mechanism
from easyhard.warmup import WarmupPlan, plan_warmups


@dataclass(frozen=True)
class Method:
    """One row of the table: a name, a title for figures, and the stages it runs."""

    name: str
    title: str
    central_images: bool  # easy stage: central images (noisy, or exact when not private)
    frequency: bool  # FETA-Pro's frequency release, auxiliary generator and warm-up
    private: bool  # False: the non-private ceiling (no noise, no clipping, not a release)

    @property
    def warmup_sections(self) -> tuple[str, ...]:
        """The ``params.yaml`` sections of the warm-ups this method spends budget on."""
        if not self.private:
            return ()
        return ("central",) * self.central_images + ("frequency",) * self.frequency

    def warmup_plan(self, params: Params, layout: Layout) -> WarmupPlan:
        """The warm-ups' settings (``plan: auto``: planned for signal, easyhard/warmup.py), from
        public values only. The ceiling runs DP-FETA's planned settings without noise."""
        if not self.private:
            return plan_warmups(params, layout, self.central_images, False)
        return plan_warmups(params, layout, self.central_images, self.frequency)

    def warmups(self, params: Params, layout: Layout) -> list[Mechanism]:
        """The mechanisms this method spends before DP-SGD (a warm-up planned off spends none),
        known before any data is touched."""
        if not self.private:
            return []
        plan = self.warmup_plan(params, layout)
        out = []
        if plan.central.config is not None:
            out.append(central_mechanism(plan.central.config, params.privacy))
        if plan.frequency.config is not None:
            fp = frequency_params(plan.frequency.config, params.privacy)
            out.append(frequency_mechanism(fp))
        return out


METHODS: dict[str, Method] = {
    "dpfeta": Method("dpfeta", "DP-FETA", central_images=True, frequency=False, private=True),
    "dpdm": Method("dpdm", "DPDM", central_images=False, frequency=False, private=True),
    "fetapro": Method("fetapro", "FETA-Pro", central_images=True, frequency=True, private=True),
    "nonprivate": Method(
        "nonprivate", "non-private ceiling", central_images=True, frequency=False, private=False
    ),
}
if tuple(METHODS) != NAMES:  # the allowed values live in config; the table must cover them
    raise RuntimeError(f"method table {tuple(METHODS)} differs from config.METHODS {NAMES}")
if {n: m.warmup_sections for n, m in METHODS.items()} != WARMUP_SECTIONS:  # config's share check
    raise RuntimeError("method table's warm-ups differ from config.WARMUP_SECTIONS")
for _m, _p in SHARES_RUN_OF.items():  # the pair differs by one warm-up: with it off, one run
    _a, _b = METHODS[_m], METHODS[_p]
    if (_a.private, _a.central_images, _a.frequency, _b.frequency) != (
        _b.private,
        _b.central_images,
        True,
        False,
    ):
        raise RuntimeError(f"{_m} does not differ from {_p} by the frequency warm-up alone")


def method(name: str) -> Method:
    """The table row of ``name`` (one-line error for an unknown one)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
