"""Collect a privacy sweep (DVC experiments or metrics files) into quality-vs-ε plots and a table.

    dvc exp run -S privacy.epsilon=1 -S seed=1        # ... one run per budget and repeat
    python -m easyhard.sweep --run --epsilon 1 10 --repeats 3   # or let it run them all
    python -m easyhard.sweep                          # runs `dvc exp show --json` itself
    python -m easyhard.sweep --exp-json exps.json     # or a saved `dvc exp show --json` output
    python -m easyhard.sweep --run --exp-json old.json ...   # resume in another clone
    python -m easyhard.sweep runs/*/metrics.json old/runs/*/metrics.json   # or metrics files
    python -m easyhard.sweep --exp-json exps.json --rerun-json reruns.json  # newer runs replace

Reruns. After a default changes for one method, only that method's runs need running again
(``dvc exp run -S methods=[fetapro] ...``; ``methods=[dpfeta,fetapro]`` where FETA-Pro's run is
DP-FETA's, easyhard/pipeline/sharing.py). ``--rerun-json`` takes the saved ``dvc exp show
--json`` of such runs: each of its experiments' rows replaces every earlier row of the same
method, target ε and seed (its baseline and workspace states hold copies of older runs and are
ignored). ``runs.json`` keeps the replaced rows, marked ``replaced_by``; the summary leaves them out.

Repeats. ``seed`` is the repeat axis: every stage that draws randomness lists it (``prepare``
always reruns, ``report`` follows their outputs), so ``dvc exp run -S seed=k`` reruns the whole pipeline (never restored from DVC's
run-cache), with a new public seed and, in a secure run, new secret noise: independent
whole-pipeline runs. A row's seed comes from the experiment's params (``None`` for metrics files). Runs of one method at one target ε are
summarised as mean ± std over their repeats (:func:`easyhard.sweep_summary.summarise`).

Writes ``report/sweep/sweep.json`` (one row per method and target ε: ``fid``, ``fid_std``,
``<classifier>_acc_mean``, ``<classifier>_acc_std``, both stds over the ``repeats`` whole-pipeline
runs, their ``seeds``), ``runs.json`` (one row per experiment and method) and
``quality_vs_epsilon.png`` (FID and downstream accuracy against the target ε, one line per method
with the repeat spread; the non-private ceiling, which has no ε, as a horizontal line) and prints
both as markdown tables, then the papers' orderings with their repeat spread
(:mod:`easyhard.ordering`).

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
from easyhard.ordering import ordering_lines
from easyhard.pipeline.sharing import KEY as SHARED
from easyhard.pipeline.sharing import resolve
from easyhard.sweep_summary import markdown_table, summarise, summary_figure, summary_table

OUT = Path("report") / "sweep"


def _states(entries: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every experiment state in ``dvc exp show --json`` output: baselines and their experiments."""
    for e in entries:
        yield e
        for group in e.get("experiments") or []:
            yield from _states(group.get("revs") or [])


def _experiment_states(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The experiments of ``dvc exp show --json`` output, without their baselines, nor one saved
    while it ran (rev ``workspace``: its new params may sit beside an older run's metrics)."""
    return [
        s
        for e in entries
        for group in e.get("experiments") or []
        for s in _states(group.get("revs") or [])
        if s.get("rev") != "workspace"
    ]


def _metric_rows(
    metrics: Mapping[str, Any], exp: str, target: float | None, seed: int | None = None
) -> list[dict[str, Any]]:
    rows = []
    for path, result in metrics.items():
        parts = Path(path).parts
        data = result.get("data") if isinstance(result, Mapping) else None
        if not data or len(parts) < 3 or parts[-3] != "runs" or parts[-1] != "metrics.json":
            continue
        if target is None:
            continue
        rows.append(
            {"experiment": exp, "method": parts[-2], **data}
            | {"target_epsilon": target, "seed": seed}
        )
    return _shared_filled(rows)


def _shared_filled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one run whose metrics point to another method's run (the same plan,
    easyhard/pipeline/sharing.py) get that run's metrics, keeping their method and ``same_as``."""
    by_method = {r["method"]: r for r in rows if not r.get(SHARED)}
    out = []
    for r in rows:
        owner = r.get(SHARED)
        if owner is not None:
            if owner not in by_method:  # e.g. a workspace saved while the run was going
                print(
                    f"warning: {r['method']} in {r['experiment'] or 'a state'} shares {owner}'s "
                    "run, which has no metrics there: left out",
                    file=sys.stderr,
                )
                continue
            keep = {k: r[k] for k in ("experiment", "method", "target_epsilon", "seed") if k in r}
            r = {**by_method[owner], **keep, SHARED: owner}
        out.append(r)
    return out


def rows_from_exp_show(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (experiment, method) from ``dvc exp show --json``: the method's metrics plus
    ``experiment`` (name, else short rev) and ``target_epsilon`` (params ``privacy.epsilon``).

    ``entries`` may join the outputs of several clones (a sweep resumed on another machine). A run
    is told apart by its metrics, not its rev: two runs with new secret noise never agree to the
    last digit. After ``dvc exp run`` the workspace holds that experiment's metrics (and while
    the next one runs, the new params beside the old metrics), the baseline commit those of the
    run committed with it, and a new clone's baseline the metrics copied from an earlier clone:
    each state whose metrics equal an earlier one's (named states first, workspaces last) is
    that run again and is left out, so no run counts twice as a repeat, nor under another run's
    params."""
    states: list[tuple[Mapping[str, Any], str]] = []
    seen: set[str] = set()
    for state in _states(entries):
        data = state.get("data")
        if not data or state.get("error"):
            continue
        rows_here = _metric_rows(data.get("metrics") or {}, "", 0.0)
        if not rows_here:
            continue
        states.append((state, json.dumps(rows_here, sort_keys=True, default=str)))
    states.sort(key=lambda sc: sc[0]["rev"] == "workspace")  # stable: named states first
    rows: list[dict[str, Any]] = []
    for state, content in states:
        if content in seen:
            continue
        seen.add(content)
        data = state["data"]
        params = (data.get("params") or {}).get("params.yaml", {}).get("data") or {}
        target = (params.get("privacy") or {}).get("epsilon")
        target = None if target is None else float(target)
        rev = str(state["rev"])
        name = state.get("name") or (rev[:7] if len(rev) == 40 else rev)  # e.g. "workspace"
        seed = params.get("seed")
        rows.extend(_metric_rows(data.get("metrics") or {}, name, target, seed))
    return rows


def _run_key(r: Mapping[str, Any]) -> tuple[Any, float | None, int | None]:
    """(method, target ε, seed) of a row, normalised so that reruns and earlier rows compare."""
    eps, seed = r.get("target_epsilon"), r.get("seed")
    return (
        r.get("method"),
        None if eps is None else float(eps),
        None if seed is None else int(seed),
    )


def replace_reruns(
    rows: Sequence[Mapping[str, Any]], reruns: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``rows`` then ``reruns``, each row of ``rows`` with the method, target ε and seed of a rerun
    marked ``replaced_by`` (the rerun's experiment): the summary counts the rerun instead."""
    newer: dict[tuple[Any, float | None, int | None], str] = {}
    for r in reruns:
        key = _run_key(r)
        if key[1] is None or key[2] is None:
            raise ValueError(f"rerun {r.get('experiment')!r} has no seed or target ε to replace")
        if key in newer:
            raise ValueError(
                f"two reruns of {key[0]} at target ε {key[1]:g}, seed {key[2]} "
                f"({newer[key]!r}, {r.get('experiment')!r}): keep one in the rerun file"
            )
        newer[key] = str(r["experiment"])
    out = [
        dict(r) | ({"replaced_by": newer[_run_key(r)]} if _run_key(r) in newer else {})
        for r in rows
    ]
    return out + [dict(r) for r in reruns]


def counted(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows the summary counts: those no rerun replaced."""
    return [r for r in rows if not r.get("replaced_by")]


def rows_from_metrics_files(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per ``.../runs/<method>/metrics.json`` file; its target ε is read from the
    ``evaluate/details.json`` the evaluate stage wrote beside it."""
    rows: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"metrics file not found: {p}")
        data = json.loads(p.read_text())
        owner = resolve(p.parent.parent, p.parent.name)  # whose run it is (itself unless shared)
        run = p.parent.parent / owner
        details = run / "evaluate" / "details.json"
        if not details.is_file():
            raise FileNotFoundError(
                f"{details} not found (the evaluate stage writes it beside {p})"
            )
        info = json.loads(details.read_text())
        target = info.get("target_epsilon")
        if target is None:
            raise ValueError(f"{details} has no target_epsilon (not an evaluate-stage file)")
        if owner != p.parent.name:  # the same run as another method's: its metrics, marked
            data = json.loads((run / "metrics.json").read_text()) | {SHARED: owner}
        rows.append(
            {"experiment": str(p.parent.parent.parent), "method": p.parent.name, **data}
            | {"target_epsilon": float(target), "seed": info.get("seed")}
        )
    return rows


def summary_of(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The summary over repeats of ``rows`` and the classifiers it covers (those any row has)."""
    classifiers = [c for c in CLASSIFIERS if any(c in r for r in rows)]
    return summarise(counted(rows), classifiers), classifiers


def write_outputs(rows: Sequence[Mapping[str, Any]], out: str | Path) -> dict[str, Path]:
    """``sweep.json`` (the summary over repeats), ``runs.json`` (every run) and
    ``quality_vs_epsilon.png`` in ``out``."""
    from easyhard.io import save_figure, write_json

    if not rows:
        raise ValueError("no runs with metrics found (run the pipeline or an experiment first)")
    out = Path(out)
    summary, classifiers = summary_of(rows)
    write_json(out / "sweep.json", summary)
    write_json(out / "runs.json", list(rows))
    fig = summary_figure(summary, classifiers)
    return {
        "json": out / "sweep.json",
        "runs": out / "runs.json",
        "figure": save_figure(fig, out / "quality_vs_epsilon.png"),
    }


def experiment_commands(
    epsilons: Sequence[float],
    repeats: int,
    done: Iterable[tuple[float, int]] = (),
    settings: Sequence[str] = (),
) -> list[list[str]]:
    """The ``dvc exp run`` command of every (target ε, repeat) not in ``done``: the repeat is the
    public seed; each of ``settings`` (``KEY=VALUE``) is passed as one more ``-S``."""
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    for s in settings:
        if "=" not in s or s.split("=", 1)[0].strip() in ("privacy.epsilon", "seed"):
            raise ValueError(f"--set {s!r}: expected KEY=VALUE, not privacy.epsilon or seed")
    skip = {(float(e), int(s)) for e, s in done}
    extra = [a for s in settings for a in ("-S", s)]
    return [
        ["dvc", "exp", "run", "-S", f"privacy.epsilon={eps:g}", "-S", f"seed={seed}", *extra]
        for eps in epsilons
        for seed in range(repeats)
        if (float(eps), seed) not in skip
    ]


def done_runs(rows: Iterable[Mapping[str, Any]]) -> set[tuple[float, int]]:
    """The (target ε, seed) pairs that already have metrics (a rerun of the sweep skips them)."""
    return {
        (float(r["target_epsilon"]), int(r["seed"]))
        for r in rows
        if r.get("target_epsilon") is not None and r.get("seed") is not None
    }


def exp_show() -> list[dict[str, Any]]:
    """``dvc exp show --json``, parsed."""
    done = subprocess.run(
        ["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ValueError(f"`dvc exp show --json` failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def run_experiments(
    epsilons: Sequence[float],
    repeats: int,
    settings: Sequence[str] = (),
    out: str | Path = OUT,
    saved: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Run every experiment of the sweep that ``dvc exp show`` (or ``saved``, the saved output of
    another clone's) does not already hold, one after the other (each a whole-pipeline run),
    rewriting the sweep's files in ``out`` after each: a sweep cut short keeps what it ran, and
    rerunning the command resumes it."""
    todo = experiment_commands(
        epsilons, repeats, done_runs(rows_from_exp_show([*saved, *exp_show()])), settings
    )
    for i, cmd in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] $ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            raise ValueError(f"`{' '.join(cmd)}` failed")
        write_outputs(rows_from_exp_show([*saved, *exp_show()]), out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m easyhard.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("metrics", nargs="*", help="runs/<method>/metrics.json files (instead of DVC)")
    p.add_argument(
        "--exp-json",
        action="append",
        default=[],
        help="saved output of `dvc exp show --json` (repeatable: clones joined, each run once; "
        "with --run, joined with this clone's and its runs not run again)",
    )
    p.add_argument(
        "--rerun-json",
        action="append",
        default=[],
        help="saved `dvc exp show --json` of reruns (repeatable, in order): each experiment's "
        "rows replace earlier rows of the same method, target ε and seed",
    )
    p.add_argument("--out", default=str(OUT), help=f"output folder (default {OUT})")
    p.add_argument(
        "--run",
        action="store_true",
        help="first run `dvc exp run -S privacy.epsilon=E -S seed=S` for every --epsilon and "
        "repeat (seeds 0 .. --repeats - 1) that `dvc exp show` does not already hold, one after "
        "the other (rerun to resume)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --run: one more `-S KEY=VALUE` for every run (e.g. audit.enabled=false)",
    )
    p.add_argument("--epsilon", type=float, nargs="+", default=[1.0, 10.0], help="with --run")
    p.add_argument("--repeats", type=int, default=3, help="with --run: whole-pipeline repeats")
    args = p.parse_args(argv)
    try:
        if args.run and args.rerun_json:
            raise ValueError(
                "--rerun-json collects saved reruns; run them with `dvc exp run -S "
                "methods=[...]` (docs/experiments.md), not together with --run"
            )
        saved = [e for f in args.exp_json for e in json.loads(Path(f).read_text())]
        if args.run:
            run_experiments(args.epsilon, args.repeats, args.set, args.out, saved)
        if args.metrics:
            rows = rows_from_metrics_files(args.metrics)
        else:
            live = exp_show() if args.run or not args.exp_json else []
            rows = rows_from_exp_show([*saved, *live])
        for f in args.rerun_json:
            reruns = rows_from_exp_show(_experiment_states(json.loads(Path(f).read_text())))
            rows = replace_reruns(rows, reruns)
        written = write_outputs(rows, args.out)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(markdown_table(counted(rows))))
    print()
    summary, classifiers = summary_of(rows)  # what sweep.json holds
    print("\n".join(summary_table(summary, classifiers)))
    print()  # the papers' claims, each with its repeat spread (easyhard.ordering)
    print("\n".join(ordering_lines(summary)))
    print(f"wrote {written['json']}, {written['runs']} and {written['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
