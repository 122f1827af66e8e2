"""What every stage that queries the sensitive data does around its mechanism.

Before the query: compare the data with the declared public size (a private warning, never a halt).
For the query: a noise source that is secret unless seeded on purpose. After it: add the mechanisms
to the data source's spend log.
"""

from __future__ import annotations

from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.pipeline.methods import Method
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.zones import load_training
from easyhard.privacy import Ledger, Mechanism, replay, spend
from easyhard.privacy.plan import Plan, plan_release
from easyhard.privacy.randomness import NoiseSource, SecureSource, noise_source
from easyhard.world import SINGLE_PROCESS, World

#: Title prefix of figures that show un-noised statistics of the sensitive data.
NOT_PRIVATE = "not private, do not publish"


def size_warning(params: Params, n: int) -> str | None:
    """A warning (for the private zone only) when the data's size N is far from the declared one.

    Every normaliser of a release uses the declared ``privacy.dataset_size``, never ``len`` of the
    data, so a wrong declaration mis-scales the releases but never breaks the guarantee; the run
    goes on either way (a run that stops for one dataset and not for its neighbour is itself an
    unaccounted release). The caller shows the warning only in its private output."""
    declared, tol = params.privacy.dataset_size, params.privacy.size_tolerance
    if abs(n - declared) > tol * declared:
        return (
            f"warning: the sensitive training set has {n} records but privacy.dataset_size="
            f"{declared} (tolerance {tol:g}): the releases are scaled for the declared size"
        )
    return None


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
    source = noise_source(params.privacy.randomness, params.seed, stream, key)
    test_replay = replay.active()
    if test_replay is not None:  # tests/test_post_processing.py only (never params.yaml)
        if is_private(params):
            raise ValueError("the test replay of releases needs privacy.randomness: seeded")
        return replay.ReplaySource(source, *test_replay, stream)
    return source


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


def training_fingerprint(params: Params, paths: Paths) -> str:
    """A keyed fingerprint of the training split (the spend log's secret key): what the stages that
    read the sensitive data depend on in ``dvc.lock``, instead of the file's bytes. Without the key
    it is indistinguishable from random, so it reveals nothing but whether the data changed."""
    train = load_training(paths)
    folder = spend.spend_dir(paths.root)
    return replay.held("training_fingerprint", spend.fingerprint(train.x, train.y, folder))
