"""Test-only: hold every mechanism's released value fixed between two runs of the pipeline.

"Everything published is a mechanism output or post-processing of one" is checked by running the
whole pipeline on D and on D + {x*} with every released value held fixed, and comparing every
public byte (``tests/test_post_processing.py``). This module is that hold: run 1 (``record``)
draws from a seeded source and saves each call's result; run 2 (``replay``) returns the saved
values instead, so its releases equal run 1's while everything computed from the data (private
diagnostics, exact statistics) is free to differ:

* ``gaussian(exact, std)`` (a mechanism's output) returns run 1's output, whatever ``exact`` is
  (with ``std = 0``, no mechanism at all, it returns ``exact``);
* ``bernoulli(n, p)`` (a Poisson mask) returns run 1's mask for the records both datasets share,
  with x*'s bit inserted at its position in the training split: included in the first draw of each
  source, excluded afterwards (so x* is sampled at least once);
* :func:`held` holds any other value that stands for the secret key (the keyed fingerprint of the
  training split) the same way.

It is switched on only by the environment variable ``EASYHARD_TEST_REPLAY`` =
``record:<folder>`` or ``replay:<folder>`` (with ``EASYHARD_TEST_REPLAY_INSERT`` = x*'s index in
the training split of run 2), never by ``params.yaml``. It wraps whichever source
``privacy.randomness`` names (the audit fails a seeded run outright, so the test uses ``secure``);
since every draw is written to disk, a run with the replay on is never private
(``easyhard.pipeline.release.is_private``): its ledgers and metrics say ``"private": false``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from easyhard.pipeline.zones import RUN_ENV

REPLAY_ENV = "EASYHARD_TEST_REPLAY"
INSERT_ENV = "EASYHARD_TEST_REPLAY_INSERT"


def active() -> tuple[str, Path] | None:
    """``(mode, folder)`` when the test replay is on, else None."""
    value = os.environ.get(REPLAY_ENV)
    if not value:
        return None
    mode, _, folder = value.partition(":")
    if mode not in ("record", "replay") or not folder:
        raise ValueError(f"{REPLAY_ENV} must be record:<folder> or replay:<folder>, got {value!r}")
    return mode, Path(folder)


def _run_id() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", os.environ.get(RUN_ENV, "run"))


class ReplaySource:
    """Wraps a seeded :class:`~easyhard.privacy.randomness.NoiseSource`; never private."""

    private = False
    _instances: dict[str, int] = {}

    def __init__(self, inner: Any, mode: str, folder: Path, stream: str) -> None:
        key = f"{_run_id()}-{stream}"
        index = ReplaySource._instances.get(key, 0)
        ReplaySource._instances[key] = index + 1
        self.inner, self.mode = inner, mode
        self.folder = Path(folder) / f"{key}-{index}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.calls = 0
        self.masks = 0

    def _file(self, kind: str) -> Path:
        self.calls += 1
        return self.folder / f"{self.calls:06d}-{kind}.npy"

    def _hold(self, kind: str, fresh: Any) -> np.ndarray:
        f = self._file(kind)
        if self.mode == "record":
            value = np.asarray(fresh())
            np.save(f, value)
            return value
        if not f.is_file():
            raise RuntimeError(f"test replay: nothing recorded for {f}")
        return np.load(f)

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        return self._hold("normal", lambda: self.inner.normal(shape, std))

    def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
        if not std:  # no noise (the non-private ceiling): the output is the data, nothing to hold
            return np.asarray(exact, dtype=np.float64)
        return self._hold("gaussian", lambda: self.inner.gaussian(exact, std))

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        first = self.masks == 0
        self.masks += 1
        if self.mode == "record":
            return self._hold("mask", lambda: self.inner.bernoulli(n, p))
        mask = self._hold("mask", None)
        if len(mask) == n:
            return mask
        if len(mask) != n - 1:
            raise RuntimeError(f"test replay: recorded mask of {len(mask)} records, asked for {n}")
        at = int(os.environ.get(INSERT_ENV, n - 1))
        return np.insert(mask, at, first and p > 0)

    def state(self) -> dict[str, Any]:
        return {"calls": self.calls, "masks": self.masks}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.calls, self.masks = int(state["calls"]), int(state["masks"])


def held(name: str, value: str) -> str:
    """``value`` in run 1 (recorded), run 1's value in run 2; ``value`` when the replay is off."""
    on = active()
    if on is None:
        return value
    mode, folder = on
    f = folder / f"{_run_id()}-{name}.json"
    if mode == "record":
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
        return value
    return json.loads(f.read_text())
