"""The owner's per-record view against a record-by-record composition, and its grouping."""

from __future__ import annotations

import numpy as np
import pytest

from easyhard.privacy import Mechanism, compose_epsilon, spend
from easyhard.privacy.per_record import maximal, spent_per_group, view

DELTA = 1e-5
MECHS = [
    (Mechanism("central_images_mean", 5.0, 0.2, 20), Mechanism("dp_sgd", 1.7, 0.1, 200)),
    (Mechanism("dp_sgd", 1.7, 0.1, 200),),
    (Mechanism("dp_sgd", 1.2, 0.05, 100),),
]


def _use(i: int, digest: str, mechanisms=(), private=True, published=True) -> spend.Use:
    return spend.Use(
        source="s",
        method="m",
        stage=str(i),
        mechanisms=tuple(mechanisms),
        private=private,
        published=published,
        reason="" if private else "exact statistics",
        records=digest,
        fingerprint="f",
        id=f"{i:032x}",
        time=float(i),
    )


def test_view_is_the_maximum_of_each_records_own_composition():
    """Random overlapping splits (records added over time): every group's epsilon is the
    composition of the releases that included its records, the maximum is the worst record's."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(60, dtype=np.uint64) * np.uint64(2**57 + 12345))
    sets = [np.sort(ids[:40]), np.sort(ids[10:50]), np.sort(ids[rng.random(60) < 0.5])]
    digests = [f"{i}" for i in range(3)]  # sorted order = the order of sets
    uses = [_use(i, d, MECHS[i]) for i, d in enumerate(digests)]
    uses.append(_use(3, "1", MECHS[2]))  # a second release on split 1
    got = view(uses, sets, delta=DELTA, accountant="rdp", detail=100)

    per_id: dict[int, list[Mechanism]] = {int(i): [] for i in ids}
    for u in uses:
        for r in sets[int(u.records)]:
            per_id[int(r)] += u.mechanisms
    cache: dict[tuple[Mechanism, ...], float] = {}
    for m in per_id.values():
        if tuple(m) not in cache:
            cache[tuple(m)] = compose_epsilon(m, DELTA, "rdp")
    want = [cache[tuple(m)] for m in per_id.values() if m]  # an unused record is not in the view
    used = len(np.unique(np.concatenate(sets)))
    assert got.records == used == len(want) and sum(g.records for g in got.groups) == used
    assert got.epsilon == pytest.approx(max(want), rel=1e-9)
    expanded = sorted(g.epsilon for g in got.groups for _ in range(g.records))
    assert expanded == pytest.approx(sorted(want), rel=1e-9)  # every record's own composition
    assert min(want) < max(want)  # records added later (only in the last splits) spent less


def test_only_maximal_groups_and_the_largest_are_composed():
    sets = [np.arange(0, 100, dtype=np.uint64), np.arange(90, 100, dtype=np.uint64)]
    uses = [_use(0, "0", MECHS[1]), _use(1, "1", MECHS[2])]
    got = view(uses, sets, delta=DELTA, accountant="rdp", detail=0)
    assert [(g.records, g.releases, g.epsilon is None) for g in got.groups] == [
        (10, 2, False),
        (90, 1, True),  # dominated and not among the 0 largest: bounded by the maximum
    ]
    assert got.epsilon == compose_epsilon(MECHS[1] + MECHS[2], DELTA, "rdp")


def test_published_non_private_use_is_unbounded_only_for_its_records():
    sets = [np.arange(0, 10, dtype=np.uint64), np.arange(5, 10, dtype=np.uint64)]
    uses = [_use(0, "0", MECHS[1]), _use(1, "1", private=False, published=True)]
    got = view(uses, sets, delta=DELTA, accountant="rdp")
    assert got.epsilon == float("inf")
    assert [(g.records, g.unbounded) for g in got.groups] == [(5, True), (5, False)]
    assert got.groups[1].epsilon == compose_epsilon(MECHS[1], DELTA, "rdp")


def test_maximal_rows():
    rows = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 0]])
    assert sorted(maximal(rows)) == [2, 3]
    assert maximal(np.zeros((0, 2), dtype=np.int64)) == []


@pytest.mark.parametrize("splits", [3, 70, 130])  # one, two and three 64-bit words
def test_spent_per_group_against_a_loop(splits):
    rng = np.random.default_rng(splits)
    sets = [np.flatnonzero(rng.random(50) < 0.6).astype(np.uint64) for _ in range(splits)]
    per_split = rng.integers(0, 5, size=(splits, 4))
    groups, counts = spent_per_group(sets, per_split)
    want: dict[int, np.ndarray] = {}
    for s, members in enumerate(sets):
        for r in members.tolist():
            want[r] = want.get(r, 0) + per_split[s]
    rows, n = np.unique(np.array(list(want.values())), axis=0, return_counts=True)
    assert groups.tolist() == rows.tolist() and counts.tolist() == n.tolist()
