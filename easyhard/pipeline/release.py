"""What every stage that queries the sensitive data does around its mechanism.

Before the query: check the data against the declared public size. For the query: a noise source
that is secret unless seeded on purpose. After it: add the mechanisms to the dataset's spend log.
"""

from __future__ import annotations

from easyhard.config import Params
from easyhard.data import DataError, load_npz
from easyhard.pipeline.methods import Method
from easyhard.pipeline.paths import Paths
from easyhard.privacy import Ledger, Mechanism, spend
from easyhard.privacy.plan import Plan, plan_release
from easyhard.privacy.randomness import NoiseSource, SecureSource, noise_source
from easyhard.world import SINGLE_PROCESS, World

#: Title prefix of figures that show un-noised statistics of the sensitive data.
NOT_PRIVATE = "not private, do not publish"


def check_dataset_size(params: Params, n: int) -> None:
    """Stop before any query when the data's size N is far from the declared public size.

    Every normaliser of a release uses the declared ``privacy.dataset_size``, never ``len`` of the
    data; this check only guards against a wrong declaration (which would mis-scale the releases,
    never break the guarantee). It reveals one bit about N (inside the tolerance or not) to whoever
    sees that the run stopped.
    """
    declared, tol = params.privacy.dataset_size, params.privacy.size_tolerance
    if abs(n - declared) > tol * declared:
        raise DataError(
            f"the sensitive training set has {n} records but privacy.dataset_size={declared} "
            f"(tolerance {tol:g}): declare the public size of this dataset in params.yaml"
        )


def plan(params: Params, method: Method) -> Plan:
    """The whole release of ``method`` (warm-ups, then DP-SGD calibrated to what remains), planned
    from public values. Every stage that queries the data calls it first, so an impossible budget
    split is refused in one line before any query."""
    return plan_release(
        epsilon=params.privacy.epsilon,
        delta=params.privacy.delta,
        accountant=params.privacy.accountant,
        dataset_size=params.privacy.dataset_size,
        sample_rate=params.finetune.sample_rate,
        epochs=params.finetune.epochs,
        warmups=method.warmups(params),
    )


def is_private(params: Params) -> bool:
    """Whether this run's noise is secret (``privacy.randomness: secure``)."""
    return params.privacy.randomness == "secure"


def new_ledger(params: Params) -> Ledger:
    """An empty ledger for one release at the target (epsilon, delta)."""
    return Ledger(
        delta=params.privacy.delta,
        target_epsilon=params.privacy.epsilon,
        accountant=params.privacy.accountant,
        private=is_private(params),
    )


def noise_for(params: Params, stream: str, world: World = SINGLE_PROCESS) -> NoiseSource:
    """The noise source of a mechanism: secret (``privacy.randomness: secure``) or seeded replay.

    Data-parallel ranks share one secret key, sent from rank 0 in memory, so they add the same
    noise and draw the same Poisson masks."""
    key = None
    if is_private(params) and world.size > 1:
        key = world.broadcast_bytes(SecureSource.shared_key() if world.is_main else None)
    return noise_source(params.privacy.randomness, params.seed, stream, key)


def record_release(
    params: Params, paths: Paths, method: str, stage: str, mechanisms: list[Mechanism]
) -> None:
    """Add this stage's mechanisms to the dataset's spend log (:mod:`easyhard.privacy.spend`)."""
    train = load_npz(paths.train)
    folder = spend.spend_dir(paths.root)
    spend.record(
        folder,
        dataset=spend.fingerprint(train.x, train.y, folder),
        method=method,
        stage=stage,
        mechanisms=mechanisms,
        private=is_private(params),
    )


def dataset_total(params: Params, paths: Paths) -> spend.Total:
    """Everything released so far from this run's sensitive training set, composed."""
    train = load_npz(paths.train)
    folder = spend.spend_dir(paths.root)
    return spend.total(
        folder,
        delta=params.privacy.delta,
        accountant=params.privacy.accountant,
        dataset=spend.fingerprint(train.x, train.y, folder),
    )


def finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded epsilon (a non-private release was made) becomes null."""
    return value if value != float("inf") else None
