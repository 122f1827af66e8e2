"""Secret randomness and public constants: the attacks of issue 11 must fail.

The adversary knows the code, params.yaml (with its seed), every other record and every release.
* Secure mode: two runs with identical params release different noise, and the noise replayed from
  the public seed is uncorrelated with the released noise (central images and a DP-SGD step).
* Seeded mode: bit-identical replays, and every record says it is not private.
* Every normaliser and noise scale of a release is the same for D and for D plus one record.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from easyhard import data as D
from easyhard.central import class_sums, noisy_statistic, release_scale
from easyhard.config import defaults
from easyhard.pipeline import central_images, finetune, frequency, pretrain, release
from easyhard.pipeline.notebook import setup
from easyhard.pipeline.paths import Paths
from easyhard.privacy import Ledger
from easyhard.privacy.randomness import SecureSource, SeededSource
from easyhard.schema import merge

DEFAULTS = defaults()  # params.yaml: the only place defaults live

ROOT = Path(__file__).resolve().parents[1]
N, K, SHAPE = 400, 4, (1, 8, 8)
SMALL = {
    "seed": 7,
    "methods": ["dpfeta", "dpdm"],
    "privacy": {"epsilon": 30.0, "delta": 1e-3, "dataset_size": N, "size_tolerance": 0.1},
    # q = 1, noise std 0.04 (far from the clamp), identity post-processing: release = stat + noise
    "central": {
        "plan": "fixed",
        "queries": 1,
        "downsample": 1,
        "sample_rate": 1.0,
        "noise_multiplier": 0.5,
        "budget_share": None,
        "postprocess": "none",
    },
    "network": {"channels": [8, 16], "attention": [False, True], "norm_groups": 4},
    "edm": {"noise_multiplicity": 2},
    "pretrain": {"steps": 2, "batch_size": 4, "log_every": 1},
    "finetune": {"sample_rate": 0.02, "epochs": 0.04, "physical_batch": 16, "log_every": 1},
}


def _images(n: int, seed: int = 0) -> D.ImageSet:
    rng = np.random.default_rng(seed)
    x = (0.25 + 0.5 * rng.random((n, *SHAPE))).astype(np.float32)  # away from the clamp at 0, 1
    x = np.round(x * 255) / 255  # exactly what train.npz stores (uint8)
    return D.ImageSet(x.astype(np.float32), np.arange(n) % K, tuple("abcd"))


def _repo(root: Path, randomness: str, train: D.ImageSet, extra: dict | None = None):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    over = merge(merge(SMALL, {"privacy": {"randomness": randomness}}), extra or {})
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(merge(base, over)))
    params, paths = setup({}, root)
    D.save_npz(paths.train, train)
    D.save_npz(paths.test, _images(8, seed=1))
    return params, paths


#: many queries -> 32 x 4 x 64 released values, so a correlation of 0.05 is > 4 standard errors
MANY = {"privacy": {"epsilon": 120.0, "accountant": "rdp"}, "central": {"queries": 32}}


def _released_central(paths: Paths) -> np.ndarray:
    with np.load(paths.central("dpfeta")) as f:
        return f["x"].astype(np.float64)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ---------------------------------------------------------------------------- central images
def test_secure_central_releases_differ_and_the_public_seed_replays_nothing(tmp_path):
    train = _images(N)
    exact = class_sums(train.x, train.y, K) / (1.0 * N / K)  # q = 1: what the attacker computes
    released, ledgers = [], []
    for run in ("a", "b"):
        params, paths = _repo(tmp_path / run, "secure", train, MANY)
        out = central_images.run(params, paths, "dpfeta")
        released.append(_released_central(paths))
        ledgers.append(Ledger.load(paths.central_ledger("dpfeta")))
        assert out["scale"].std > 0
    assert not np.array_equal(released[0], released[1])
    assert all(ledger.private for ledger in ledgers)
    # the attacker replays the seeded stream the public seed defines and subtracts it
    scale = release_scale(params.central, params.central.noise_multiplier, N, K, SHAPE)
    replay = SeededSource(params.seed, "central")
    guess = []
    for _ in range(params.central.queries):
        replay.bernoulli(N, 1.0)
        guess.append(replay.normal(exact.shape, scale.std))
    guess = np.concatenate(guess)
    for rel in released:
        noise = rel - np.concatenate([exact] * params.central.queries)
        assert abs(_corr(noise, guess)) < 0.05
        assert np.std(noise) == pytest.approx(scale.std, rel=0.1)  # it is noise of the stated std


def test_seeded_central_is_bit_identical_replayable_and_marked_not_private(tmp_path):
    train = _images(N)
    exact = class_sums(train.x, train.y, K) / (1.0 * N / K)
    released = []
    for run in ("a", "b"):
        params, paths = _repo(tmp_path / run, "seeded", train, MANY)
        central_images.run(params, paths, "dpfeta")
        released.append(_released_central(paths))
        assert Ledger.load(paths.central_ledger("dpfeta")).private is False
    assert np.array_equal(released[0], released[1])
    replay = SeededSource(params.seed, "central")
    replay.bernoulli(N, 1.0)
    guess = replay.normal(
        exact.shape, release_scale(params.central, params.central.noise_multiplier, N, K, SHAPE).std
    )
    first = released[0][:K]  # the first query's K images
    assert _corr(first - exact, guess) > 0.99  # exactly the attack secure mode prevents


# ---------------------------------------------------------------------------- one DP-SGD step
def _one_step(noise) -> dict[str, torch.Tensor]:
    """One DP-SGD step (6 examples, C = 0.1, noise multiplier 1) of the project's DPSGD."""
    from easyhard.dpsgd import DPSGD
    from easyhard.multiplicity import PerExampleLoss
    from tests.test_dpsgd import batch, small_denoiser

    den = small_denoiser(True)
    x, y, sigma, nz, drop = batch(6, 2)
    dp = DPSGD(
        PerExampleLoss(den),
        noise_multiplier=1.0,
        clip=0.1,
        expected_batch=6.0,
        physical_batch=8,
        noise=noise,
    )
    got, _ = dp.private_gradient(x, y, sigma, nz, drop)
    return got


def test_dp_sgd_step_secure_noise_is_fresh_and_not_the_public_seeds(tmp_path):
    from easyhard.dpsgd import clipped_sum, per_example_grads
    from easyhard.multiplicity import PerExampleLoss
    from tests.test_dpsgd import batch, small_denoiser

    params, _ = _repo(tmp_path, "secure", _images(N))
    a = _one_step(release.noise_for(params, "dp_sgd"))
    b = _one_step(release.noise_for(params, "dp_sgd"))
    grads, _ = per_example_grads(PerExampleLoss(small_denoiser(True)), *batch(6, 2))
    summed, _ = clipped_sum(grads, 0.1)
    replay = SeededSource(params.seed, "dp_sgd")
    noise_a, noise_b, guess = [], [], []
    for k, s in summed.items():
        noise_a.append((a[k] * 6.0 - s).flatten())
        noise_b.append((b[k] * 6.0 - s).flatten())
        guess.append(torch.from_numpy(replay.normal(tuple(s.shape), 0.1)).flatten())
    na, nb, g = (torch.cat(t).double().numpy() for t in (noise_a, noise_b, guess))
    assert len(na) > 5000
    assert not np.array_equal(na, nb)
    assert abs(_corr(na, g)) < 0.05 and abs(_corr(nb, g)) < 0.05
    assert np.std(na) == pytest.approx(0.1, rel=0.05)  # std = noise_multiplier * C

    seeded, _ = _repo(tmp_path / "s", "seeded", _images(N))
    c = _one_step(release.noise_for(seeded, "dp_sgd"))
    d = _one_step(release.noise_for(seeded, "dp_sgd"))
    assert all(torch.equal(c[k], d[k]) for k in c)


def test_seeded_finetune_is_bit_identical_secure_is_not(tmp_path):
    weights = {}
    for mode in ("seeded", "secure"):
        for run in ("a", "b"):
            params, paths = _repo(tmp_path / mode / run, mode, _images(N))
            central_images.run(params, paths, "dpdm")
            frequency.run(params, paths, "dpdm")
            pretrain.run(params, paths, "dpdm")
            finetune.run(params, paths, "dpdm")
            state = torch.load(paths.model("dpdm", "finetune"), weights_only=True)["state_dict"]
            weights[mode, run] = state
            ledger = Ledger.load(paths.ledger("dpdm"))
            assert ledger.private is (mode == "secure")
    same = weights["seeded", "a"], weights["seeded", "b"]
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    diff = weights["secure", "a"], weights["secure", "b"]
    assert any(not torch.equal(diff[0][k], diff[1][k]) for k in diff[0])


# ------------------------------------------------------------------ public constants, D vs D+1
@dataclass
class RecordingSource:
    """A seeded source that records every noise std it was asked for."""

    inner: SeededSource
    stds: list[float] = field(default_factory=list)
    private = False

    def normal(self, shape, std=1.0):
        self.stds.append(float(std))
        return self.inner.normal(shape, std)

    def gaussian(self, exact, std):
        return np.asarray(exact, np.float64) + self.normal(np.shape(exact), std)

    def bernoulli(self, n, p):
        return self.inner.bernoulli(n, p)

    def state(self):
        return self.inner.state()

    def restore(self, state):
        self.inner.restore(state)


def test_noise_scales_and_normalisers_do_not_depend_on_the_data(tmp_path, monkeypatch):
    """D and D plus one record: identical noise stds, central normaliser and DP-SGD q*N."""
    seen: dict[str, dict] = {}
    real_finetune = finetune.dp_finetune

    def spy_finetune(*args, **kwargs):
        seen[current]["finetune"] = {
            k: kwargs[k] for k in ("expected_batch", "noise_multiplier", "steps")
        }
        return real_finetune(*args, **kwargs)

    sources: list[RecordingSource] = []

    def recording(params, stream, world=None):
        sources.append(RecordingSource(SeededSource(params.seed, stream)))
        return sources[-1]

    monkeypatch.setattr(finetune, "dp_finetune", spy_finetune)
    monkeypatch.setattr(
        central_images, "noise_for", recording
    )  # what each querying stage draws from
    monkeypatch.setattr(finetune, "noise_for", recording)
    base = _images(N)
    extreme = D.ImageSet(
        np.concatenate([base.x, np.ones((1, *SHAPE), np.float32)]),
        np.concatenate([base.y, [3]]),
        base.classes,
    )
    for current, data in (("D", base), ("D+1", extreme)):
        seen[current] = {}
        sources.clear()
        params, paths = _repo(tmp_path / current, "seeded", data)
        out = central_images.run(params, paths, "dpfeta")
        seen[current]["central"] = out["scale"]
        frequency.run(params, paths, "dpfeta")
        pretrain.run(params, paths, "dpfeta")
        finetune.run(params, paths, "dpfeta")
        seen[current]["stds"] = [s for src in sources for s in src.stds]
    assert seen["D"] == seen["D+1"]
    assert seen["D"]["finetune"]["expected_batch"] == 0.02 * N  # q * declared N
    assert seen["D"]["central"].normaliser == 1.0 * N / K  # q * declared N / K


def test_declared_size_far_from_the_data_never_stops_the_run(tmp_path):
    """A wrong declaration mis-scales the release but the run goes on (a halt that depends on the
    data would itself be an unaccounted release); the normaliser stays the declared one."""
    params, paths = _repo(tmp_path, "secure", _images(N), {"privacy": {"dataset_size": 600}})
    out = central_images.run(params, paths, "dpfeta")
    assert paths.central_ledger("dpfeta").exists()
    assert out["scale"].normaliser == 1.0 * 600 / K


# ------------------------------------------------------- sensitivity inside the mechanism
class _Exact:
    """Keeps every record, adds no noise: exposes the statistic the mechanism computes inside."""

    private = False

    def bernoulli(self, n, p):
        return np.ones(n, bool)

    def normal(self, shape, std=1.0):
        return np.zeros(shape)

    def gaussian(self, exact, std):
        return np.asarray(exact, np.float64) + self.normal(np.shape(exact), std)


@pytest.mark.parametrize("kind", ["mean", "mode"])
@pytest.mark.parametrize("bad", [1e6, -5.0, np.nan])
def test_central_sensitivity_holds_for_pixels_outside_0_1(kind, bad):
    cfg = replace(
        DEFAULTS.central,
        type=kind,
        sample_rate=1.0,
        queries=1,
        downsample=2,
        bins=4,
        postprocess="none",
    )
    base = _images(N)
    scale = release_scale(cfg, 1.0, N, K, SHAPE)
    record = np.full((1, *SHAPE), bad, np.float32)
    a = noisy_statistic(base.x, base.y, K, cfg, scale, _Exact())
    b = noisy_statistic(
        np.concatenate([base.x, record]), np.concatenate([base.y, [1]]), K, cfg, scale, _Exact()
    )
    assert np.isfinite(b).all()
    assert np.linalg.norm((a - b).ravel()) <= scale.sensitivity * (1 + 1e-9)


# ------------------------------------------------------------------------------ the source
def test_secure_source_cannot_be_pickled_copied_or_printed():
    import copy

    s = SecureSource()
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        copy.deepcopy(s)
    assert "secret" in repr(s) and "key" not in vars(s)


def test_secure_source_distributions():
    from scipy import stats

    s = SecureSource()
    u = s.uniform(200_000)
    assert 0 < u.min() and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    z = s.normal(200_000)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert abs(z.std() - 1) < 0.01
    assert abs(s.bernoulli(200_000, 0.3).mean() - 0.3) < 0.005
    assert not np.array_equal(SecureSource().normal(10), SecureSource().normal(10))
    assert np.array_equal(SeededSource(3, "x").normal(10), SeededSource(3, "x").normal(10))
    assert not np.array_equal(SeededSource(3, "x").normal(10), SeededSource(3, "y").normal(10))
