"""Run one pipeline notebook under papermill: ``python -m easyhard.run NOTEBOOK OUTPUT [--method M]``.

``params.yaml`` is validated first (a bad key or value is one error line and exit code 2, before
any data is read). The notebook reads ``params.yaml`` itself (the kernel runs in the repository
root); papermill injects only the notebook's declared parameters (``method`` for per-method stages),
so it never warns about unknown ones. The executed notebook is written under a temporary name and
renamed to OUTPUT only when every cell succeeded; a failed run leaves ``OUTPUT`` absent and keeps
the partial notebook as ``*.failed.ipynb`` for inspection.

The trust boundary (:mod:`easyhard.pipeline.zones`): a stage that reads the sensitive data runs with
its executed notebook inside ``private/`` and with every byte that it, papermill and the kernel
write to stdout and stderr sent to ``private/logs/``; the terminal (and so ``dvc repro``'s log)
gets one line saying where to look. Public stages echo their cells' output. Saved notebooks keep no
wall-clock times, and each cell's progress bar is stored as its final line only
(:func:`tidy_notebook`), so an executed notebook is a function of its inputs.

The kernel talks to papermill over Unix-domain sockets in a fresh ``0700`` temporary folder
(:func:`_ipc_kernel`), not over localhost TCP, whose plain-text traffic any local user could read
(and which makes ipykernel warn on every stage).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from easyhard.config import METHODS, SHARES_RUN_OF, load_params
from easyhard.pipeline.zones import ZoneError
from easyhard.schema import ConfigError

# Exceptions raised inside a notebook that are the user's input, not a bug: exit 2, one line.
INPUT_ERRORS = {
    "ConfigError",
    "DataError",
    "PrivacyBudgetError",
    "ValueError",
    "FileNotFoundError",
    "CheckpointError",  # easyhard.checkpoint: a leftover file the user must delete
}

#: Metadata keys that hold wall-clock times (papermill's and Jupyter's).
_TIMING_KEYS = ("start_time", "end_time", "duration")


def _final_text(text: str) -> str:
    """What a terminal would show of ``text``: each line's part after its last carriage return."""
    lines = text.split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


#: Within a run of consecutive stream outputs, the order they are stored in.
_STREAM_ORDER = ("stderr", "stdout")


def _merge_streams(outputs: list[Any]) -> list[Any]:
    """Each run of consecutive stream outputs as one stderr output, then one stdout output.

    ipykernel flushes the two streams on their own timers, so how a bar's stderr interleaves with
    a print's stdout depends on timing (under load a bar's closing newline came after the print);
    each stream's own order is kept. A display flushes both streams before it is sent, so the runs
    between displays are the kernel's, not the clock's."""
    merged: list[Any] = []
    run: dict[str, Any] = {}
    for out in [*outputs, None]:
        if out is not None and out.get("output_type") == "stream":
            if out.get("name") in run:
                run[out["name"]]["text"] += out["text"]
            else:
                run[out.get("name")] = out
            continue
        rank = {k: _STREAM_ORDER.index(k) if k in _STREAM_ORDER else 2 for k in run}
        merged.extend(run[k] for k in sorted(run, key=rank.__getitem__))
        run = {}
        if out is not None:
            merged.append(out)
    return merged


def tidy_notebook(nb: Any, name: str) -> Any:
    """Drop wall-clock times, temporary paths and random cell ids from an executed notebook; store
    each run of a cell's consecutive stream outputs as one stderr and one stdout output, as a
    terminal shows them (a progress bar: its last line), whatever the timing of the two streams."""
    pm = nb.metadata.get("papermill", {})
    for k in _TIMING_KEYS:
        pm.pop(k, None)
    pm["output_path"] = name
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # papermill gives its injected cell a random id
        meta = cell.get("metadata", {})
        meta.pop("execution", None)
        for k in _TIMING_KEYS:
            meta.get("papermill", {}).pop(k, None)
        merged = _merge_streams(cell.get("outputs", []))
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = _final_text(out["text"])
        if "outputs" in cell:
            cell["outputs"] = merged
    return nb


@contextlib.contextmanager
def _into_file(log: Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 (this process and every child it starts) into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def private_log(root: Path, output: Path) -> Path:
    """Where a private stage's stdout/stderr go: ``private/logs/<output file stem>.log``."""
    from easyhard.pipeline.paths import Paths

    rel = output.resolve().relative_to(Paths(root).private.resolve())
    return Paths(root).private / "logs" / rel.with_suffix(".log")


def run_notebook(
    notebook: str | Path,
    output: str | Path,
    root: str | Path = ".",
    extra: dict | None = None,
    progress: bool = False,
) -> str | None:
    """Execute ``notebook`` in ``root`` with ``extra`` (e.g. ``{"method": "dpfeta"}``) injected
    as papermill parameters; atomic output. A private-zone stage's output must lie in ``private/``
    and its stdout/stderr go to its private log (:mod:`easyhard.pipeline.zones`).

    A per-method stage of a method whose run is its partner's (``config.SHARES_RUN_OF``, where
    the planner turns its own warm-up off; :mod:`easyhard.pipeline.sharing`) is not executed:
    its outputs point to the partner's, whose name is returned (``None`` when the notebook ran)."""
    from easyhard.pipeline import zones

    root = Path(root).resolve()
    params = load_params(root / "params.yaml")  # validate before anything runs
    zones.check_output(notebook, output, root)
    output = Path(output)
    if not output.is_absolute():
        output = root / output
    method = (extra or {}).get("method")
    if method in SHARES_RUN_OF:  # a method whose run may be another's (its warm-up planned off)
        from easyhard.pipeline import sharing

        partner = sharing.stage_partner(root, notebook, params, method)
        if partner is not None:
            sharing.write_shared(root, notebook, output, method, partner)
            return partner
        sharing.clear_outputs(root, notebook, method)  # no marker left beside its real files
    zone = zones.zone_of(notebook)
    if zone == "private":
        with _into_file(private_log(root, output)):
            try:
                _execute(notebook, output, root, extra, zone, progress=False)
            except BaseException:  # the whole error, for the data holder: into the private log
                traceback.print_exc()
                raise
    else:
        _execute(notebook, output, root, extra, zone, progress)
    return None


def _execute(
    notebook: str | Path, output: Path, root: Path, extra: dict | None, zone: str, progress: bool
) -> None:
    from easyhard.pipeline.zones import RUN_ENV, ZONE_ENV
    from easyhard.progress import TEXT_ENV

    kernel_env = {  # what the kernel inherits; the caller's environment is restored after
        TEXT_ENV: "1",  # text progress bars, for the logs
        ZONE_ENV: zone,
        RUN_ENV: Path(notebook).stem + "-" + str((extra or {}).get("method", "all")),
    }
    with _environment(kernel_env):
        _papermill(notebook, output, root, extra, progress)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (a kernel started inside inherits them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _papermill(
    notebook: str | Path, output: Path, root: Path, extra: dict | None, progress: bool
) -> None:
    import nbformat
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.running.ipynb")
    failed = output.with_name(f"{output.stem}.failed.ipynb")
    output.unlink(missing_ok=True)
    failed.unlink(missing_ok=True)
    try:
        with _ipc_kernel() as kernel_config:
            pm.execute_notebook(
                str(notebook),
                str(tmp),
                parameters=dict(extra or {}),
                cwd=str(root),
                progress_bar=progress,
                log_output=True,
                stdout_file=sys.stdout,
                stderr_file=sys.stderr,
                config=kernel_config,
            )
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    nb = tidy_notebook(nbformat.read(tmp, as_version=4), output.name)
    nbformat.write(nb, tmp)
    os.replace(tmp, output)


@contextlib.contextmanager
def _ipc_kernel() -> Iterator[Any]:
    """A kernel-manager config for IPC transport, its sockets in a private temporary folder."""
    import tempfile

    from traitlets.config import Config

    with tempfile.TemporaryDirectory(prefix="easyhard-kernel-") as folder:  # mode 0700
        yield Config({"KernelManager": {"transport": "ipc", "ip": str(Path(folder) / "kernel")}})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easyhard.run", description=__doc__.splitlines()[0])
    ap.add_argument("notebook")
    ap.add_argument("output")
    ap.add_argument(
        "--method",
        help="the method of a per-method stage: " + " | ".join(METHODS) + " (params.yaml methods)",
    )
    ap.add_argument("--root", default=".", help="repository root holding params.yaml")
    args = ap.parse_args(argv)
    extra = {"method": args.method} if args.method else {}
    what = Path(args.notebook).stem + (f" ({args.method})" if args.method else "")
    private = _zone(args.notebook) == "private"
    try:
        if not Path(args.notebook).is_file():
            raise FileNotFoundError(f"notebook not found: {args.notebook}")
        shared = run_notebook(args.notebook, args.output, root=args.root, extra=extra)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ZoneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # papermill's PapermillExecutionError carries the cell's exception
        ename = getattr(e, "ename", type(e).__name__)
        if private:  # its message may quote the data: it stays in the private log
            print(
                f"error: {what} failed in the private zone; see {_log_hint(args)}", file=sys.stderr
            )
        else:
            evalue = getattr(e, "evalue", str(e))
            print(f"error: {ename}: {evalue}", file=sys.stderr)
        return 2 if ename in INPUT_ERRORS else 1
    if shared is not None:
        print(f"{what}: {shared}'s run (the same plan; not run again, nothing spent)")
        return 0
    if private:
        print(f"{what}: done in the private zone (log: {_log_hint(args)})")
    return 0


def _zone(notebook: str) -> str:
    from easyhard.pipeline.zones import zone_of

    return zone_of(notebook)


def _log_hint(args: argparse.Namespace) -> str:
    root = Path(args.root).resolve()
    out = Path(args.output)
    try:
        log = private_log(root, out if out.is_absolute() else root / out)
    except ValueError:
        return "private/logs/"
    return str(log.relative_to(root))


if __name__ == "__main__":
    sys.exit(main())
