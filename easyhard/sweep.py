"""Collect a privacy sweep (DVC experiments or metrics files) into quality-vs-ε plots and a table.

    dvc exp run -S privacy.epsilon=1                  # ... one run per budget
    python -m easyhard.sweep                          # runs `dvc exp show --json` itself
    python -m easyhard.sweep --exp-json exps.json     # or a saved `dvc exp show --json` output
    python -m easyhard.sweep runs/*/metrics.json old/runs/*/metrics.json   # or metrics files

Writes ``report/sweep/sweep.json`` (one row per experiment and method), ``quality_vs_epsilon.png``
(FID and downstream accuracy against the target ε, one line per method; the non-private ceiling,
which has no ε, as a horizontal line) and prints a markdown table.

A row holds the keys of ``runs/<method>/metrics.json`` (:func:`easyhard.pipeline.evaluate.headline`:
``epsilon``, ``private``, ``fid``, ``<classifier>``, ``<classifier>_sd``) plus ``experiment``,
``method`` and ``target_epsilon``: the params' ``privacy.epsilon`` for DVC experiments, else
``target_epsilon`` of the ``evaluate/details.json`` beside the metrics file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from easyhard.config import CLASSIFIERS

OUT = Path("report") / "sweep"


def _states(entries: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every experiment state in ``dvc exp show --json`` output: baselines and their experiments."""
    for e in entries:
        yield e
        for group in e.get("experiments") or []:
            yield from _states(group.get("revs") or [])


def _metric_rows(
    metrics: Mapping[str, Any], exp: str, target: float | None
) -> list[dict[str, Any]]:
    rows = []
    for path, result in metrics.items():
        parts = Path(path).parts
        data = result.get("data") if isinstance(result, Mapping) else None
        if not data or len(parts) < 3 or parts[-3] != "runs" or parts[-1] != "metrics.json":
            continue
        if target is None:
            continue
        rows.append({"experiment": exp, "method": parts[-2], **data, "target_epsilon": target})
    return rows


def rows_from_exp_show(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (experiment, method) from ``dvc exp show --json``: the method's metrics plus
    ``experiment`` (name, else short rev) and ``target_epsilon`` (params ``privacy.epsilon``)."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for state in _states(entries):
        data = state.get("data")
        if not data or state.get("error") or state["rev"] in seen:
            continue
        seen.add(state["rev"])
        params = (data.get("params") or {}).get("params.yaml", {}).get("data") or {}
        target = (params.get("privacy") or {}).get("epsilon")
        target = None if target is None else float(target)
        rev = str(state["rev"])
        name = state.get("name") or (rev[:7] if len(rev) == 40 else rev)  # e.g. "workspace"
        rows.extend(_metric_rows(data.get("metrics") or {}, name, target))
    return rows


def rows_from_metrics_files(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per ``.../runs/<method>/metrics.json`` file; its target ε is read from the
    ``evaluate/details.json`` the evaluate stage wrote beside it."""
    rows: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"metrics file not found: {p}")
        details = p.parent / "evaluate" / "details.json"
        if not details.is_file():
            raise FileNotFoundError(
                f"{details} not found (the evaluate stage writes it beside {p})"
            )
        target = json.loads(details.read_text()).get("target_epsilon")
        if target is None:
            raise ValueError(f"{details} has no target_epsilon (not an evaluate-stage file)")
        data = json.loads(p.read_text())
        rows.append(
            {"experiment": str(p.parent.parent.parent), "method": p.parent.name, **data}
            | {"target_epsilon": float(target)}
        )
    return rows


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


def write_outputs(rows: Sequence[Mapping[str, Any]], out: str | Path) -> dict[str, Path]:
    """``sweep.json`` and ``quality_vs_epsilon.png`` in ``out``."""
    from easyhard.io import save_figure, write_json
    from easyhard.plots import quality_vs_epsilon_figure

    if not rows:
        raise ValueError("no runs with metrics found (run the pipeline or an experiment first)")
    out = Path(out)
    classifiers = [c for c in CLASSIFIERS if any(c in r for r in rows)]
    write_json(out / "sweep.json", list(rows))
    fig = quality_vs_epsilon_figure(rows, classifiers)
    return {
        "json": out / "sweep.json",
        "figure": save_figure(fig, out / "quality_vs_epsilon.png"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m easyhard.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("metrics", nargs="*", help="runs/<method>/metrics.json files (instead of DVC)")
    p.add_argument("--exp-json", help="saved output of `dvc exp show --json`")
    p.add_argument("--out", default=str(OUT), help=f"output folder (default {OUT})")
    args = p.parse_args(argv)
    try:
        if args.metrics:
            rows = rows_from_metrics_files(args.metrics)
        else:
            if args.exp_json:
                text = Path(args.exp_json).read_text()
            else:
                done = subprocess.run(
                    ["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False
                )
                if done.returncode != 0:
                    raise ValueError(f"`dvc exp show --json` failed: {done.stderr.strip()}")
                text = done.stdout
            rows = rows_from_exp_show(json.loads(text))
        written = write_outputs(rows, args.out)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(markdown_table(rows)))
    print(f"wrote {written['json']} and {written['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
