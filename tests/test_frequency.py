"""FETA-Pro frequency release: unit-norm features, the stated sensitivity for any dataset, public
constants, noise from the NoiseSource only, and an auxiliary generator whose MMD loss falls."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from easyhard.auxgen import AuxGenerator, train_aux_generator
from easyhard.config import ConfigError, defaults
from easyhard.frequency import (
    FrequencyParams,
    feature_dim,
    frequency_mechanism,
    frequency_normaliser,
    frequency_sensitivity,
    frequency_statistic,
    image_features,
    release_frequency_embedding,
    rff_frequencies,
)
from easyhard.privacy import Mechanism
from easyhard.privacy.randomness import SecureSource, SeededSource

AUXGEN = defaults().auxgen  # params.yaml: the only place defaults live
K = 4
SHAPE = (1, 8, 8)


def _phi(x: np.ndarray, w: np.ndarray, downsample: int = 1) -> np.ndarray:
    t = torch.as_tensor(x, dtype=torch.float64)
    return image_features(t, torch.as_tensor(w, dtype=torch.float64), downsample).numpy()


def _params(**kw) -> FrequencyParams:
    base = dict(
        n_records=40,
        features=64,
        lengthscale=2.0,
        downsample=1,
        noise_multiplier=3.0,
        sample_rate=1.0,
    )
    return FrequencyParams(**{**base, **kw})


# ---------------------------------------------------------------- features


@pytest.mark.parametrize("downsample", [1, 2])
def test_features_have_unit_norm_for_any_input(downsample):
    rng = np.random.default_rng(0)
    w = rff_frequencies(feature_dim(SHAPE, downsample), 128, 1.5, seed=0)
    n = 7
    inputs = {
        "random": rng.random((n, *SHAPE)),
        "zeros": np.zeros((n, *SHAPE)),
        "ones": np.ones((n, *SHAPE)),
        "outside [0, 1]": rng.normal(0.5, 50.0, (n, *SHAPE)),
        "huge": np.full((n, *SHAPE), 1e30),
        "non-finite": np.where(rng.random((n, *SHAPE)) < 0.5, np.nan, np.inf),
    }
    for what, x in inputs.items():
        phi = _phi(x, w, downsample)
        assert phi.shape == (n, 128), what
        np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0, rtol=0, atol=1e-12)


def test_inputs_are_clipped_to_unit_interval_inside_the_feature_map():
    rng = np.random.default_rng(1)
    w = rff_frequencies(64, 64, 1.0, seed=3)
    x = rng.normal(0.5, 3.0, (5, *SHAPE))
    np.testing.assert_array_equal(_phi(x, w), _phi(x.clip(0, 1), w))
    nan_inf = np.stack([np.full(SHAPE, np.nan), np.full(SHAPE, np.inf), np.full(SHAPE, -np.inf)])
    expected = np.stack([np.zeros(SHAPE), np.ones(SHAPE), np.zeros(SHAPE)])
    np.testing.assert_array_equal(_phi(nan_inf, w), _phi(expected, w))


def test_features_approximate_the_gaussian_kernel_of_the_stated_lengthscale():
    rng = np.random.default_rng(2)
    lengthscale = 2.0
    w = rff_frequencies(64, 20000, lengthscale, seed=0)
    x = rng.random((6, *SHAPE)) * 0.5
    phi = _phi(x, w)
    sq = ((x.reshape(6, 1, -1) - x.reshape(1, 6, -1)) ** 2).sum(-1)
    np.testing.assert_allclose(phi @ phi.T, np.exp(-sq / (2 * lengthscale**2)), atol=0.03)


def test_frequencies_are_a_function_of_the_public_seed_only():
    a, b = rff_frequencies(10, 8, 2.0, seed=5), rff_frequencies(10, 8, 2.0, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 10)
    assert not np.array_equal(a, rff_frequencies(10, 8, 2.0, seed=6))


# ---------------------------------------------------------------- sensitivity


def _datasets(rng):
    yield rng.random((40, *SHAPE)), rng.integers(0, K, 40)  # random
    yield np.ones((12, *SHAPE)), np.arange(12) % K  # all ones
    yield np.zeros((12, *SHAPE)), np.arange(12) % K  # all zeros
    yield rng.random((5, *SHAPE)), np.array([0, 0, 1, 1, 2])  # class 3 empty
    yield np.zeros((0, *SHAPE)), np.zeros(0, dtype=np.int64)  # empty dataset


def _extra_records(rng):
    checker = (np.indices(SHAPE[1:]).sum(0) % 2).reshape(SHAPE).astype(float)
    yield np.ones(SHAPE)
    yield np.zeros(SHAPE)
    yield checker
    yield rng.random(SHAPE)
    yield np.full(SHAPE, 1e6)  # extreme: clipped to all ones
    yield rng.normal(0.0, 1e3, SHAPE)  # extreme, mixed signs


@pytest.mark.parametrize("downsample,sample_rate", [(1, 1.0), (2, 1.0), (1, 0.3)])
def test_stated_sensitivity_holds_and_is_reached_for_add_remove_neighbours(downsample, sample_rate):
    rng = np.random.default_rng(0)
    w = rff_frequencies(feature_dim(SHAPE, downsample), 256, 1.0, seed=0)
    normaliser = frequency_normaliser(100, K, sample_rate)  # public, fixed before the data
    bound = frequency_sensitivity(normaliser)
    assert bound == pytest.approx(K / (sample_rate * 100))
    largest = 0.0
    for x, y in _datasets(rng):
        s = frequency_statistic(x, y, K, w, downsample, normaliser)
        for extra in _extra_records(rng):
            for label in range(K):  # including a record in an otherwise empty class
                x2 = np.concatenate([x, extra[None]])
                s2 = frequency_statistic(x2, np.append(y, label), K, w, downsample, normaliser)
                dist = float(np.linalg.norm(s2 - s))
                assert dist <= bound * (1 + 1e-9)
                changed = np.flatnonzero(np.abs(s2 - s).sum(1) > 0)
                assert changed.tolist() == [label]  # one record moves one class block only
                largest = max(largest, dist)
    assert largest >= bound * (1 - 1e-9)  # the bound is tight (every phi has norm 1)


def test_public_constants_do_not_depend_on_the_data():
    rng = np.random.default_rng(3)
    x, y = rng.random((30, *SHAPE)), rng.integers(0, K, 30)
    x2, y2 = np.concatenate([x, np.ones((1, *SHAPE))]), np.append(y, 0)
    for q in (1.0, 0.5):
        p = _params(sample_rate=q)
        a = release_frequency_embedding(x, y, K, p, SeededSource(0, "frequency"), seed=0)
        b = release_frequency_embedding(x2, y2, K, p, SeededSource(0, "frequency"), seed=0)
        assert (a.normaliser, a.sensitivity, a.std) == (b.normaliser, b.sensitivity, b.std)
        assert a.normaliser == pytest.approx(q * 40 / K)  # declared n_records, not len(data)
        assert a.std == pytest.approx(p.noise_multiplier / a.normaliser)
        assert a.mechanism == b.mechanism == frequency_mechanism(p)
        np.testing.assert_array_equal(a.frequencies, b.frequencies)


# ---------------------------------------------------------------- release


class _RecordingSource:
    """A NoiseSource that draws nothing random: zero noise, a fixed mask; records the calls."""

    private = False

    def __init__(self, keep_every: int = 1) -> None:
        self.calls: list[tuple] = []
        self.keep_every = keep_every

    def normal(self, shape, std=1.0):
        self.calls.append(("normal", tuple(shape), std))
        return np.zeros(shape)

    def gaussian(self, exact, std):
        return np.asarray(exact, np.float64) + self.normal(np.shape(exact), std)

    def bernoulli(self, n, p):
        self.calls.append(("bernoulli", n, p))
        return np.arange(n) % self.keep_every == 0

    def state(self):
        return None

    def restore(self, state):
        return None


def test_mask_and_noise_come_from_the_noise_source():
    rng = np.random.default_rng(4)
    x, y = rng.random((20, *SHAPE)), rng.integers(0, K, 20)
    p = _params(sample_rate=0.5)
    src = _RecordingSource(keep_every=2)
    r = release_frequency_embedding(x, y, K, p, src, seed=1)
    assert src.calls == [("bernoulli", 20, 0.5), ("normal", (K, 64), r.std)]
    w = rff_frequencies(64, 64, p.lengthscale, seed=1)
    expected = frequency_statistic(x[::2], y[::2], K, w, 1, r.normaliser)
    np.testing.assert_allclose(r.embedding, expected, rtol=0, atol=1e-12)
    src_full = _RecordingSource()
    release_frequency_embedding(x, y, K, _params(sample_rate=1.0), src_full, seed=1)
    assert [c[0] for c in src_full.calls] == ["normal"]  # q = 1: no mask drawn


def test_noise_has_the_stated_scale():
    rng = np.random.default_rng(5)
    x, y = rng.random((50, *SHAPE)), rng.integers(0, K, 50)
    p = _params(features=4000)
    r = release_frequency_embedding(x, y, K, p, SeededSource(1, "frequency"), seed=0)
    clean = frequency_statistic(x, y, K, r.frequencies, 1, r.normaliser)
    assert np.std(r.embedding - clean) == pytest.approx(r.std, rel=0.03)
    assert r.embedding.shape == (K, 4000)


def test_release_is_reproducible_only_with_a_seeded_source():
    rng = np.random.default_rng(6)
    x, y = rng.random((30, *SHAPE)), rng.integers(0, K, 30)
    for q in (1.0, 0.5):
        p = _params(sample_rate=q)
        a = release_frequency_embedding(x, y, K, p, SeededSource(7, "frequency"), seed=0)
        b = release_frequency_embedding(x, y, K, p, SeededSource(7, "frequency"), seed=0)
        np.testing.assert_array_equal(a.embedding, b.embedding)
        c = release_frequency_embedding(x, y, K, p, SecureSource(), seed=0)
        d = release_frequency_embedding(x, y, K, p, SecureSource(), seed=0)
        assert not np.allclose(c.embedding, d.embedding)
        np.testing.assert_array_equal(c.frequencies, d.frequencies)  # W is public, seeded


def test_ledger_entry_from_config_alone():
    p = _params(noise_multiplier=7.5, sample_rate=0.25)
    m = frequency_mechanism(p)
    assert m == Mechanism(name="frequency_mmd", noise_multiplier=7.5, sample_rate=0.25, steps=1)


# ---------------------------------------------------------------- bad input


def _one_line_value_error(fn, match):
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_bad_input_raises_one_line_value_errors():
    rng = np.random.default_rng(7)
    x, y = rng.random((6, *SHAPE)), np.arange(6) % K
    p, src = _params(), SeededSource(0, "frequency")
    w = rff_frequencies(64, 64, 1.0, seed=0)

    def release(xx, yy, k=K, params=p):
        return release_frequency_embedding(xx, yy, k, params, src, seed=0)

    _one_line_value_error(lambda: release(x[:, 0], y), "NCHW")
    _one_line_value_error(lambda: release(x, y[:5]), "one label per image")
    _one_line_value_error(lambda: release(x, y.reshape(2, 3)), "one label per image")
    _one_line_value_error(lambda: release(x, np.append(y[:5], K)), r"\[0, 4\)")
    _one_line_value_error(lambda: release(x, np.append(y[:5], -1)), r"\[0, 4\)")
    _one_line_value_error(lambda: release(x, y.astype(float)), "integers")
    _one_line_value_error(lambda: release(x, y, k=0), "n_classes")
    _one_line_value_error(lambda: release(x, y, params=_params(downsample=16)), "larger")
    _one_line_value_error(lambda: frequency_statistic(x, y, K, w, 1, 0.0), "normaliser")
    _one_line_value_error(lambda: frequency_statistic(x, y, K, w, 1, -2.0), "normaliser")
    _one_line_value_error(lambda: frequency_sensitivity(0.0), "normaliser")
    _one_line_value_error(lambda: frequency_normaliser(0, K, 1.0), "n_records")
    _one_line_value_error(lambda: frequency_normaliser(10, K, 0.0), "sample_rate")
    _one_line_value_error(lambda: rff_frequencies(10, 7, 1.0, seed=0), "even")
    for bad in (0.0, -1.0, math.inf, math.nan, True, "3"):
        _one_line_value_error(lambda b=bad: _params(noise_multiplier=b), "noise_multiplier")
    for field, bad, match in [
        ("n_records", 0, "n_records"),
        ("n_records", 2.5, "n_records"),
        ("features", 63, "even"),
        ("features", 0, "features"),
        ("lengthscale", 0.0, "lengthscale"),
        ("downsample", 0, "downsample"),
        ("sample_rate", 0.0, "sample_rate"),
        ("sample_rate", 1.5, "sample_rate"),
    ]:
        _one_line_value_error(lambda f=field, b=bad: _params(**{f: b}), match)
    for field, bad in (("steps", 0), ("lr", -1.0), ("lr_decay", 2.0), ("threads", 0)):
        with pytest.raises(ConfigError, match=f"auxgen.{field}"):
            replace(AUXGEN, **{field: bad})
    _one_line_value_error(lambda: AuxGenerator(K, (2, 28, 28)), "image_shape")
    _one_line_value_error(lambda: AuxGenerator(0, (1, 28, 28)), "n_classes")
    g = AuxGenerator(K, (1, 28, 28), z_dim=8, width=8)
    _one_line_value_error(lambda: g(torch.zeros(3, 9), torch.zeros(3, dtype=torch.long)), "z")
    _one_line_value_error(lambda: g.generate(0), "n_per_class")
    _one_line_value_error(lambda: train_aux_generator("release", AUXGEN, 0), "release")


# ---------------------------------------------------------------- auxiliary generator


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 10, 14)])
def test_generator_output_shape_range_and_labels(shape):
    torch.manual_seed(0)
    g = AuxGenerator(3, shape, z_dim=8, width=8)
    x, y = g.generate(5, seed=1, batch_size=4)
    assert x.shape == (15, *shape) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    np.testing.assert_allclose(x, g.generate(5, seed=1)[0], atol=1e-5)  # seeded latents


def _strokes(n_per_class: int, size: int, rng: np.random.Generator) -> tuple:
    """Digit-like images: class 0 a horizontal bar, 1 a vertical bar, 2 a ring (random position)."""
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for _ in range(n_per_class):
        r, c = rng.integers(3, size - 3, 2)
        images.append(((abs(yy - r) <= 1) & (abs(xx - size / 2) < size / 3)).astype(float))
        images.append(((abs(xx - c) <= 1) & (abs(yy - size / 2) < size / 3)).astype(float))
        rad = rng.uniform(3, size / 2 - 2)
        ring = abs(np.hypot(yy - size / 2, xx - size / 2) - rad) <= 1.0
        images.append(ring.astype(float))
        labels += [0, 1, 2]
    x = np.stack(images)[:, None] * rng.uniform(0.7, 1.0, (len(labels), 1, 1, 1))
    return x.astype(np.float32), np.array(labels)


def test_auxiliary_generator_loss_falls_and_is_deterministic():
    x, y = _strokes(100, 16, np.random.default_rng(0))
    p = _params(n_records=300, features=256, lengthscale=3.0, noise_multiplier=1.0)
    release = release_frequency_embedding(x, y, 3, p, SeededSource(0, "frequency"), seed=0)
    params = replace(AUXGEN, steps=100, batch_per_class=16, lr=5e-3, z_dim=16, width=8, threads=1)
    before = torch.get_num_threads()
    g, losses = train_aux_generator(release, params, seed=0, progress=False)
    assert torch.get_num_threads() == before  # restored
    assert len(losses) == 100 and all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)
    xg, yg = g.generate(20, seed=0)
    assert xg.shape == (60, 1, 16, 16) and yg.tolist() == [0] * 20 + [1] * 20 + [2] * 20
    short = replace(AUXGEN, steps=3, batch_per_class=4, z_dim=16, width=8, threads=1)
    _, a = train_aux_generator(release, short, seed=3, progress=False)
    _, b = train_aux_generator(release, short, seed=3, progress=False)
    assert a == b
