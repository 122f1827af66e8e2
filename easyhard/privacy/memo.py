"""A disk memo of the noise calibration, shared by every process of a run.

Calibrating a noise multiplier is a root search over an accountant (~2-5 s on a CPU core), and a
pipeline run plans each method's release again in every stage process (central, frequency,
pretraining, fine-tuning, audit): a dozen identical searches. Their inputs are public values only
(target epsilon, delta, sample rate, steps, the earlier mechanisms, the accountant), so the answer
can be kept in a per-user cache folder and read back by the next process.

A remembered value is never trusted blindly: the caller passes a check (for the calibration: the
composition with the remembered noise is recomputed with the run's accountant and must meet the
target), and a value that fails it, or an unreadable file, is computed afresh and overwritten. The
key holds a digest of the accountant's code and the versions of the libraries it calls, so a
changed accountant never reads an old answer.

Folder: ``$EASYHARD_CACHE_DIR`` if set (``off`` or empty: no memo), else
``platformdirs.user_cache_dir("easyhard")/calibration``. Deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from easyhard.io import write_json

ENV_DIR = "EASYHARD_CACHE_DIR"


def memo_dir() -> Path | None:
    """The memo folder, or ``None`` when ``$EASYHARD_CACHE_DIR`` is ``off`` or empty."""
    value = os.environ.get(ENV_DIR)
    if value is not None:
        return None if value.strip() in ("", "off") else Path(value)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("easyhard")) / "calibration"


def key_digest(key: Mapping[str, Any]) -> str:
    """SHA-256 of the key's canonical JSON (floats written exactly, keys sorted)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def remembered(
    key: Mapping[str, Any], compute: Callable[[], float], valid: Callable[[float], bool]
) -> float:
    """``compute()``, or the value remembered for ``key`` when it passes ``valid``.

    Exceptions of ``compute`` (an unreachable target) propagate and nothing is stored."""
    folder = memo_dir()
    if folder is None:
        return compute()
    path = folder / f"{key_digest(key)}.json"
    try:
        stored = json.loads(path.read_text())
        value = float(stored["value"])
        if stored.get("key") == json.loads(json.dumps(key)) and math.isfinite(value):
            if valid(value):
                return value
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: compute afresh
    value = compute()
    try:
        write_json(path, {"key": key, "value": value})
    except OSError:
        pass  # a read-only cache folder costs time, never correctness
    return value
