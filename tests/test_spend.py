"""One privacy total per data source (issue 20): whatever the split, seed, clone or concurrency.

References are recomputed independently with Google dp-accounting's PLD accountant; the per-record
view is checked against a record-by-record composition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from easyhard.config import Params, defaults
from easyhard.data import ImageSet, load_npz, save_npz, split
from easyhard.datasets import load_mnist_offline
from easyhard.pipeline import release
from easyhard.pipeline.paths import Paths
from easyhard.privacy import Mechanism, compose_epsilon, spend
from easyhard.privacy.per_record import per_record

ROOT = Path(__file__).resolve().parents[1]
DELTA = 1e-5
CENTRAL = Mechanism("central_images_mean", 5.0, 0.2, 20)
SGD0 = Mechanism("dp_sgd", 1.7, 0.1, 200)
SGD1 = Mechanism("dp_sgd", 1.5, 0.1, 300)


def _pld(mechanisms: list[Mechanism], delta: float = DELTA) -> float:
    """dp-accounting's PLD accountant on a fine grid: the independent reference."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    acc = PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4
    )
    for m in mechanisms:
        event = dp_accounting.GaussianDpEvent(m.noise_multiplier)
        if m.sample_rate < 1:
            event = dp_accounting.PoissonSampledDpEvent(m.sample_rate, event)
        acc.compose(event, m.steps)
    return float(acc.get_epsilon(delta))


@pytest.fixture(scope="module")
def mnist() -> ImageSet:
    return load_mnist_offline()


def _params(accountant: str = "prv", **data: object) -> Params:
    p = defaults()
    return replace(
        p,
        privacy=replace(p.privacy, accountant=accountant, randomness="secure"),
        data=replace(p.data, **data),
    )


def _clone(root: Path, ds: ImageSet, seed: int) -> Paths:
    """A repository clone whose prepare stage ran with ``seed``."""
    paths = Paths(root)
    train, test = split(ds, 0.2, seed)
    save_npz(paths.train, train)
    save_npz(paths.test, test)
    return paths


def _images(path: Path) -> set[bytes]:
    return {row.tobytes() for row in np.round(load_npz(path).x * 255).astype(np.uint8)}


def test_seed_0_and_1_splits_are_one_source_and_compose(tmp_path, mnist, spend_store):
    """(a) A release on the seed-0 split and one on the seed-1 split of the same source: the
    published total composes both; the per-record view composes both for the shared records and
    gives one release for the others."""
    params = _params()
    p0 = _clone(tmp_path / "seed0", mnist, 0)
    p1 = _clone(tmp_path / "seed1", mnist, 1)
    release.record_release(params, p0, "dpfeta", "central", [CENTRAL])
    release.record_release(params, p0, "dpfeta", "finetune", [SGD0])
    release.record_release(replace(params, seed=1), p1, "dpdm", "finetune", [SGD1])
    tot = release.dataset_total(params, p0)
    assert tot == release.dataset_total(params, p1)  # one source: the same total from both
    assert tot.releases == 3 and tot.non_private == 0
    assert tot.epsilon == pytest.approx(_pld([CENTRAL, SGD0, SGD1]), rel=0.01)

    shared = _images(p0.train) & _images(p1.train)
    only0, only1 = _images(p0.train) - shared, _images(p1.train) - shared
    assert 3000 < len(shared) < 4000  # the two splits share most of their records
    view = per_record(spend_store, tot.source, delta=DELTA, accountant="pld", detail=10)
    groups = {g.releases: g for g in view.groups}  # releases that included the group's records
    assert sorted(groups) == [1, 2, 3]
    assert groups[3].records == len(shared)
    assert groups[3].epsilon == pytest.approx(_pld([CENTRAL, SGD0, SGD1]), rel=0.01)
    assert groups[2].records == len(only0)
    assert groups[2].epsilon == pytest.approx(_pld([CENTRAL, SGD0]), rel=0.01)
    assert groups[1].records == len(only1)
    assert groups[1].epsilon == pytest.approx(_pld([SGD1]), rel=0.01)
    assert view.records == len(shared | only0 | only1)
    assert view.epsilon == groups[3].epsilon


def test_split_choices_and_labels_do_not_change_the_source(tmp_path):
    paths = Paths(tmp_path)
    base = release.data_source(_params(), paths)
    assert base == spend.Source("mnist_offline", None)  # bundled: its root is not read
    for change in (
        {"test_fraction": 0.3},
        {"max_per_class": 100},
        {"image_size": 16},
        {"root": "elsewhere"},
    ):
        assert release.data_source(_params(**change), paths) == base
    assert release.data_source(replace(_params(), seed=7), paths) == base
    folder = release.data_source(_params(name="folder", root="data/mine"), paths)
    assert folder.root == str((tmp_path / "data" / "mine").resolve())
    relabelled = _params(name="folder", root="data/mine", attribute="Smiling")
    assert release.data_source(relabelled, paths) == folder
    assert release.data_source(_params(name="folder", root="/other"), paths).id != folder.id


def test_fingerprint_shows_an_edited_record_not_a_new_seed(mnist):
    key = os.urandom(32)
    a0, b0 = split(mnist, 0.2, 0)
    a1, b1 = split(mnist, 0.2, 1)
    ids = [spend.record_ids(s.x, key) for s in (a0, b0, a1, b1)]
    assert spend.source_fingerprint(ids[:2], key) == spend.source_fingerprint(ids[2:], key)
    x = b1.x.copy()
    x[0, 0, 0, 0] = 1.0 - x[0, 0, 0, 0]
    edited = [ids[2], spend.record_ids(x, key)]
    assert spend.source_fingerprint(edited, key) != spend.source_fingerprint(ids[:2], key)
    assert spend.record_ids(a0.x, os.urandom(32)).tolist() != ids[0].tolist()  # keyed


_WORKER = """
import hashlib, sys
import numpy as np
from easyhard.privacy import Mechanism, spend
store = sys.argv[1]
x = np.zeros((50, 1, 4, 4), dtype=np.uint8)
x[:, 0, 0, 0] = np.arange(50)
for i in range(10):
    key = spend.store_key(store)
    ids = spend.record_ids(x, key)
    spend.record(store, spend.Source("digits", None), method=sys.argv[2], stage=str(i),
        mechanisms=[Mechanism("dp_sgd", 2.0, 0.1, 10)], private=True, published=True, reason="",
        train_ids=ids, seen_ids=[ids])
    print(hashlib.sha256(key).hexdigest())
"""


def test_concurrent_first_use_ends_in_one_total(tmp_path):
    """(b) Two processes releasing at once on a store that does not exist yet: one key, every
    release of both in the one total, one record set (the same ids in both processes)."""
    store = tmp_path / "fresh"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(store), name],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("a", "b")
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len({line for out in outs for line in out.split()}) == 1  # one key for every release
    source = spend.Source("digits", None).id
    found = spend.uses(store, source)
    assert len(found) == 20 and {u.records for u in found} == {found[0].records}
    tot = spend.total(store, source, delta=DELTA, accountant="rdp")
    assert tot.releases == 20
    assert tot.epsilon == pytest.approx(
        compose_epsilon([Mechanism("dp_sgd", 2.0, 0.1, 200)], DELTA, "rdp"), rel=1e-9
    )
    assert sorted(p.name for p in store.iterdir()) == ["key", "sources"]  # no temporary left


@pytest.mark.parametrize("content", [b"", b"short"])
def test_an_empty_or_short_key_is_refused_never_used(tmp_path, content):
    store = tmp_path / "store"
    store.mkdir()
    (store / "key").write_bytes(content)
    with pytest.raises(spend.SpendStoreError) as err:
        spend.store_key(store)
    assert "\n" not in str(err.value) and f"{len(content)} bytes" in str(err.value)
    with pytest.raises(spend.SpendStoreError):
        spend.record(
            store,
            spend.Source("digits", None),
            method="m",
            stage="s",
            mechanisms=[SGD0],
            private=True,
            published=True,
            reason="",
            train_ids=np.arange(3, dtype=np.uint64),
            seen_ids=[],
        )
    assert (store / "key").read_bytes() == content  # neither replaced
    assert sorted(p.name for p in store.iterdir()) == ["key"]  # nor anything recorded


def test_a_key_created_by_another_process_is_kept(tmp_path):
    spend._create_key(tmp_path / "key")
    first = (tmp_path / "key").read_bytes()
    spend._create_key(tmp_path / "key")  # lost the race: the first key stays
    assert (tmp_path / "key").read_bytes() == first and len(first) == spend.KEY_BYTES
    assert oct((tmp_path / "key").stat().st_mode & 0o777) == "0o600"


def test_a_second_clone_sees_the_first_clones_releases(tmp_path, mnist):
    """(c) Two clones (two repository folders, same data config, same user store): the second
    reports the first one's releases, in the pipeline and in ``privacy total``."""
    from easyhard.privacy.__main__ import main

    params = _params()
    first = _clone(tmp_path / "first", mnist, 0)
    second = _clone(tmp_path / "second", mnist, 0)
    (second.root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    release.record_release(params, first, "dpdm", "finetune", [SGD0])
    assert release.dataset_total(params, second).releases == 1
    release.record_release(params, second, "dpdm", "finetune", [SGD1])
    tot = release.dataset_total(params, first)
    assert tot.releases == 2 and tot.epsilon == pytest.approx(_pld([SGD0, SGD1]), rel=0.01)
    assert main(["total", "--root", str(second.root)]) == 0


def test_cli_total_prints_the_published_total_and_the_owners_view(tmp_path, mnist, capsys):
    from easyhard.privacy.__main__ import main

    params = _params()
    paths = _clone(tmp_path, mnist, 0)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    release.record_release(params, paths, "dpdm", "finetune", [SGD0])
    release.record_nonprivate_use(params, paths, "dpdm", "audit", False, "membership diagnostic")
    assert main(["total", "--root", str(tmp_path), "--per-record", "--accountant", "rdp"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    eps = compose_epsilon([SGD0], DELTA, "rdp")
    assert lines[-2] == f"epsilon={eps!r}" and lines[-1] == f"per_record_epsilon={eps!r}"
    assert "(params.yaml's data)" in out and "kept in the private zone" in out
    assert "1 non-private use(s) kept private" in out
    assert main(["total", "--root", str(tmp_path / "nowhere"), "--delta", "1e-5"]) == 0


def test_published_total_is_the_same_for_neighbouring_datasets(tmp_path, mnist, monkeypatch):
    """(d) Two neighbouring training sets (one record removed) and two different splits, with the
    same list of releases: identical published totals; the total never reads the data."""
    params = _params()
    totals = []
    for name, drop in (("full", None), ("neighbour", 17), ("other_split", None)):
        monkeypatch.setenv(spend.ENV_DIR, str(tmp_path / name / "store"))
        paths = _clone(tmp_path / name, mnist, 1 if name == "other_split" else 0)
        if drop is not None:
            train = load_npz(paths.train)
            keep = np.arange(len(train)) != drop
            save_npz(paths.train, ImageSet(train.x[keep], train.y[keep], train.classes))
        release.record_release(params, paths, "dpfeta", "central", [CENTRAL])
        release.record_release(params, paths, "dpfeta", "finetune", [SGD0])
        paths.train.unlink()  # the published total needs only the list of releases
        totals.append(release.dataset_total(params, paths))
    assert totals[0] == totals[1] == totals[2]


def test_non_private_uses_published_or_kept_private(tmp_path, mnist, spend_store):
    """A published non-private use makes the published total infinite (null in JSON) with its
    reason; one kept in the private zone is listed and marks the per-record view, nothing more."""
    params = _params(accountant="rdp")
    paths = _clone(tmp_path, mnist, 0)
    release.record_release(params, paths, "dpdm", "finetune", [SGD0])
    release.record_nonprivate_use(params, paths, "dpdm", "audit", False, "membership diagnostic")
    tot = release.dataset_total(params, paths)
    eps = compose_epsilon([SGD0], DELTA, "rdp")
    assert tot.epsilon == eps and tot.kept_private == ("dpdm/audit: membership diagnostic",)
    view = per_record(spend_store, tot.source, delta=DELTA, accountant="rdp")
    assert [(g.kept_private, g.epsilon) for g in view.groups] == [(1, eps)]

    release.record_nonprivate_use(params, paths, "nonprivate", "finetune", True, "model published")
    tot = release.dataset_total(params, paths)
    assert tot.epsilon == float("inf") and tot.epsilon_private == eps
    assert tot.reasons == ("nonprivate/finetune: model published",)
    assert release.finite(tot.epsilon) is None
    assert per_record(spend_store, tot.source, delta=DELTA, accountant="rdp").groups[0].unbounded


def test_a_seeded_release_is_a_published_non_private_use(tmp_path, mnist):
    params = _params(accountant="rdp")
    seeded = replace(params, privacy=replace(params.privacy, randomness="seeded"))
    paths = _clone(tmp_path, mnist, 0)
    release.record_release(seeded, paths, "dpdm", "finetune", [SGD0])
    tot = release.dataset_total(params, paths)
    assert tot.epsilon == float("inf") and tot.reasons == (f"dpdm/finetune: {spend.SEEDED}",)
    assert tot.non_private == 1 and tot.releases == 1 and tot.seeded == 1


def test_training_fingerprint_is_keyed_and_exact(tmp_path, mnist, monkeypatch):
    params = _params()
    paths = _clone(tmp_path, mnist, 0)
    digest = release.training_fingerprint(params, paths)
    assert len(digest) == 64 and digest == release.training_fingerprint(params, paths)
    assert digest != release.training_fingerprint(params, _clone(tmp_path / "b", mnist, 1))
    monkeypatch.setenv(spend.ENV_DIR, str(tmp_path / "another_store"))
    assert release.training_fingerprint(params, paths) != digest  # keyed by the store


def test_a_use_file_is_plain_json_without_the_data(tmp_path, mnist, spend_store):
    params = _params()
    paths = _clone(tmp_path, mnist, 0)
    release.record_release(params, paths, "dpdm", "finetune", [SGD0])
    (use_file,) = (spend_store / "sources").glob("*/uses/*.json")
    d = json.loads(use_file.read_text())
    assert d["mechanisms"] == [SGD0.to_dict()] and d["private"] and d["published"]
    assert set(d) == set(spend.Use.__dataclass_fields__)
