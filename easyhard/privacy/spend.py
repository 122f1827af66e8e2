"""One spend log per data source: every use of its records, whatever split, seed, clone or run.

A run's ``ledger.json`` says what *that* release cost. But every release of every run, experiment,
clone and notebook that draws its training split from the same source (a new seed, test fraction,
``max_per_class`` or ``image_size`` only chooses another split of the same people's records) leaks
about those records, and an adversary who sees all of them learns as much as their composition
allows. So every stage that uses the records appends a *use* here, and :func:`total` composes them.

**Where.** One store per user, shared by every clone and experiment on the machine:
``$EASYHARD_SPEND_DIR``, else ``platformdirs.user_data_dir("easyhard")/spend`` (platformdirs
comes with DVC), else ``~/.local/share/easyhard/spend``. It is the data owner's private
bookkeeping, never in git or DVC::

    key                          32 secret random bytes (created once, atomically; never replaced)
    sources/<source id>/source.json          the source's identity (its configuration)
    sources/<source id>/uses/<time>-<id>.json one file per use, written by an atomic rename
    sources/<source id>/records/<digest>.npy the keyed per-record ids of one training split

**A source** is identified by its configuration (:class:`Source`), never by its contents, so an
edited record, a corrected label or a new split is the same source. Each use also stores a keyed
fingerprint of the records the run saw of the source as a whole (training and held-out together,
order-free), so the owner can see when the data changed.

**Published** (:func:`total`): the composition of the mechanisms of every private release of the
source, a function of the list of releases only (public: the runs' ledgers), which is what an
adversary who may know everything but the noise can compute too; it reveals nothing about which
records each release used. A non-private use whose result was published (a seeded release, the
non-private ceiling) makes it infinite; one that stayed in the private zone is only listed.
The per-record view of the owner is :mod:`easyhard.privacy.per_record`.

Keyed ids and fingerprints (HMAC-SHA256 under ``key``): a plain hash of a record would let anyone
who sees it test candidate records, a membership oracle; the keyed one reveals nothing without the
key.
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

from easyhard.io import atomic_path, create_once, write_json
from easyhard.privacy.accounting import Mechanism, compose_epsilon

ENV_DIR = "EASYHARD_SPEND_DIR"
KEY_BYTES = 32
#: The reason a seeded release is not private.
SEEDED = "seeded noise and masks: replayable from the public seed"


class SpendStoreError(RuntimeError):
    """The spend store cannot be trusted as it is (one line: what and where)."""


def store_dir() -> Path:
    """The per-user spend store: ``$EASYHARD_SPEND_DIR``, else the user data directory."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    try:
        from platformdirs import user_data_dir
    except ImportError:
        return Path.home() / ".local" / "share" / "easyhard" / "spend"
    return Path(user_data_dir("easyhard")) / "spend"


def _create_key(path: Path) -> None:
    """Create the key atomically (:func:`easyhard.io.create_once`): a reader never sees a partial
    key; of stages creating it at once, the first wins and every one uses its key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    create_once(path, os.urandom(KEY_BYTES))


def store_key(store: str | Path) -> bytes:
    """The store's secret key, created on first use. A key file of the wrong length (empty,
    truncated) is refused, never used or replaced: ids made with another key would not match."""
    path = Path(store) / "key"
    if not path.exists():
        _create_key(path)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise SpendStoreError(
            f"spend store key {path} has {len(key)} bytes, not {KEY_BYTES}: refusing to use or "
            "replace it (restore it from a copy of the store, or move the store aside)"
        )
    return key


@dataclass(frozen=True)
class Source:
    """A data source by its configuration: the dataset ``name`` and, when the dataset is read from
    the owner's files, the resolved ``root`` (None for data bundled with a package)."""

    name: str
    root: str | None

    @property
    def id(self) -> str:
        """``<name>-<12 hex>``: a plain hash of the (public) configuration."""
        text = json.dumps([self.name, self.root]).encode()
        return f"{self.name}-{hashlib.sha256(text).hexdigest()[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "root": self.root}


def _as_uint8(x: np.ndarray) -> np.ndarray:
    """Images quantised to uint8 (the stored float32 in [0, 1] -> 0..255), C-contiguous."""
    x8 = x if x.dtype == np.uint8 else np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(x8)


def record_ids(x: np.ndarray, key: bytes) -> np.ndarray:
    """Keyed id of each record: the first 8 bytes of HMAC-SHA256(key, its image), as uint64.

    The image alone, not its label: a corrected label is the same person's record. 64 bits make a
    collision among 10^6 records a 3e-8 chance (and a collision only overstates the view)."""
    x8 = _as_uint8(x).reshape(len(x), -1)
    tag = repr(x8.shape[1:]).encode()
    out = np.empty(len(x8), dtype=np.uint64)
    for i, row in enumerate(x8):
        out[i] = int.from_bytes(hmac.digest(key, tag + row.tobytes(), "sha256")[:8], "little")
    return out


def source_fingerprint(ids: Sequence[np.ndarray], key: bytes) -> str:
    """Keyed, order-free fingerprint of every record seen of a source (the union of ``ids``)."""
    union = np.unique(np.concatenate([np.asarray(i, dtype=np.uint64) for i in ids]))
    return hmac.new(key, b"source\0" + union.tobytes(), "sha256").hexdigest()[:32]


def split_fingerprint(x: np.ndarray, y: np.ndarray, classes: Sequence[str], key: bytes) -> str:
    """Keyed HMAC-SHA256 (hex) of one split exactly as stored: images, labels, class names."""
    h = hmac.new(key, b"split\0", "sha256")
    h.update(repr((x.dtype.str, x.shape, y.shape, tuple(classes))).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y.astype(np.int64)).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Use:
    """One use of a source's records by one stage: a DP release (``mechanisms``; ``private`` when
    its noise was secret) or a non-private use (no mechanisms). ``published``: its result left the
    private zone. ``reason``: why it is not private ('' for a private release). ``records``: the
    digest of its training split's id set; ``fingerprint``: of the source as the run saw it."""

    source: str
    method: str
    stage: str
    mechanisms: tuple[Mechanism, ...]
    private: bool
    published: bool
    reason: str
    records: str
    fingerprint: str
    id: str
    time: float

    @property
    def unbounded(self) -> bool:
        """A non-private use whose result was published: no guarantee at all."""
        return not self.private and self.published

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return d | {"mechanisms": [m.to_dict() for m in self.mechanisms]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Use:
        return cls(**(d | {"mechanisms": tuple(Mechanism.from_dict(m) for m in d["mechanisms"])}))


def _source_dir(store: Path, source: str) -> Path:
    return store / "sources" / source


def _write_source(folder: Path, source: Source) -> None:
    path = folder / "source.json"
    if not path.exists():
        write_json(path, source.to_dict())


def save_records(store: str | Path, source: str, ids: np.ndarray) -> str:
    """Store a split's id set once (content-addressed, atomic); return its digest."""
    ids = np.unique(np.asarray(ids, dtype=np.uint64))
    digest = hashlib.sha256(ids.tobytes()).hexdigest()[:32]
    path = _source_dir(Path(store), source) / "records" / f"{digest}.npy"
    if not path.exists():
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, ids)
    return digest


def load_records(store: str | Path, source: str, digest: str) -> np.ndarray:
    """The sorted id set stored under ``digest``."""
    return np.load(_source_dir(Path(store), source) / "records" / f"{digest}.npy")


def record(
    store: str | Path,
    source: Source,
    *,
    method: str,
    stage: str,
    mechanisms: Sequence[Mechanism],
    private: bool,
    published: bool,
    reason: str,
    train_ids: np.ndarray,
    seen_ids: Sequence[np.ndarray],
) -> Use:
    """Append one use: one new file per use, by an atomic rename, so concurrent stages never
    clash. ``train_ids``: the ids of the records it used; ``seen_ids``: every record of the source
    the run saw (for the fingerprint)."""
    if private and not mechanisms:
        raise ValueError("a private release needs its mechanisms")
    if not private and not reason:
        raise ValueError("a non-private use needs a reason")
    store = Path(store)
    key = store_key(store)
    folder = _source_dir(store, source.id)
    _write_source(folder, source)
    use = Use(
        source=source.id,
        method=method,
        stage=stage,
        mechanisms=tuple(mechanisms),
        private=private,
        published=published,
        reason=reason,
        records=save_records(store, source.id, train_ids),
        fingerprint=source_fingerprint(seen_ids, key),
        id=uuid.uuid4().hex,
        time=time.time(),
    )
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(use.time))
    write_json(folder / "uses" / f"{stamp}-{use.id[:12]}.json", use.to_dict())
    return use


def sources(store: str | Path) -> dict[str, Source]:
    """Every source with a record in the store, by id."""
    out = {}
    for path in sorted((Path(store) / "sources").glob("*/source.json")):
        d = json.loads(path.read_text())
        out[path.parent.name] = Source(name=d["name"], root=d["root"])
    return out


def uses(store: str | Path, source: str) -> list[Use]:
    """Every recorded use of ``source``, oldest first."""
    folder = _source_dir(Path(store), source) / "uses"
    found = [Use.from_dict(json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]
    return sorted(found, key=lambda u: (u.time, u.id))


def merged(mechanisms: Sequence[Mechanism]) -> list[Mechanism]:
    """The same composition with equal (noise, rate) pairs merged into one (their steps summed):
    exactly the same privacy loss, fewer terms for the accountant."""
    steps: dict[tuple[float, float], int] = {}
    for m in mechanisms:
        pair = (m.noise_multiplier, m.sample_rate)
        steps[pair] = steps.get(pair, 0) + m.steps
    return [Mechanism(f"m{i}", s, q, t) for i, ((s, q), t) in enumerate(sorted(steps.items()))]


@dataclass(frozen=True)
class Total:
    """The published total of a source: every private release composed (``epsilon_private``);
    ``epsilon`` is ``inf`` when a non-private use was published (``reasons`` says which)."""

    source: str
    epsilon: float
    epsilon_private: float
    delta: float
    accountant: str
    releases: int  # DP releases, private or seeded
    seeded: int  # DP releases whose noise was seeded (replayable): not private
    non_private: int  # non-private uses whose result was published (seeded releases included)
    kept_private: tuple[str, ...]  # non-private uses that stayed in the private zone
    reasons: tuple[str, ...]  # why epsilon is inf
    mechanisms: tuple[Mechanism, ...]


def _describe(use: Use) -> str:
    return f"{use.method}/{use.stage}: {use.reason}"


def total(store: str | Path, source: str, *, delta: float, accountant: str) -> Total:
    """Compose the mechanisms of every private release of ``source`` at ``delta``: a function of
    the list of releases only, never of which records they used."""
    found = uses(store, source)
    mechs = tuple(m for u in found if u.private for m in u.mechanisms)
    eps = compose_epsilon(merged(mechs), delta, accountant)
    unbounded = tuple(_describe(u) for u in found if u.unbounded)
    return Total(
        source=source,
        epsilon=float("inf") if unbounded else eps,
        epsilon_private=eps,
        delta=delta,
        accountant=accountant,
        releases=sum(1 for u in found if u.mechanisms),
        seeded=sum(1 for u in found if u.mechanisms and not u.private),
        non_private=len(unbounded),
        kept_private=tuple(_describe(u) for u in found if not u.private and not u.published),
        reasons=unbounded,
        mechanisms=mechs,
    )
