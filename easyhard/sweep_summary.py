"""A sweep's runs summarised over whole-pipeline repeats: tables and the quality-vs-ε figure.

:func:`summarise` groups the rows of :mod:`easyhard.sweep` (one per experiment and method) by
method and target ε and gives mean ± std over the repeats; :func:`summary_table` and
:func:`markdown_table` print them, :func:`summary_figure` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from easyhard.config import CLASSIFIERS
from easyhard.pipeline.sharing import KEY as SHARED


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None for none)."""
    import statistics

    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(
    rows: Sequence[Mapping[str, Any]], classifiers: Sequence[str] = CLASSIFIERS
) -> list[dict[str, Any]]:
    """One row per (method, target ε): mean ± std over its whole-pipeline repeats of the FID and
    of each classifier's accuracy (each run's accuracy is its mean over classifier seeds)."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for r in rows:  # the ceiling has no ε: all its runs are repeats of one row
        target = math.inf if _ceiling(r) else float(r["target_epsilon"])
        groups.setdefault((str(r["method"]), target), []).append(r)
    out = []
    for (method, target), rs in sorted(groups.items()):
        owners = {r.get(SHARED) for r in rs}
        if len(owners) > 1:  # a shared run is another method's draw, never a repeat of its own
            raise ValueError(
                f"{method} at target ε {target:g} mixes its own runs with runs shared with "
                f"{', '.join(sorted(str(o) for o in owners if o))}: rerun the old ones "
                "(--rerun-json) so one kind is left"
            )
        eps = [r["epsilon"] for r in rs if r.get("epsilon") is not None]
        row: dict[str, Any] = {
            "method": method,
            "target_epsilon": None if len(eps) < len(rs) else target,
            "epsilon": max(eps) if len(eps) == len(rs) else None,
            "private": all(bool(r.get("private")) for r in rs),
            "repeats": len(rs),
            "seeds": sorted({r.get("seed") for r in rs}, key=lambda v: (v is None, v)),
            "experiments": [r["experiment"] for r in rs],
            SHARED: owners.pop(),
        }
        row["fid"], row["fid_std"] = _mean_std([r["fid"] for r in rs if r.get("fid") is not None])
        for c in classifiers:
            mean, std = _mean_std([r[c] for r in rs if r.get(c) is not None])
            if mean is not None:
                row[f"{c}_acc_mean"], row[f"{c}_acc_std"] = mean, std
        out.append(row)
    return out


def summary_table(
    summary: Sequence[Mapping[str, Any]], classifiers: Sequence[str] = CLASSIFIERS
) -> list[str]:
    """The summary as markdown, by ε and then method: mean ± std over whole-pipeline repeats."""
    head = ["method", "ε target", "repeats", "FID ↓", *(f"{c} acc ↑" for c in classifiers)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def cell(mean: float | None, std: float | None, digits: int, repeats: int) -> str:
        if mean is None:
            return "–"
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if repeats > 1 else "")

    def order(r: Mapping[str, Any]) -> tuple[float, str]:  # by ε (the ceiling last), then method
        return (math.inf if r["target_epsilon"] is None else r["target_epsilon"], r["method"])

    for r in sorted(summary, key=order):
        n = int(r["repeats"])
        cells = [
            r["method"],
            "∞ (not private)" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}",
            str(n),
            cell(r.get("fid"), r.get("fid_std"), 1, n),
        ]
        for c in classifiers:
            cells.append(cell(r.get(f"{c}_acc_mean"), r.get(f"{c}_acc_std"), 3, n))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "± : standard deviation over whole-pipeline repeats (each with its own seed and, in a "
        "secure run, new secret noise); none for a single run."
    )
    return lines


def _ceiling(row: Mapping[str, Any]) -> bool:
    """The non-private ceiling: no epsilon at all (a seeded run still has one)."""
    return row.get("epsilon") is None


def markdown_table(
    rows: Sequence[Mapping[str, Any]], classifiers: Sequence[str] = CLASSIFIERS
) -> list[str]:
    """A markdown table: experiment, method, ε target / spent (∞ for the non-private ceiling,
    which is not a release), FID, accuracy mean ± std over classifier seeds."""
    head = [
        "experiment",
        "method",
        "ε target",
        "ε spent",
        "FID ↓",
        *(f"{c} acc ↑" for c in classifiers),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in sorted(rows, key=lambda r: (r["method"], r["target_epsilon"], r["experiment"])):
        accs = [
            f"{r[c]:.3f} ± {r.get(f'{c}_sd', 0.0):.3f}" if r.get(c) is not None else "–"
            for c in classifiers
        ]
        ceiling = _ceiling(r)
        target = "–" if ceiling else f"{r['target_epsilon']:g}"
        spent = "∞ (not private)" if ceiling else f"{r['epsilon']:.3g}"
        fid = f"{r['fid']:.1f}" if r.get("fid") is not None else "–"
        cells = [r["experiment"], r["method"], target, spent, fid, *accs]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("")
    lines.append("± : standard deviation over classifier seeds (one synthetic set per run).")
    return lines


def summary_figure(summary: Sequence[Mapping[str, Any]], classifiers: Sequence[str]) -> Any:
    """:func:`easyhard.plots.quality_vs_epsilon_figure` of the summary: FID and each classifier's
    accuracy per method against the target ε, error bars = std over whole-pipeline repeats."""
    from easyhard.plots import quality_vs_epsilon_figure

    rows = []
    for r in summary:
        row = {k: r.get(k) for k in ("method", "target_epsilon", "epsilon", "fid", "fid_std")}
        row["target_epsilon"] = row["target_epsilon"] or 0.0  # the ceiling: drawn as a line
        for c in classifiers:
            if r.get(f"{c}_acc_mean") is not None:
                row[c], row[f"{c}_sd"] = r[f"{c}_acc_mean"], r[f"{c}_acc_std"]
        rows.append(row)
    ns = [int(r.get("repeats") or 1) for r in summary] or [1]
    lo, hi = min(ns), max(ns)
    if hi == 1:
        spread = "one run per point"
    elif lo == hi:
        spread = f"± over {hi} whole-pipeline repeats"
    else:  # say the range: a point from one run has no spread
        spread = f"± over {lo}–{hi} whole-pipeline repeats per point"
    return quality_vs_epsilon_figure(rows, classifiers, spread)
