"""Stage ``report``: every method side by side, and what the dataset has spent over every release.

Words: a *release* is one method's whole run (its ledger, ``runs/<method>/ledger.json``); a
*mechanism* is one entry of a ledger (the central images, the frequency release, DP-SGD). The
dataset's total composes every mechanism of every release made from it.

The report is the project's figure page: :func:`table` (rounded, ± over classifier seeds, ↑/↓ on
the headers, "∞ (not private)" for the ceiling), bar charts with error bars, each method's central
images beside its samples with class labels, and :func:`reading`, a paragraph generated from the
numbers, and the committed ε sweep (``docs/sweep/sweep.json``: quality against ε, ± over
whole-pipeline repeats) when there is one. Un-noised training diagnostics are not part of the DP
release and stay out of the report.

``python -m easyhard.pipeline.report --export DIR`` copies the report's PNGs (``report/figures``)
into ``DIR`` (e.g. ``docs/figures``), for the documentation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.io import read_json, save_figure, write_json
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import dataset_total, finite
from easyhard.pipeline.sharing import KEY as SHARED
from easyhard.pipeline.sharing import resolve
from easyhard.plots import comparison_bars, side_by_side
from easyhard.sweep_summary import summary_figure

#: What the ± of every accuracy is taken over (one synthetic set per method and run).
SPREAD = "± = std over classifier seeds"
NOT_PRIVATE = "∞ (not private)"


def _epsilon_text(m: Mapping[str, Any]) -> str:
    if m.get("epsilon") is None:
        return NOT_PRIVATE
    return f"{m['epsilon']:.2f}" + ("" if m.get("private") else " (seeded: not private)")


def table(
    metrics: Mapping[str, Mapping[str, Any]], classifiers: Sequence[str]
) -> list[dict[str, str]]:
    """One row of formatted strings per method: ε, FID (1 decimal), each classifier's accuracy
    as ``mean ± std`` (3 decimals; the std is over classifier seeds), and the recognised share
    (:mod:`easyhard.recognition`) where any method's metrics have it."""
    rows = []
    for name, m in metrics.items():
        row = {"method": _title(name, m), "ε ↓": _epsilon_text(m)}
        row["FID ↓"] = "–" if m.get("fid") is None else f"{m['fid']:.1f}"
        for c in classifiers:
            mean, sd = m.get(c), m.get(f"{c}_sd")
            row[f"{c} accuracy ↑"] = "–" if mean is None else f"{mean:.3f} ± {sd or 0.0:.3f}"
        if any(x.get("recognised") is not None for x in metrics.values()):
            rec = m.get("recognised")
            row["recognised ↑"] = "–" if rec is None else f"{rec:.3f}"
        rows.append(row)
    return rows


def _title(name: str, m: Mapping[str, Any]) -> str:
    """A method's title; a method sharing another's run (the same plan) says whose it is."""
    title = method_row(name).title
    if m.get(SHARED):
        title += f" (= {method_row(m[SHARED]).title}'s run: the same plan)"
    return title


def resolved_metrics(paths: Paths, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each method's ``metrics.json``; a method sharing another's run gets that run's metrics,
    with ``same_as`` naming it (easyhard/pipeline/sharing.py)."""
    runs = paths.root / "runs"
    out = {}
    for name in names:
        owner = resolve(runs, name)
        if owner not in names:
            raise ValueError(f"{name}'s run is {owner}'s, which methods does not list: add it")
        out[name] = read_json(paths.metrics(owner)) | ({SHARED: owner} if owner != name else {})
    return out


def _best(metrics: Mapping[str, Mapping[str, Any]], key: str, low: bool) -> str | None:
    have = {n: m[key] for n, m in metrics.items() if m.get(key) is not None}
    if not have:
        return None
    return (min if low else max)(have, key=have.get)


def _private(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {n: m for n, m in metrics.items() if m.get("epsilon") is not None}


def reading(metrics: Mapping[str, Mapping[str, Any]], classifiers: Sequence[str]) -> str:
    """A one-paragraph reading of the comparison, generated from the numbers only: which private
    method has the lowest FID and the highest accuracy per classifier, whether the two best
    accuracies' mean ± std intervals overlap, and the gap to the non-private ceiling."""
    shared = {n: m[SHARED] for n, m in metrics.items() if m.get(SHARED)}
    private = {n: m for n, m in _private(metrics).items() if n not in shared}
    title = {n: method_row(n).title for n in metrics}
    if not private:
        return "No private release in this run: nothing to compare at a privacy budget."
    eps = ", ".join(f"{title[n]} ε = {m['epsilon']:.2f}" for n, m in private.items())
    out = [f"At the same target budget ({eps}),"]
    out += [
        f"({title[n]} runs the same plan as {title[o]} here: one run, one spend, no comparison.)"
        for n, o in shared.items()
    ]
    best_fid = _best(private, "fid", low=True)
    if best_fid is not None:
        out.append(
            f"{title[best_fid]} has the lowest FID among the private methods "
            f"({private[best_fid]['fid']:.1f}; lower is better)."
        )
    for c in classifiers:
        ranked = sorted(
            (n for n in private if private[n].get(c) is not None),
            key=lambda n: -private[n][c],
        )
        if not ranked:
            continue
        a = ranked[0]
        ma, sa = private[a][c], private[a].get(f"{c}_sd") or 0.0
        text = f"With the {c} classifier, {title[a]} is most accurate ({ma:.3f} ± {sa:.3f})"
        if len(ranked) > 1:
            b = ranked[1]
            mb, sb = private[b][c], private[b].get(f"{c}_sd") or 0.0
            overlap = ma - sa <= mb + sb
            text += f", ahead of {title[b]} ({mb:.3f} ± {sb:.3f})" + (
                "; the mean ± std intervals overlap, so this run does not separate them"
                if overlap
                else "; the mean ± std intervals do not overlap"
            )
        out.append(text + ".")
    ceilings = [n for n in metrics if n not in private and n not in shared]
    for n in ceilings:
        c = next((c for c in classifiers if metrics[n].get(c) is not None), None)
        best = _best(private, c, low=False) if c else None
        if best is not None:
            gap = metrics[n][c] - private[best][c]
            out.append(
                f"The non-private ceiling reaches {metrics[n][c]:.3f} with {c} "
                f"({gap:+.3f} against the best private method): what privacy costs at this budget."
            )
    out.append(f"Accuracies are on the held-out real test set; {SPREAD}, one synthetic set each.")
    return " ".join(out)


def _bars(metrics: Mapping[str, Mapping[str, Any]], classifiers: Sequence[str]) -> Any:
    names = list(metrics)
    values = {"fid": [metrics[n].get("fid") for n in names]}
    errors: dict[str, list[float | None]] = {}
    titles = {"fid": "FID to held-out real images ↓"}
    for c in classifiers:
        values[c] = [metrics[n].get(c) for n in names]
        errors[c] = [metrics[n].get(f"{c}_sd") for n in names]
        titles[c] = f"{c} accuracy on real test ↑\n(error bars: std over classifier seeds)"
    labels = [
        method_row(n).title
        + (f"\n(= {method_row(metrics[n][SHARED]).title})" if metrics[n].get(SHARED) else "")
        for n in names
    ]
    return comparison_bars(values, errors, labels, titles)


def _image_panels(params: Params, paths: Paths) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, its central images (if it has any) and then its samples."""
    panels = {}
    for name in params.methods:
        m = resolve(paths.root / "runs", name)
        if m != name:  # the same run: its images are already shown
            continue
        title = method_row(m).title
        with np.load(paths.central(m)) as f:
            if len(f["y"]):
                panels[f"{title}\ncentral images"] = (f["x"], f["y"])
        s = load_npz(paths.samples(m))
        panels[f"{title}\nsamples"] = (s.x, s.y)
    return panels


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Compare methods: the table, bar charts, central images beside the samples, the reading,
    and the privacy spent on the dataset by every release so far (``report/privacy.json``)."""
    metrics = resolved_metrics(paths, params.methods)
    classifiers = list(params.evaluate.classifiers)
    test = load_npz(paths.test)
    figs = {
        "metrics": _bars(metrics, classifiers),
        "samples": side_by_side(_image_panels(params, paths), test.classes),
    }
    sweep = read_json(paths.sweep) if paths.sweep.is_file() else []
    if sweep:  # the committed ε sweep: mean ± std over whole-pipeline repeats
        figs["quality_vs_epsilon"] = summary_figure(sweep, classifiers)
    saved = {
        name: save_figure(fig, paths.report / "figures" / f"{name}.png")
        for name, fig in figs.items()
    }
    total = dataset_total(params, paths)
    # every DP release drew secret noise (the ceiling is not a release: its publication shows as
    # an infinite dataset epsilon, with the reason)
    all_private = not total.seeded and all(
        metrics[m].get("private", False) for m in params.methods if method_row(m).private
    )
    # the DVC metric: two numbers (the table of `dvc metrics show` stays narrow)
    eps = finite(total.epsilon)
    privacy = {"epsilon": None if eps is None else round(eps, 3), "private": all_private}
    dataset = {
        "epsilon": eps,
        "epsilon_private_releases": total.epsilon_private,
        "mechanisms": len(total.mechanisms),
        "releases": total.releases,
        "published_non_private_uses": total.non_private,
        "epsilon_infinite_because": list(total.reasons),
        "delta": params.privacy.delta,
        "accountant": params.privacy.accountant,
    }
    text = reading(metrics, classifiers)
    write_json(
        paths.report / "summary.json",
        {"metrics": metrics, "table": table(metrics, classifiers), "reading": text}
        | {"dataset": dataset},
    )
    write_json(paths.report / "privacy.json", privacy)
    return {
        "metrics": metrics,
        "table": table(metrics, classifiers),
        "reading": text,
        "figures": saved,
        "sweep": sweep,
        "privacy": privacy,
        "dataset": dataset,
    }


def export(source: str | Path, target: str | Path) -> list[Path]:
    """Copy the report's PNGs from ``source`` (``report/figures``) into ``target``."""
    src, dst = Path(source), Path(target)
    pngs = sorted(src.glob("*.png"))
    if not pngs:
        raise FileNotFoundError(f"no PNG figures in {src} (run `dvc repro report` first)")
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, dst / p.name)) for p in pngs]


#: The README's results table: its rows (method titles) and classifier columns.
README_METHODS = {"DP-FETA": "dpfeta", "DPDM": "dpdm", "FETA-Pro": "fetapro"}
README_CLASSIFIERS = {"cnn": "CNN acc. ↑", "resnet": "ResNet acc. ↑", "logreg": "log. reg. acc. ↑"}


def readme_table(root: str | Path = ".") -> list[str]:
    """The README's results table from the committed ``runs/<m>/metrics.json`` and ``verdict.json``
    and the dataset total from ``report/privacy.json`` (``tests/test_readme.py`` checks the
    README against the same files)."""
    root = Path(root)
    head = ["method", "ε", "FID ↓", *README_CLASSIFIERS.values(), "recognised ↑", "audit"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    resolved = resolved_metrics(Paths(root), list(README_METHODS.values()))
    for title, m in README_METHODS.items():
        metrics = resolved[m]
        owner = metrics.get(SHARED, m)
        audit = json.loads((root / "runs" / owner / "verdict.json").read_text())
        if owner != m:
            title += f" (= {method_row(owner).title}'s run)"
        cells = [title, f"{metrics['epsilon']:.2f}", f"{metrics['fid']:.1f}"]
        for c in README_CLASSIFIERS:
            cells.append(f"{metrics[c]:.3f} ± {metrics[c + '_sd']:.3f}")
        rec = metrics.get("recognised")
        cells.append("–" if rec is None else f"{rec:.3f}")
        verdict = audit.get("verdict", "-")
        if audit.get("eps_hat") is not None:
            verdict += f" (ε̂ = {audit['eps_hat']:.2f})"
        cells.append(verdict)
        lines.append("| " + " | ".join(cells) + " |")
    total = json.loads((root / "report" / "privacy.json").read_text()).get("epsilon")
    lines.append("")
    shown = "∞ (a non-private or seeded use was published)" if total is None else f"{total:.2f}"
    lines.append(f"dataset total ε = {shown} (every release composed)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m easyhard.pipeline.report --export DIR [--from report/figures]`` or
    ``--readme`` (print the README's results table from the committed files)."""
    ap = argparse.ArgumentParser(prog="python -m easyhard.pipeline.report")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--export", metavar="DIR", help="copy the figures here")
    what.add_argument("--readme", action="store_true", help="print the README's results table")
    ap.add_argument("--from", dest="source", default="report/figures", metavar="DIR")
    args = ap.parse_args(argv)
    try:
        if args.readme:
            print("\n".join(readme_table()))
            return 0
        done = export(args.source, args.export)
    except (OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
