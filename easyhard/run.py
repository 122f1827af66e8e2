"""Run one pipeline notebook under papermill: ``python -m easyhard.run NOTEBOOK OUTPUT [--method M]``.

``params.yaml`` is validated first (a bad key or value is one error line and exit code 2, before
any data is read). The notebook reads ``params.yaml`` itself (the kernel runs in the repository
root); papermill injects only the notebook's declared parameters (``method`` for per-method stages),
so it never warns about unknown ones. The executed notebook is written under a temporary name and
renamed to OUTPUT only when every cell succeeded; a failed run leaves ``OUTPUT`` absent and keeps
the partial notebook as ``*.failed.ipynb`` for inspection. Progress bars stay plain text (they show
in ``dvc repro``'s log).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from easyhard.config import load_params
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


def run_notebook(
    notebook: str | Path,
    output: str | Path,
    root: str | Path = ".",
    extra: dict | None = None,
    progress: bool = True,
) -> None:
    """Execute ``notebook`` in ``root`` with ``extra`` (e.g. ``{"method": "dpfeta"}``) injected
    as papermill parameters; atomic output."""
    import papermill as pm

    from easyhard.progress import TEXT_ENV

    root = Path(root).resolve()
    load_params(root / "params.yaml")  # validate before anything runs
    os.environ[TEXT_ENV] = "1"  # the kernel inherits it: text progress bars, for the logs
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.running.ipynb")
    failed = output.with_name(f"{output.stem}.failed.ipynb")
    output.unlink(missing_ok=True)
    failed.unlink(missing_ok=True)
    try:
        pm.execute_notebook(
            str(notebook),
            str(tmp),
            parameters=dict(extra or {}),
            cwd=str(root),
            progress_bar=progress,
            log_output=True,
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
        )
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    os.replace(tmp, output)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easyhard.run", description=__doc__.splitlines()[0])
    ap.add_argument("notebook")
    ap.add_argument("output")
    ap.add_argument("--method", help="method parameter for per-method stages (dpfeta|dpdm)")
    ap.add_argument("--root", default=".", help="repository root holding params.yaml")
    args = ap.parse_args(argv)
    extra = {"method": args.method} if args.method else {}
    try:
        if not Path(args.notebook).is_file():
            raise FileNotFoundError(f"notebook not found: {args.notebook}")
        run_notebook(args.notebook, args.output, root=args.root, extra=extra)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # papermill's PapermillExecutionError carries the cell's exception
        ename = getattr(e, "ename", type(e).__name__)
        evalue = getattr(e, "evalue", str(e))
        print(f"error: {ename}: {evalue}", file=sys.stderr)
        return 2 if ename in INPUT_ERRORS else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
