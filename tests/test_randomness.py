"""The noise sources (issue 19): a secure stream never crashes, never repeats, stays uniform and
identical across ranks past every rekey; each Gaussian sums 4 independent Box-Muller draws."""

from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from easyhard.privacy.randomness import SecureSource, SeededSource, open_uniform

BLOCK = 64


class Small(SecureSource):
    """A source that rekeys every 3 blocks (192 bytes, 24 uniforms): many rekeys per test."""

    blocks_per_key = 3


def _blocks(stream: bytes) -> list[bytes]:
    return [stream[i : i + BLOCK] for i in range(0, len(stream), BLOCK)]


def test_chacha20_raises_when_its_counter_overflows():
    """The library behaviour the segment layout avoids: a 16-byte nonce starts with the 32-bit
    block counter; started near 2^32 (a random nonce can be), the cipher raises mid-stream."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    enc = Cipher(algorithms.ChaCha20(bytes(32), b"\xff" * 4 + bytes(12)), mode=None).encryptor()
    enc.update(bytes(BLOCK))  # counter 2^32 - 1: the last block
    with pytest.raises(ValueError, match="overflow"):
        enc.update(bytes(BLOCK))


def test_every_segment_starts_its_counter_at_zero_and_has_room():
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    s = SecureSource()
    assert 0 < SecureSource.blocks_per_key <= 2**31  # far below the 2^32 the counter holds
    keys = [s._segment_key(i) for i in range(50)]
    assert all(nonce[:4] == bytes(4) and len(nonce) == 16 for _, nonce in keys)
    assert len({k for k, _ in keys}) == 50 and len({n for _, n in keys}) == 50
    # the stream is exactly ChaCha20 under those keys from counter 0, segment after segment
    t = Small(s._master)
    stream = t._keystream(5 * 3 * BLOCK)
    for i in range(5):
        key, nonce = s._segment_key(i)
        enc = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
        assert stream[i * 3 * BLOCK : (i + 1) * 3 * BLOCK] == enc.update(bytes(3 * BLOCK))


def test_stream_crosses_many_rekeys_without_repeating():
    s = Small()
    sizes = np.random.default_rng(0).integers(1, 500, 400)  # chunks that straddle boundaries
    stream = b"".join(s._keystream(int(m)) for m in sizes)
    assert len(stream) == sizes.sum() and s._segment == (len(stream) - 1) // (3 * BLOCK)
    assert s._segment > 300
    blocks = _blocks(stream[: len(stream) // BLOCK * BLOCK])
    assert len(set(blocks)) == len(blocks)  # no 64-byte block twice, within or across segments
    other = _blocks(Small()._keystream(len(blocks) * BLOCK))
    assert not set(blocks) & set(other)  # two sources share no block


def test_uniforms_and_normals_stay_uniform_and_normal_across_rekeys():
    s = Small()
    u = s.uniform(200_000)  # ~8300 rekeys
    assert 0 < u.min() and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    counts = np.bincount((u * 100).astype(int), minlength=100)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert abs(s.bernoulli(200_000, 0.3).mean() - 0.3) < 0.005
    z = s.normal(200_000)
    assert stats.kstest(z, "norm").pvalue > 1e-4


def test_ranks_with_one_key_draw_identical_streams_past_rekeys():
    key = SecureSource.shared_key()
    assert len(key) == 32
    a, b = Small(key), Small(key)
    # the same calls on two ranks: equal draws, also after the 100s of rekeys in between
    for n in (7, 1000, 3, 4096):
        assert np.array_equal(a.normal(n, 2.0), b.normal(n, 2.0))
        assert np.array_equal(a.bernoulli(n, 0.1), b.bernoulli(n, 0.1))
    assert a._segment == b._segment > 100
    # the stream depends only on the key and the position, not on how draws are chunked
    c, d = Small(key), Small(key)
    assert c._keystream(5000) == d._keystream(1234) + d._keystream(3766)
    assert SecureSource(key).uniform(100).tolist() == SecureSource(key).uniform(100).tolist()
    assert not np.array_equal(Small().uniform(100), Small().uniform(100))
    with pytest.raises(ValueError):
        SecureSource(bytes(48))


def test_open_uniform_is_exact_and_strictly_inside():
    k = np.array([0, 1, 2**51, 2**52 - 1], dtype=np.uint64)
    u = open_uniform(k)
    assert 0 < u.min() and u.max() < 1
    for ki, ui in zip(k.tolist(), u.tolist(), strict=True):
        assert Fraction(ui) == Fraction(2 * ki + 1, 2**53)


def _sources():
    return [SecureSource(), Small(), SeededSource(3, "dp_sgd")]


@pytest.mark.parametrize("n", [1, 5, 6])
@pytest.mark.parametrize("which", range(3))
def test_each_gaussian_sums_four_box_muller_draws_with_their_own_uniforms(which, n):
    """A fake uniform stream; changing one uniform shows which outputs it feeds. Each output must
    depend on exactly 8 uniforms: 4 radii and 4 angles, i.e. 4 separate Box-Muller pairs (the
    old construction summed both members of 2 pairs: 4 uniforms, 2 radii)."""
    src = _sources()[which]
    base = np.random.default_rng(n).uniform(0.05, 0.95, 64)
    used = [0]

    def out(stream: np.ndarray) -> np.ndarray:
        pos = [0]

        def fake(m: int) -> np.ndarray:
            pos[0] += m
            return stream[pos[0] - m : pos[0]]

        src.uniform = fake
        z = src.normal(n)
        used[0] = pos[0]
        return z

    ref = out(base)
    assert used[0] == 8 * ((n + 1) // 2)  # 4 Box-Muller calls of ceil(n/2) pairs each
    deps = [set() for _ in range(n)]
    for j in range(used[0]):
        moved = base.copy()
        moved[j] = 1.0 - moved[j] / 2
        for i in np.flatnonzero(out(moved) != ref):
            deps[i].add(j)
    assert all(len(d) == 8 for d in deps), [sorted(d) for d in deps]
    # and the value itself: half the sum of 4 Box-Muller values of those pairs
    half = (n + 1) // 2
    u = base[: 8 * half].reshape(4, 2 * half)
    r = np.sqrt(-2 * np.log(u[:, :half]))
    t = 2 * np.pi * u[:, half:]
    z = np.concatenate([r * np.cos(t), r * np.sin(t)], axis=1)[:, :n]
    assert np.allclose(ref, z.sum(0) / 2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("which", range(3))
def test_gaussian_moments(which):
    src = _sources()[which]
    z = src.normal((400, 1000), std=3.0) / 3.0
    assert z.shape == (400, 1000)
    z = z.ravel()
    assert abs(z.mean()) < 0.01  # standard error 0.0016
    assert abs(z.var() - 1) < 0.015  # standard error 0.0022
    assert abs(stats.skew(z)) < 0.03  # standard error 0.0039
    assert abs(stats.kurtosis(z)) < 0.06  # excess kurtosis; standard error 0.0077
    assert stats.kstest(z, "norm").pvalue > 1e-4
    g = src.gaussian(np.full(1000, 5.0), 0.0)
    assert np.array_equal(g, np.full(1000, 5.0))
