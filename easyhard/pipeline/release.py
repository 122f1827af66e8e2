"""What every stage that queries the sensitive data does around its mechanism.

Before the query: compare the data with the declared public size (a private warning, never a halt).
For the query: a noise source that is secret unless seeded on purpose. After it: record the use in
the data source's spend log (per user, shared by every clone); the published total of the source
reads only that log.
"""

from __future__ import annotations

from easyhard.config import Params
from easyhard.config.choices import BUNDLED_DATASETS
from easyhard.data import load_npz
from easyhard.layout import Layout, public_layout
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


def layout(params: Params, paths: Paths) -> Layout:
    """The public layout (classes, shape) the warm-up planner uses: the named dataset's, or the
    held-out split's (declared public), never the training split's."""
    return public_layout(params.data, paths.test)


def plan(params: Params, method: Method, layout: Layout) -> Plan:
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
        warmups=method.warmups(params, layout),
    )


def is_private(params: Params) -> bool:
    """Whether this run's noise is secret: ``privacy.randomness: secure`` and no test replay (which
    writes every draw to disk)."""
    return params.privacy.randomness == "secure" and replay.active() is None


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
    if params.privacy.randomness == "secure" and world.size > 1:
        key = world.broadcast_bytes(SecureSource.shared_key() if world.is_main else None)
    source = noise_source(params.privacy.randomness, params.seed, stream, key)
    test_replay = replay.active()
    if test_replay is not None:  # tests/test_post_processing.py only (never params.yaml)
        return replay.ReplaySource(source, *test_replay, stream)
    return source


def data_source(params: Params, paths: Paths) -> spend.Source:
    """The data source of this run, from its configuration only: ``data.name`` and, unless the
    dataset is bundled with a package, the resolved ``data.root``. Seed, test fraction,
    ``max_per_class``, ``image_size``, split and label attribute only choose or label a split of
    the same records, so they are not part of it."""
    name = params.data.name
    if name in BUNDLED_DATASETS:  # data.root is not read: editing it reruns no release
        return spend.Source(name=name, root=None)
    return spend.Source(name=name, root=str((paths.root / params.data.root).resolve()))


def _record(
    params: Params,
    paths: Paths,
    method: str,
    stage: str,
    mechanisms: list[Mechanism],
    *,
    private: bool,
    published: bool,
    reason: str,
) -> spend.Use:
    """Record one use of the training split in the per-user store (:mod:`easyhard.privacy.spend`)
    with its keyed record ids; the held-out split's ids join the source's fingerprint."""
    store = spend.store_dir()
    key = spend.store_key(store)
    train_ids = spend.record_ids(load_training(paths).x, key)
    seen = [train_ids] + (
        [spend.record_ids(load_npz(paths.test).x, key)] if paths.test.is_file() else []
    )
    return spend.record(
        store,
        data_source(params, paths),
        method=method,
        stage=stage,
        mechanisms=mechanisms,
        private=private,
        published=published,
        reason=reason,
        train_ids=train_ids,
        seen_ids=seen,
    )


def record_release(
    params: Params, paths: Paths, method: str, stage: str, mechanisms: list[Mechanism]
) -> None:
    """Add this stage's DP mechanisms to its data source's spend log; a seeded release (replayable
    noise, published) is recorded as a published non-private use."""
    private = is_private(params)
    _record(
        params,
        paths,
        method,
        stage,
        mechanisms,
        private=private,
        published=True,
        reason="" if private else spend.SEEDED,
    )


def record_nonprivate_use(
    params: Params, paths: Paths, method: str, stage: str, published: bool, reason: str
) -> None:
    """Record a use of the training records without DP (exact statistics, plain SGD, a membership
    diagnostic). ``published``: its result left the private zone, which makes the source's
    published total infinite; otherwise the use is only listed for the owner."""
    _record(params, paths, method, stage, [], private=False, published=published, reason=reason)


def dataset_total(params: Params, paths: Paths) -> spend.Total:
    """The published total of this run's data source: every private release recorded for it,
    composed. It reads the list of releases only, never the data, so it reveals nothing about
    which records any release used (the owner's per-record view: ``privacy total --per-record``)."""
    return spend.total(
        spend.store_dir(),
        data_source(params, paths).id,
        delta=params.privacy.delta,
        accountant=params.privacy.accountant,
    )


def training_fingerprint(params: Params, paths: Paths) -> str:
    """Keyed (store key) HMAC-SHA256 hex digest of the training split exactly as stored: a value a
    public file can hold for DVC to depend on, in place of the training file's bytes. Without the
    key it is indistinguishable from random: it reveals only whether the data changed."""
    train = load_training(paths)
    digest = spend.split_fingerprint(
        train.x, train.y, train.classes, spend.store_key(spend.store_dir())
    )
    return replay.held("training_fingerprint", digest)


def finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded epsilon (a non-private release was made) becomes null."""
    return value if value != float("inf") else None
