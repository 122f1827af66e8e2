"""Progress bars for long loops: widgets in an interactive Jupyter session, text everywhere else.

Inside a pipeline run (``python -m easyhard.run`` sets ``EASYHARD_TEXT_PROGRESS``) the bars stay
plain text on stderr, so they show in ``dvc repro``'s log; a notebook opened in JupyterLab gets
tqdm's widget (``ipywidgets``, in the ``lab`` extra).
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

TEXT_ENV = "EASYHARD_TEXT_PROGRESS"


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
    return tqdm(*args, **kwargs)
