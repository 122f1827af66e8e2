"""The data owner's per-record view of a source's spend (private zone: the owner's terminal only).

For each record of the source, the composition of the private releases that included it, and the
maximum over records. Unlike the published total (:func:`easyhard.privacy.spend.total`) it is a
function of which records each release used, so it must never be published: it tells, for
instance, that records added to the source later have spent less than the oldest ones.

Records are matched across releases by their keyed ids (:func:`easyhard.privacy.spend.record_ids`)
and grouped by what they spent: each group is a distinct multiset of mechanisms (the steps of each
(noise, rate) pair summed over the releases that included its records), composed once. Composition
never gets cheaper by adding mechanisms, so the maximum needs only the maximal groups (no other
group has at least their steps in every pair); the ``detail`` largest of the others are composed
too, for the table, and the rest are bounded by the maximum. The grouping is a few numpy passes
(a bit per split for each record, one sort of the signatures); 300,000 records and 200 releases
take about a second, the compositions the rest (benchmarks/spend_total.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from easyhard.privacy import spend
from easyhard.privacy.accounting import Mechanism, compose_epsilon

#: The view's default accountant: dp-accounting's PLD, an upper bound within ~1% of PRV at a
#: fraction of its time (one composition of 200 releases: ~0.5 s against ~13 s on 2 cores).
VIEW_ACCOUNTANT = "pld"
#: Signatures unpacked at once (memory: CHUNK x splits x 8 bytes).
CHUNK = 32_768


@dataclass(frozen=True)
class Group:
    """Records that spent the same: ``releases`` private releases included them, composing to
    ``epsilon`` (None: not composed, at most the maximum); ``unbounded``: a published non-private
    use included them; ``kept_private``: non-private uses kept in the private zone did."""

    records: int
    releases: int
    mechanisms: tuple[Mechanism, ...]
    epsilon: float | None
    unbounded: bool
    kept_private: int


@dataclass(frozen=True)
class PerRecord:
    """The per-record view: ``epsilon`` is the maximum over the ``records`` records."""

    source: str
    epsilon: float
    records: int
    groups: tuple[Group, ...]  # composed groups first, most spent first
    delta: float
    accountant: str


def _columns(uses: Sequence[spend.Use]) -> tuple[list[tuple[float, float]], list[str]]:
    """The (noise, rate) pairs of the private releases, and the split digests, in a fixed order."""
    pairs = sorted(
        {(m.noise_multiplier, m.sample_rate) for u in uses if u.private for m in u.mechanisms}
    )
    return pairs, sorted({u.records for u in uses})


def spent_per_split(uses: Sequence[spend.Use]) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Per split digest (rows, sorted): the steps of every (noise, rate) pair of its private
    releases, then three counts: private releases, published non-private uses, kept-private ones."""
    pairs, digests = _columns(uses)
    col = {p: i for i, p in enumerate(pairs)}
    row = {d: i for i, d in enumerate(digests)}
    c = np.zeros((len(digests), len(pairs) + 3), dtype=np.int64)
    for u in uses:
        r = row[u.records]
        if u.private:
            for m in u.mechanisms:
                c[r, col[(m.noise_multiplier, m.sample_rate)]] += m.steps
            c[r, -3] += 1
        else:
            c[r, -2 if u.published else -1] += 1
    return pairs, c


def _union(sets: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted union of sorted id sets: a stable sort (timsort) merges the sorted runs."""
    ids = np.concatenate([np.zeros(0, np.uint64), *sets])
    ids.sort(kind="stable")
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids


def signatures(sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Which splits hold each record, as bits (one uint64 word per 64 splits), over the distinct
    records of the union of ``sets``: the distinct signatures (rows) and how many records have each.
    One pass per split sets its bit; the grouping is one sort of the signatures."""
    ids = _union(sets)
    sig = np.zeros((len(ids), max(1, -(-len(sets) // 64))), dtype=np.uint64)
    for s, members in enumerate(sets):
        sig[np.searchsorted(ids, members), s // 64] |= np.uint64(1) << np.uint64(s % 64)
    if sig.shape[1] == 1:
        rows, counts = np.unique(sig[:, 0], return_counts=True)
        return rows[:, None], counts
    return np.unique(sig, axis=0, return_counts=True)


def spent_per_group(
    sets: Sequence[np.ndarray], per_split: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``per_split`` summed over the splits that hold each record, for the distinct sums
    (rows) and how many records have each."""
    sig, counts = signatures(sets)
    bit = np.arange(len(sets))
    spent = np.zeros((len(sig), per_split.shape[1]), dtype=np.int64)
    for i in range(0, len(sig), CHUNK):  # bits unpacked a chunk at a time: bounded memory
        held = (sig[i : i + CHUNK, bit // 64] >> (bit % 64).astype(np.uint64)) & np.uint64(1)
        spent[i : i + CHUNK] = held.astype(np.int64) @ per_split
    groups, inverse = np.unique(spent, axis=0, return_inverse=True)
    return groups, np.bincount(inverse.ravel(), weights=counts, minlength=len(groups)).astype(int)


def maximal(rows: np.ndarray) -> list[int]:
    """Indices of rows that no other row dominates (>= in every column); of equal rows, one."""
    left = np.arange(len(rows))
    front = []
    while len(left):
        best = left[np.argmax(rows[left].sum(axis=1))]
        front.append(int(best))
        left = left[~(rows[left] <= rows[best]).all(axis=1)]
    return front


def view(
    uses: Sequence[spend.Use],
    sets: Sequence[np.ndarray],
    *,
    delta: float,
    accountant: str,
    detail: int = 10,
) -> PerRecord:
    """The per-record view of ``uses``; ``sets[i]`` is the id set of the i-th split digest in
    sorted order (:func:`spent_per_split`)."""
    pairs, per_split = spent_per_split(uses)
    groups, counts = spent_per_group(sets, per_split)
    steps = groups[:, : len(pairs)]
    bounded = np.flatnonzero(groups[:, -2] == 0)
    chosen = {int(bounded[i]) for i in maximal(steps[bounded])} if len(bounded) else set()
    chosen |= {int(i) for i in bounded[np.argsort(-counts[bounded], kind="stable")][:detail]}
    out = []
    for g, row in enumerate(groups):
        mechs = tuple(
            Mechanism(f"m{j}", s, q, int(row[j])) for j, (s, q) in enumerate(pairs) if row[j]
        )
        eps = compose_epsilon(mechs, delta, accountant) if g in chosen else None
        out.append(
            Group(
                records=int(counts[g]),
                releases=int(row[-3]),
                mechanisms=mechs,
                epsilon=float("inf") if row[-2] else eps,
                unbounded=bool(row[-2]),
                kept_private=int(row[-1]),
            )
        )
    out.sort(key=lambda g: (g.epsilon is None, -(g.epsilon or 0.0), -g.records))
    worst = max((g.epsilon for g in out if g.epsilon is not None), default=0.0)
    return PerRecord(
        source=uses[0].source if uses else "",
        epsilon=worst,
        records=int(counts.sum()),
        groups=tuple(out),
        delta=delta,
        accountant=accountant,
    )


def per_record(
    store: str | Path, source: str, *, delta: float, accountant: str, detail: int = 10
) -> PerRecord:
    """The per-record view of every use of ``source`` recorded in ``store``."""
    found = spend.uses(store, source)
    _, digests = _columns(found)
    sets = [spend.load_records(store, source, d) for d in digests]
    return view(found, sets, delta=delta, accountant=accountant, detail=detail)


def table(view: PerRecord) -> list[str]:
    """The view as text lines for the owner's terminal (composed groups, most spent first)."""
    out = [
        "  per-record view (the owner's only: depends on the data, never publish it): "
        f"{view.records} records in {len(view.groups)} groups",
        f"    {'records':>8} {'releases':>8} {'epsilon':>9}  note",
    ]
    for g in view.groups:
        if g.epsilon is None:
            continue
        notes = ["a published non-private use"] if g.unbounded else []
        notes += [f"{g.kept_private} non-private use(s) kept private"] if g.kept_private else []
        out.append(f"    {g.records:>8} {g.releases:>8} {g.epsilon:>9.4f}  {'; '.join(notes)}")
    rest = [g for g in view.groups if g.epsilon is None]
    if rest:
        n = sum(g.records for g in rest)
        out.append(f"    {n:>8} records in {len(rest)} other groups: at most the maximum")
    out.append(f"  maximum over records: {view.epsilon:.4f}")
    return out
