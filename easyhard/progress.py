"""Progress bars for long loops: widgets in an interactive Jupyter session, text everywhere else.

Inside a pipeline run (``python -m easyhard.run`` sets ``EASYHARD_TEXT_PROGRESS``) the bars stay
plain text on stderr, so they show in ``dvc repro``'s log (a private stage's go to its private log)
and show no wall-clock times or rates, so that the executed notebook, which keeps each bar's final
line, is a function of the run's inputs. They also refresh by count, never by clock (every
:data:`TEXT_STEPS`-th of the total, on every postfix change, and no refresh from tqdm's monitor
thread), so the log itself, every line of it, is a function of the inputs too: a time-paced bar
prints more lines on a slower or busier machine, a timing channel and a log that differs between
two runs of the same inputs. A notebook opened in JupyterLab gets tqdm's widget (``ipywidgets``,
in the ``lab`` extra).
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

TEXT_ENV = "EASYHARD_TEXT_PROGRESS"

#: Text bars in pipeline runs: position and postfix, no times (they would make notebooks differ).
TEXT_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt}{postfix}"

#: Text bars in pipeline runs refresh this many times over their total (by count, not by clock).
TEXT_STEPS = 20


def _total(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    if kwargs.get("total") is not None:
        return int(kwargs["total"])
    try:
        return len(args[0]) if args else None
    except TypeError:
        return None


def _interactive_jupyter() -> bool:
    if os.environ.get(TEXT_ENV):
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)``: a widget in interactive Jupyter, text otherwise."""
    if _interactive_jupyter():
        from tqdm.notebook import tqdm as notebook_tqdm

        kwargs.pop("file", None)
        return notebook_tqdm(*args, **kwargs)
    if os.environ.get(TEXT_ENV):
        total = _total(args, kwargs)
        kwargs.setdefault("bar_format", TEXT_FORMAT)
        kwargs.setdefault("mininterval", 0.0)  # pace by count (miniters) only
        kwargs.setdefault("maxinterval", float("inf"))  # no forced refresh from the monitor
        kwargs.setdefault("miniters", max(1, -(-(total or TEXT_STEPS) // TEXT_STEPS)))
    return tqdm(*args, **kwargs)
