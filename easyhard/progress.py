"""Progress bars for long loops: widgets in an interactive Jupyter session, text everywhere else.

Inside a pipeline run (``python -m easyhard.run`` sets ``EASYHARD_TEXT_PROGRESS``) the bars stay
plain text on stderr, so they show in ``dvc repro``'s log (a private stage's go to its private log)
and show no wall-clock times or rates, so that the executed notebook, which keeps each bar's final
line, is a function of the run's inputs. A notebook opened in JupyterLab gets tqdm's widget
(``ipywidgets``, in the ``lab`` extra).
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

TEXT_ENV = "EASYHARD_TEXT_PROGRESS"

#: Text bars in pipeline runs: position and postfix, no times (they would make notebooks differ).
TEXT_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt}{postfix}"


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
        kwargs.setdefault("bar_format", TEXT_FORMAT)
        kwargs.setdefault("mininterval", 2.0)
    return tqdm(*args, **kwargs)
