"""Orderings between methods, each stated with its run-to-run spread.

From the sweep's summary (:func:`easyhard.sweep.summarise`: per method and target ε the mean and
std s of each metric over whole-pipeline repeats, each with new secret noise), method a against
method b on one metric at one ε is

* ``>``: a's mean better than b's by more than s_a + s_b, both from at least 2 repeats (a clear
  ordering);
* ``≥``: a's mean at least as good, but inside the spread or from a single run (a direction only);
* ``≤``: a's mean worse, inside the spread or from a single run;
* ``<``: a's mean worse by more than s_a + s_b, both from at least 2 repeats;
* ``=``: a's runs *are* b's (the same plan, easyhard/pipeline/sharing.py): equal by construction,
  not a measurement; the line says so.

"Better" is a lower FID and a higher accuracy. "a ≥ b holds" at an ε when every metric is ``>`` or
``≥``: the means order that way, which is what the issue's claims ask; whether that ordering is
clear of the spread is in each sign. ``python -m easyhard.sweep`` prints these lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from easyhard.config import CLASSIFIERS
from easyhard.pipeline.sharing import KEY as SHARED

#: The pairs the papers' claims are about: DP-FETA over DPDM, FETA-Pro over DP-FETA.
CLAIMS: tuple[tuple[str, str], ...] = (("dpfeta", "dpdm"), ("fetapro", "dpfeta"))


@dataclass(frozen=True)
class Comparison:
    """Method ``a`` against ``b`` at one target ε: one sign per metric (see the module doc)."""

    target_epsilon: float
    a: str
    b: str
    repeats: tuple[int, int]
    signs: dict[str, str]

    @property
    def holds(self) -> bool:
        """a's mean is at least as good as b's on every metric (or a's run is b's)."""
        return all(s in (">", "≥", "=") for s in self.signs.values())

    @property
    def same_run(self) -> bool:
        """a's runs are b's (the same plan): nothing was compared."""
        return set(self.signs.values()) == {"="}


def _stat(row: Mapping[str, Any], metric: str) -> tuple[float, float]:
    keys = ("fid", "fid_std") if metric == "fid" else (f"{metric}_acc_mean", f"{metric}_acc_std")
    if row.get(keys[0]) is None:
        raise ValueError(f"{row['method']} at ε = {row['target_epsilon']:g} has no {metric}")
    return float(row[keys[0]]), float(row.get(keys[1]) or 0.0)


def sign(
    mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int, lower: bool
) -> str:
    """The sign of a against b on one metric (``lower``: a lower value is better)."""
    gain = (mean_b - mean_a) if lower else (mean_a - mean_b)
    clear = n_a >= 2 and n_b >= 2 and abs(gain) > std_a + std_b
    if gain >= 0:
        return ">" if clear else "≥"
    return "<" if clear else "≤"


def compare(
    summary: Sequence[Mapping[str, Any]], a: str, b: str, classifiers: Sequence[str]
) -> list[Comparison]:
    """a against b at every target ε both have (the non-private ceiling, ε None, has none)."""
    at = {(r["method"], r["target_epsilon"]): r for r in summary if r["target_epsilon"] is not None}
    out = []
    for eps in sorted({e for m, e in at if m == a} & {e for m, e in at if m == b}):
        ra, rb = at[(a, eps)], at[(b, eps)]
        n = (int(ra["repeats"]), int(rb["repeats"]))
        signs = {}
        if ra.get(SHARED) == b or rb.get(SHARED) == a:
            out.append(Comparison(float(eps), a, b, n, dict.fromkeys(("fid", *classifiers), "=")))
            continue
        for metric in ("fid", *classifiers):
            (ma, sa), (mb, sb) = _stat(ra, metric), _stat(rb, metric)
            signs[metric] = sign(ma, sa, n[0], mb, sb, n[1], lower=metric == "fid")
        out.append(Comparison(float(eps), a, b, n, signs))
    return out


def ordering_lines(
    summary: Sequence[Mapping[str, Any]],
    pairs: Sequence[tuple[str, str]] = CLAIMS,
    classifiers: Sequence[str] | None = None,
) -> list[str]:
    """One line per target ε and pair, by ε: ``ε = 10, 3 vs 3 repeats: a vs b: fid >, cnn ≥
    (holds)``; ``classifiers`` defaults to every classifier the summary's rows have."""
    if classifiers is None:
        classifiers = [c for c in CLASSIFIERS if any(f"{c}_acc_mean" in r for r in summary)]
    found = [c for a, b in pairs for c in compare(summary, a, b, classifiers)]
    lines = []
    for c in sorted(found, key=lambda c: c.target_epsilon):
        signs = ", ".join(f"{m} {s}" for m, s in c.signs.items())
        verdict = "holds" if c.holds else "does not hold"
        if c.same_run:
            verdict = f"the same runs: {c.a}'s plan is {c.b}'s, equal by construction"
        lines.append(
            f"ε = {c.target_epsilon:g}, {c.repeats[0]} vs {c.repeats[1]} repeats: {c.a} vs {c.b}: "
            f"{signs} ({verdict})"
        )
    return lines
