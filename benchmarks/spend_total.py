"""Spend-store benchmark: the owner's per-record total over a large, growing source.

Builds a spend store in a temporary folder (or ``--store``) for one source of ``--records``
records that grows over time: ``--experiments`` experiments, each on a random 80% split (its own
seed) of the records the source held then (half of them at the start, all at the end), alternating
two configurations (less and more noise), each making
``--releases / --experiments`` releases (central images, frequency embedding, DP-SGD, ...). Then
times, from the store as ``python -m easyhard.privacy total --per-record`` reads it:

* the per-record total (:func:`easyhard.privacy.per_record.per_record`: load the id sets, group
  the records by what they spent, compose the maximal groups and the ``--detail`` largest, with
  ``--view-accountant``, by default PLD as in ``privacy total --per-record``);
* the published total (:func:`easyhard.privacy.spend.total`: every release composed);
* keyed record ids of one training split of ``--records`` images of 28x28 (what each release
  stage adds, :func:`easyhard.privacy.spend.record_ids`).

The last line is ``easyhard per_record_total_s=X records=N releases=R``.

    python benchmarks/spend_total.py                       # 300,000 records x 200 releases
    python benchmarks/spend_total.py --records 20000 --releases 20 --experiments 4  # quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from easyhard.privacy import ACCOUNTANTS, Mechanism, spend
from easyhard.privacy.per_record import VIEW_ACCOUNTANT, per_record, table

DELTA = 1e-5
#: Two configurations' releases: (name, noise multiplier, sample rate, steps), less and more noise.
CONFIGS = (
    (
        ("central_images_mean", 5.0, 0.2, 20),
        ("frequency_mmd", 8.0, 0.2, 1),
        ("dp_sgd", 1.74, 0.1, 200),
    ),
    (
        ("central_images_mean", 40.0, 0.2, 20),
        ("frequency_mmd", 60.0, 0.2, 1),
        ("dp_sgd", 12.1, 0.1, 200),
    ),
)


def build(store: Path, records: int, releases: int, experiments: int, seed: int = 0) -> str:
    """Record ``releases`` releases on ``experiments`` growing splits; return the source id."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(rng.integers(0, 2**63, size=2 * records, dtype=np.uint64))
    ids = np.unique(ids)[:records]  # distinct; ids[:n] is the source when it had n records
    rng.shuffle(ids)
    source = spend.Source("folder", str(store / "data"))
    per = releases // experiments
    for e in range(experiments):
        held = records // 2 + (records - records // 2) * e // max(experiments - 1, 1)
        train = ids[:held][rng.random(held) < 0.8]
        config = CONFIGS[e % 2]
        for r in range(per):
            name, sigma, q, steps = config[r % len(config)]
            spend.record(
                store,
                source,
                method=f"exp{e}",
                stage=f"{name}_{r}",
                mechanisms=[Mechanism(name, sigma, q, steps)],
                private=True,
                published=True,
                reason="",
                train_ids=train,
                seen_ids=[ids[:held]],
            )
    return source.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--releases", type=int, default=200)
    parser.add_argument("--experiments", type=int, default=40)
    parser.add_argument(
        "--accountant", default="prv", choices=ACCOUNTANTS, help="published total (params.yaml's)"
    )
    parser.add_argument(
        "--view-accountant", default=VIEW_ACCOUNTANT, choices=ACCOUNTANTS, help="per-record view"
    )
    parser.add_argument("--detail", type=int, default=10, help="largest groups composed too")
    parser.add_argument(
        "--store", type=Path, default=None, help="default: a temporary folder (kept: reused)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp)
        t = time.perf_counter()
        source = spend.Source("folder", str(store / "data")).id
        if not spend.uses(store, source):  # a --store built before is reused
            build(store, args.records, args.releases, args.experiments)
            print(f"store built: {args.releases} releases in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        tot = spend.total(store, source, delta=DELTA, accountant=args.accountant)
        published_s = time.perf_counter() - t
        print(f"published total: eps={tot.epsilon:.4f} over {tot.releases} in {published_s:.2f} s")

        t = time.perf_counter()
        view = per_record(
            store, source, delta=DELTA, accountant=args.view_accountant, detail=args.detail
        )
        per_record_s = time.perf_counter() - t
        print("\n".join(table(view)))
        composed = sum(g.epsilon is not None for g in view.groups)
        print(
            f"per-record total: {per_record_s:.2f} s ({composed} groups composed, {args.view_accountant})"
        )

        x = np.random.default_rng(1).integers(0, 256, (args.records, 1, 28, 28), dtype=np.uint8)
        t = time.perf_counter()
        spend.record_ids(x, spend.store_key(store))
        print(f"record ids of {args.records} images: {time.perf_counter() - t:.2f} s")
    print(
        f"easyhard per_record_total_s={per_record_s:.2f} records={args.records} "
        f"releases={tot.releases}"
    )


if __name__ == "__main__":
    main()
