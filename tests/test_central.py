"""Central images: the stated L2 sensitivity holds for any dataset, noise has the stated scale."""

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from easyhard.central import (
    bin_index,
    class_histograms,
    downsample,
    mean_normaliser,
    mean_sensitivity,
    mean_statistic,
    mode_sensitivity,
    postprocess,
    query_central_images,
    query_once,
    release_scale,
)
from easyhard.config import defaults
from easyhard.privacy.randomness import SeededSource

DEFAULTS = defaults()  # params.yaml: the only place defaults live

K = 4


def _neighbours(x, y, rng):
    """Yield (D, D') pairs differing by adding one record (both directions are add/remove)."""
    extra_x = [
        np.ones((1, *x.shape[1:]), np.float32),  # all-ones image
        np.zeros((1, *x.shape[1:]), np.float32),  # all-zeros image
        rng.random((1, *x.shape[1:])).astype(np.float32),
    ]
    for ex in extra_x:
        for label in range(K):
            yield (x, y), (np.concatenate([x, ex]), np.concatenate([y, [label]]))


def _datasets(rng):
    shape = (1, 8, 8)
    yield rng.random((40, *shape)).astype(np.float32), rng.integers(0, K, 40)  # random
    yield np.ones((12, *shape), np.float32), np.arange(12) % K  # all ones
    yield np.zeros((12, *shape), np.float32), np.arange(12) % K  # all zeros
    yield rng.random((5, *shape)).astype(np.float32), np.array([0, 0, 1, 1, 2])  # class 3 empty
    yield rng.random((4, *shape)).astype(np.float32), np.array([0, 1, 2, 3])  # one per class


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_mean_query_sensitivity_any_dataset(factor):
    rng = np.random.default_rng(0)
    normaliser = mean_normaliser(100, K, 0.3)  # public constant, fixed before seeing the data
    for x, y in _datasets(rng):
        d = int(np.prod(downsample(x[:1], factor).shape[1:]))
        bound = mean_sensitivity(d, normaliser)
        for (a, ya), (b, yb) in _neighbours(x, y, rng):
            sa = mean_statistic(downsample(a, factor), ya, K, normaliser)
            sb = mean_statistic(downsample(b, factor), yb, K, normaliser)
            assert np.linalg.norm((sa - sb).ravel()) <= bound * (1 + 1e-9)


def test_mean_sensitivity_is_tight_for_all_ones_image():
    x = np.zeros((3, 1, 8, 8), np.float32)
    y = np.array([0, 1, 2])
    normaliser = 2.5
    a = mean_statistic(downsample(x, 2), y, K, normaliser)
    b = mean_statistic(
        downsample(np.concatenate([x, np.ones((1, 1, 8, 8), np.float32)]), 2),
        np.array([0, 1, 2, 3]),
        K,
        normaliser,
    )
    assert math.isclose(np.linalg.norm((a - b).ravel()), mean_sensitivity(16, normaliser))


@pytest.mark.parametrize("bins", [2, 8])
def test_mode_histogram_sensitivity_any_dataset(bins):
    rng = np.random.default_rng(1)
    for x, y in _datasets(rng):
        d = int(np.prod(x.shape[1:]))
        for (a, ya), (b, yb) in _neighbours(x, y, rng):
            ha = class_histograms(a, ya, K, bins)
            hb = class_histograms(b, yb, K, bins)
            assert np.linalg.norm((ha - hb).ravel()) <= mode_sensitivity(d) * (1 + 1e-9)


def test_bin_index_edges():
    v = np.array([0.0, 0.124, 0.125, 0.999, 1.0])
    assert bin_index(v, 8).tolist() == [0, 0, 1, 7, 7]


def test_mean_query_noise_scale_on_empty_sample():
    """With sample_rate tiny nothing is sampled: the output is pure noise of the stated std."""
    cfg = replace(
        DEFAULTS.central,
        type="mean",
        sample_rate=1e-9,
        downsample=1,
        postprocess="none",
        queries=1,
    )
    x = np.full((50, 1, 16, 16), 0.5, np.float32)
    y = np.arange(50) % K
    scale = release_scale(cfg, 2.0, 50, K, x.shape[1:])
    # undo the clamp by measuring the fraction of zeros: P(noise <= 0) = 1/2 for mean-zero noise
    out = query_once(x, y, K, cfg, scale, SeededSource(3, "t"))
    assert 0.4 < (out == 0).mean() < 0.6
    std = 2.0 * mean_sensitivity(256, mean_normaliser(50, K, cfg.sample_rate))
    assert scale.std == std > 1e6  # dividing by the public q*N/K, not the realised count


def test_query_central_images_shapes_and_ledger_entry():
    rng = np.random.default_rng(0)
    x = rng.random((200, 1, 28, 28)).astype(np.float32)
    y = np.arange(200) % 10
    cfg = replace(DEFAULTS.central, queries=3, downsample=4, sample_rate=0.5)
    kw = dict(noise_multiplier=5.0, public_size=200, progress=False)
    ci = query_central_images(x, y, 10, cfg, source=SeededSource(0, "c"), **kw)
    assert ci.x.shape == (30, 1, 28, 28) and ci.y.tolist() == list(range(10)) * 3
    assert ci.x.min() >= 0 and ci.x.max() <= 1
    assert math.isclose(ci.scale.std, 5.0 * ci.scale.sensitivity)
    assert ci.query.tolist() == [t for t in range(3) for _ in range(10)]
    again = query_central_images(x, y, 10, cfg, source=SeededSource(0, "c"), **kw)
    assert np.array_equal(ci.x, again.x)  # seeded mode: deterministic given the seed


def test_query_refuses_downsample_larger_than_image():
    with pytest.raises(ValueError, match="larger than the images"):
        query_central_images(
            np.zeros((4, 1, 2, 2), np.float32),
            np.arange(4) % 2,
            2,
            replace(DEFAULTS.central, downsample=4),
            noise_multiplier=1.0,
            public_size=4,
            source=SeededSource(0, "c"),
            progress=False,
        )


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["mean", "mode"]),
    factor=st.sampled_from([1, 2, 4]),
    channels=st.sampled_from([1, 3]),
    n=st.integers(min_value=1, max_value=30),
    post=st.sampled_from(["none", "median", "sharpen"]),
    q=st.floats(min_value=0.01, max_value=1.0),
    seed=st.integers(0, 1000),
)
def test_query_shapes_and_range_property(kind, factor, channels, n, post, q, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((n, channels, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, n)
    cfg = replace(
        DEFAULTS.central, type=kind, downsample=factor, postprocess=post, sample_rate=q, queries=2
    )
    ci = query_central_images(
        x,
        y,
        3,
        cfg,
        noise_multiplier=3.0,
        public_size=n,
        source=SeededSource(seed, "c"),
        progress=False,
    )
    assert ci.x.shape == (6, channels, 8, 8)
    assert np.isfinite(ci.x).all() and ci.x.min() >= 0 and ci.x.max() <= 1


def test_postprocess_median_removes_salt_noise():
    img = np.zeros((1, 1, 9, 9), np.float32)
    img[0, 0, 4, 4] = 1.0
    assert postprocess(img, "median").max() == 0.0
    assert postprocess(img, "none") is img
