"""One run for one plan: FETA-Pro with its frequency release planned off *is* DP-FETA.

FETA-Pro is DP-FETA plus a DP frequency warm-up (the method table,
:mod:`easyhard.pipeline.methods`). Where the planner turns that release off (no signal at its
part of the budget: below ε ≈ 2 at the defaults' N), FETA-Pro's plan is DP-FETA's: the same
central images, the same DP-SGD, the same public ``seed``. Running it again would spend the
privacy budget a second time on the same mechanism and publish a second draw of it, a
comparison of noise with noise. So its stages *share* DP-FETA's run (``config.SHARES_RUN_OF``):

* its first stage (``central``) decides, from public values only (the params its ``dvc.yaml``
  entry lists and the public layout: the same on neighbouring datasets), with
  :func:`same_as`;
* each later stage follows its per-method inputs: a stage whose input is a marker is shared too;
* every such stage requires the method it shares to be in ``methods`` (else one error line). Only
  that precondition reads ``methods`` (no output depends on it, so no stage lists it: a
  ``methods`` without DP-FETA after a shared run is refused by the report, in one line).

A stage of FETA-Pro that does run clears its declared outputs first (:func:`clear_outputs`), so a
marker never lies beside real files when stages are run by hand rather than by DVC.

A shared stage runs no notebook, reads no data and spends nothing. For every output
``dvc.yaml`` declares for it, it writes a marker naming whose run it is (``same_as.json`` in an
output folder, ``{"same_as": ...}`` as an output file), and its executed notebook is one markdown
cell saying so. Readers of results (the report, the README table, the sweep) follow the marker of
``metrics.json`` (:func:`resolve`). ``python -m easyhard.privacy plan`` prints the decision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from easyhard.config import SHARES_RUN_OF, Params
from easyhard.schema import ConfigError

if TYPE_CHECKING:  # the layout module imports torch; the report and the sweep need not
    from easyhard.layout import Layout

REPOSITORY = Path(__file__).resolve().parents[2]

#: The marker file in a shared method's output folders, and the key of its output files.
MARKER = "same_as.json"
KEY = "same_as"


def run_signature(params: Params, layout: Layout, name: str) -> tuple[Any, ...]:
    """What a method's run depends on beyond the params every method reads: the table's privacy
    flag and the planned warm-ups' settings (``None`` for one it does not run or that is off)."""
    from easyhard.pipeline.methods import method

    row = method(name)
    plan = row.warmup_plan(params, layout)
    central = plan.central.config if row.central_images else None
    frequency = plan.frequency.config if row.frequency and row.private else None
    return (row.private, central, frequency)


def same_as(params: Params, layout: Layout, name: str) -> str | None:
    """The method whose run ``name``'s run is at these params (``SHARES_RUN_OF``, when their
    plans agree), else ``None``. Public values only; ``methods`` is not read."""
    partner = SHARES_RUN_OF.get(name)
    if partner is None:
        return None
    same = run_signature(params, layout, name) == run_signature(params, layout, partner)
    return partner if same else None


def require_partner(params: Params, name: str, partner: str) -> None:
    """One error line when ``name`` shares ``partner``'s run but ``methods`` lacks ``partner``."""
    if partner not in params.methods:
        raise ConfigError(
            f"at these params {name}'s plan is {partner}'s (its own warm-up is planned off), so "
            f"its run is {partner}'s: add {partner} to methods"
        )


def _stage(root: Path, notebook: str | Path) -> Mapping[str, Any]:
    """The per-method stage of ``dvc.yaml`` that runs ``notebook``: ``root``'s ``dvc.yaml``, else
    this repository's (a notebook run outside a DVC checkout, e.g. the tests' temporary roots)."""
    found = [p for p in (root / "dvc.yaml", REPOSITORY / "dvc.yaml") if p.is_file()]
    if not found:
        raise FileNotFoundError(f"no dvc.yaml in {root} to find the stage's outputs in")
    target = Path(notebook).name
    for stage in yaml.safe_load(found[0].read_text())["stages"].values():
        do = stage.get("do")
        if do is not None and target in {Path(w).name for w in str(do.get("cmd", "")).split()}:
            return do
    raise ValueError(f"no per-method stage of dvc.yaml runs {target}")


def _paths(entries: list[Any], root: Path, name: str) -> list[Path]:
    out = []
    for entry in entries:
        path = next(iter(entry)) if isinstance(entry, Mapping) else entry
        out.append(root / str(path).split("#")[0].strip().replace("${item}", name))
    return out


def stage_outputs(root: Path, notebook: str | Path, name: str) -> list[Path]:
    """The outputs ``dvc.yaml`` declares for the stage running ``notebook``, for method ``name``."""
    do = _stage(root, notebook)
    return _paths([*do.get("outs", []), *do.get("metrics", []), *do.get("plots", [])], root, name)


def stage_inputs(root: Path, notebook: str | Path, name: str) -> list[Path]:
    """The stage's per-method inputs (``runs/<name>/...``): earlier stages' outputs."""
    do = _stage(root, notebook)
    deps = [d for d in do.get("deps", []) if "${item}" in str(d)]
    return _paths(deps, root, name)


def marker_of(path: Path) -> str | None:
    """Whose run an output holds, if it is a shared stage's marker (``None``: its own)."""
    file = path / MARKER if path.is_dir() else path
    if not file.is_file() or file.suffix != ".json":
        return None
    data = json.loads(file.read_text())
    return partner(data) if isinstance(data, Mapping) else None


def stage_partner(root: Path, notebook: str | Path, params: Params, name: str) -> str | None:
    """Whose run this stage of ``name`` is: its inputs' marker, or (the first stage, with no
    per-method input) :func:`same_as` on the public layout, whose partner must be in ``methods``."""
    inputs = stage_inputs(root, notebook, name)
    if inputs:
        found = next((p for p in map(marker_of, inputs) if p is not None), None)
    else:
        from easyhard.pipeline.paths import Paths
        from easyhard.pipeline.release import layout

        found = same_as(params, layout(params, Paths(root)), name)
    if found is not None:  # a precondition only (no output depends on methods): every stage
        require_partner(params, name, found)
    return found


def clear_outputs(root: Path, notebook: str | Path, name: str) -> None:
    """Remove the stage's declared outputs (as DVC does before it runs a stage), so that neither a
    marker is left beside a real run's files nor real files beside a marker, whoever runs it."""
    import shutil

    for out in stage_outputs(root, notebook, name):
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()


def write_shared(root: Path, notebook: str | Path, output: Path, name: str, owner: str) -> None:
    """The stage of ``notebook`` for ``name``, shared with ``owner``: a marker for every
    declared output and a one-cell executed notebook at ``output`` (nothing else is read)."""
    import nbformat

    note = {KEY: owner, "reason": f"{name}'s plan at these params is {owner}'s"}
    clear_outputs(root, notebook, name)
    for out in stage_outputs(root, notebook, name):
        if out.suffix == ".json":
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(note, indent=2) + "\n")
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / MARKER).write_text(json.dumps(note, indent=2) + "\n")
    text = (
        f"# {Path(notebook).stem} for `{name}`: {owner}'s run\n\n"
        f"At these params `{name}` runs the same plan as `{owner}` (`python -m easyhard.privacy "
        f"plan` prints it), so this stage is not run again: no data is read and nothing is "
        f"spent. `{name}`'s results are `{owner}`'s (easyhard/pipeline/sharing.py)."
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text, id="cell-0")])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.running.ipynb")
    nbformat.write(nb, tmp)
    tmp.replace(output)


def partner(metrics: Mapping[str, Any]) -> str | None:
    """Whose run a method's ``metrics.json`` content points to (``None``: its own)."""
    value = metrics.get(KEY)
    return None if value is None else str(value)


def resolve(runs: Path, name: str) -> str:
    """The method whose files under ``runs`` hold ``name``'s run (``name`` unless shared)."""
    seen = [name]
    while True:
        other = partner(json.loads((runs / seen[-1] / "metrics.json").read_text()))
        if other is None:
            return seen[-1]
        if other in seen:
            raise ValueError(f"shared runs form a cycle: {' -> '.join([*seen, other])}")
        seen.append(other)
