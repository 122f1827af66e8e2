"""One privacy ledger per sensitive dataset: every release made from the same data, composed.

A run's ``ledger.json`` says what *that* release cost. But DP-FETA and DPDM of one ``dvc repro``, and
every ``dvc exp run``, are all computed from the same sensitive images, and an adversary who sees
all of them learns as much as their composition allows. So every stage that queries the data
appends a *release record* here, and :func:`total` composes every private release of a dataset.

Records are private bookkeeping of the data holder and live outside git and DVC, in
``<repository>/.easyhard/spend/`` (``EASYHARD_SPEND_DIR`` overrides it): ``dvc exp`` never rewinds
them, and DVC's run-cache, which restores an earlier output without querying the data again,
correctly adds no record. Experiments that DVC runs in a temporary copy
(``.dvc/tmp/exps/...``) write into the original repository's folder.

A record holds the mechanisms the stage *newly* ran (the central images at the central stage, DP-SGD
at fine-tuning), so a cached earlier mechanism is never counted twice. The dataset is identified by
a *keyed* fingerprint, HMAC-SHA256 of the training images and labels under a random local key
(``key`` in that folder): a plain hash would let anyone who knows all but one record test which
candidate completes the set, a membership oracle; the keyed one reveals nothing without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from easyhard.io import write_json
from easyhard.privacy.accounting import Mechanism, compose_epsilon

ENV_DIR = "EASYHARD_SPEND_DIR"
_DVC_TEMP = (".dvc", "tmp", "exps")


def spend_dir(root: str | Path) -> Path:
    """``<root>/.easyhard/spend``, or ``$EASYHARD_SPEND_DIR``; inside a DVC temporary experiment
    copy (``<repo>/.dvc/tmp/exps/...``), the original repository's folder."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    root = Path(root).resolve()
    parts = root.parts
    for i in range(len(parts) - len(_DVC_TEMP) + 1):
        if parts[i : i + len(_DVC_TEMP)] == _DVC_TEMP:
            root = Path(*parts[:i])
            break
    return root / ".easyhard" / "spend"


def _key(folder: Path) -> bytes:
    """The local fingerprint key (32 random bytes, created once, readable by the owner only)."""
    path = folder / "key"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    return path.read_bytes()


def fingerprint(x: np.ndarray, y: np.ndarray, folder: str | Path) -> str:
    """Keyed fingerprint of a sensitive dataset (images quantised to uint8, and labels)."""
    x8 = x if x.dtype == np.uint8 else np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    h = hmac.new(_key(Path(folder)), digestmod=hashlib.sha256)
    h.update(repr((x8.shape, y.shape)).encode())
    h.update(np.ascontiguousarray(x8).tobytes())
    h.update(np.ascontiguousarray(y.astype(np.int64)).tobytes())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Release:
    """Mechanisms one stage ran on one dataset, and whether its randomness was secret."""

    dataset: str
    method: str
    stage: str
    mechanisms: tuple[Mechanism, ...]
    private: bool
    id: str
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "method": self.method,
            "stage": self.stage,
            "mechanisms": [m.to_dict() for m in self.mechanisms],
            "private": self.private,
            "id": self.id,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Release:
        return cls(
            dataset=str(d["dataset"]),
            method=str(d["method"]),
            stage=str(d["stage"]),
            mechanisms=tuple(Mechanism.from_dict(m) for m in d["mechanisms"]),
            private=bool(d["private"]),
            id=str(d["id"]),
            time=float(d["time"]),
        )


def record(
    folder: str | Path,
    *,
    dataset: str,
    method: str,
    stage: str,
    mechanisms: Sequence[Mechanism],
    private: bool,
) -> Release:
    """Append one release (atomically, one file per release, so concurrent stages never clash)."""
    rel = Release(
        dataset=dataset,
        method=method,
        stage=stage,
        mechanisms=tuple(mechanisms),
        private=private,
        id=uuid.uuid4().hex,
        time=time.time(),
    )
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(rel.time))
    write_json(Path(folder) / f"{stamp}-{rel.id[:12]}.json", rel.to_dict())
    return rel


def releases(folder: str | Path, dataset: str | None = None) -> list[Release]:
    """Every recorded release (of ``dataset`` if given), oldest first."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        rel = Release.from_dict(json.loads(path.read_text()))
        if dataset is None or rel.dataset == dataset:
            out.append(rel)
    return sorted(out, key=lambda r: r.time)


@dataclass(frozen=True)
class Total:
    """The composition of every private release of a dataset, and how many were not private."""

    dataset: str | None
    epsilon: float  # inf when a non-private (seeded) release was made from the data
    epsilon_private: float  # the composition of the private releases alone
    delta: float
    accountant: str
    releases: int
    non_private: int
    mechanisms: tuple[Mechanism, ...]


def total(
    folder: str | Path, *, delta: float, accountant: str = "prv", dataset: str | None = None
) -> Total:
    """Compose the mechanisms of every release of ``dataset`` (every dataset if None) at ``delta``.

    A seeded release's noise can be replayed from the public seed, so it protects nothing: if one
    was made from the data, the dataset's ``epsilon`` is ``inf`` (``epsilon_private`` still gives
    the composition of the private ones).
    """
    rels = releases(folder, dataset)
    mechs = tuple(m for r in rels if r.private for m in r.mechanisms)
    eps = compose_epsilon(list(mechs), delta, accountant)
    bad = sum(1 for r in rels if not r.private)
    return Total(
        dataset=dataset,
        epsilon=float("inf") if bad else eps,
        epsilon_private=eps,
        delta=delta,
        accountant=accountant,
        releases=len(rels),
        non_private=bad,
        mechanisms=mechs,
    )
