"""The trust boundary: which stages read the sensitive data, and what that means for their output.

Two zones (:class:`easyhard.pipeline.paths.Paths`). A stage in the *private zone* reads the
sensitive training split; everything it prints, logs, plots or displays may depend on every record,
so the runner (:mod:`easyhard.run`) writes its executed notebook under ``private/``, sends every
byte its process and its kernel write to stdout/stderr into a private log, and prints one public
line. What such a stage publishes is only what its code writes into the public zone: mechanism
outputs (noisy, accounted) and post-processing of them. A stage in the *public zone* reads only
public files (releases, the held-out split declared public, synthetic images) and may print freely;
it cannot read the training split (:func:`load_training` refuses). The whole-pipeline
post-processing test (``tests/test_post_processing.py``) checks the result: on D and D + one record,
with every mechanism output held fixed, every public byte is identical.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from easyhard.pipeline.paths import Paths

if TYPE_CHECKING:  # the runner imports this module: it must not pay for torch (easyhard.data)
    from easyhard.data import ImageSet

#: Notebooks (stems) whose stage reads the sensitive training split.
PRIVATE_NOTEBOOKS = frozenset(
    {"01_prepare", "03_central_images", "04_frequency", "06_finetune", "09_audit"}
)

#: Set by the runner in the notebook's kernel: ``private`` or ``public``.
ZONE_ENV = "EASYHARD_ZONE"

#: Set by the runner in the notebook's kernel: which stage run this is (``<notebook>-<method>``).
RUN_ENV = "EASYHARD_RUN_ID"


class ZoneError(RuntimeError):
    """A stage crossed the trust boundary (read private data from the public zone, or would
    publish a private stage's notebook)."""


def zone_of(notebook: str | Path) -> str:
    """``private`` for a stage that reads the sensitive data, else ``public``."""
    return "private" if Path(notebook).stem in PRIVATE_NOTEBOOKS else "public"


def check_output(notebook: str | Path, output: str | Path, root: str | Path) -> None:
    """A private stage's executed notebook must be written inside the private zone."""
    if zone_of(notebook) != "private":
        return
    private = Paths(Path(root).resolve()).private.resolve()
    out = Path(output)
    out = (out if out.is_absolute() else Path(root).resolve() / out).resolve()
    if private != out and private not in out.parents:
        raise ZoneError(
            f"{Path(notebook).name} reads the sensitive data: its executed notebook must be "
            f"written under {private}, not {output}"
        )


def load_training(paths: Paths) -> ImageSet:
    """The sensitive training split: the only reader of ``paths.train``; refused in a public stage."""
    from easyhard.data import load_npz

    if os.environ.get(ZONE_ENV) == "public":
        raise ZoneError(
            "a public-zone stage tried to read the sensitive training split; only the stages in "
            "easyhard.pipeline.zones.PRIVATE_NOTEBOOKS may"
        )
    return load_npz(paths.train, every_class=False)
