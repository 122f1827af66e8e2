"""Randomness that a DP guarantee can rest on: secret noise and Poisson masks.

The adversary of a DP release knows the code, ``params.yaml`` (including its public ``seed``) and
every released artifact. Noise drawn from a generator seeded by that public seed can be regenerated
and subtracted, which turns every "noisy" release into the exact statistic. So every
privacy-relevant draw (Poisson masks and Gaussian noise of every mechanism) comes from a
:class:`NoiseSource`:

* :class:`SecureSource` (``privacy.randomness: secure``, the default): the ChaCha20 keystream of the
  ``cryptography`` package under a 32-byte master key from the operating system's CSPRNG
  (``os.urandom``). The keystream is a sequence of *segments* of ``blocks_per_key`` 64-byte blocks
  (2^30 blocks, 64 GiB, each): segment ``i`` is ChaCha20 under its own 32-byte key and 12-byte
  nonce, both derived from the master key by HKDF-SHA256 with ``i`` in the info string, and its
  32-bit block counter starts at 0, so it never reaches the 2^32 blocks at which ``cryptography``
  raises. Ranks holding the same master key (:meth:`SecureSource.shared_key`) derive the same
  segments and draw identical streams. The keys live in memory only: never in a file, a log, a
  checkpoint or a notebook (the object refuses to be pickled or copied and its ``repr`` hides
  them).
* :class:`SeededSource` (``privacy.randomness: seeded``): numpy's PCG64 seeded from the public seed
  and a stream name. Bit-identical replays for tests and debugging only: a seeded run is **not** a
  private release (its ledger and metrics say ``"private": false``).

Both build every draw from their uniforms the same way (:class:`_Draws`). A uniform is
``(k + 1/2) / 2^52`` for 52 random bits ``k``: exactly representable, strictly inside (0, 1). A
Bernoulli(p) mask entry is ``u < p``. Gaussians are hardened against the floating-point attack on
Gaussian samplers (Jin et al. 2022) by the construction of opacus' secure mode (Holohan & Braghin
2021): each N(0, 1) value is the sum of 4 independent standard normals divided by 2. The 4 summands
of one value come from 4 separate Box-Muller draws, each with its own pair of uniforms (its own
radius and angle); the other member of each Box-Muller pair goes to a different value (or,
for the last pair of an odd count, is dropped).

Everything that is not privacy-relevant (initialisation, the split, augmentation, the K diffusion
noise draws inside each example's loss, sampling) keeps the public seed.
"""

from __future__ import annotations

import os
import zlib
from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np

from easyhard.config import RANDOMNESS

_TWO_POW_52 = float(2**52)
_BLOCK = 64  # bytes of one ChaCha20 block: the 32-bit counter counts these
_MASTER_BYTES = 32


class NoiseSource(Protocol):
    """Where a mechanism's Gaussian noise and Poisson masks come from."""

    #: True when the draws are secret (a DP release); False for seeded replays.
    private: bool

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        """Independent N(0, std^2) draws (float64) of ``shape``."""
        ...

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        """``n`` independent Bernoulli(p) draws (bool): a Poisson-sampling mask."""
        ...

    def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
        """The Gaussian mechanism's output ``exact + N(0, std^2)`` (float64): every mechanism adds
        its noise through this one call, so its released value is this call's return value."""
        ...

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint may keep to resume the stream (None: nothing, draw fresh)."""
        ...

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`state` (a no-op for secure sources)."""
        ...


def _size(shape: int | tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    return shape, int(np.prod(shape, dtype=np.int64))


def open_uniform(k: np.ndarray) -> np.ndarray:
    """52-bit integers ``k`` -> ``(k + 1/2) / 2^52`` (float64, exact): uniforms in (0, 1)."""
    return (k.astype(np.float64) + 0.5) / _TWO_POW_52


def box_muller(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Pairs of uniforms ``(u1[j], u2[j])`` -> ``r_j cos t_j`` then ``r_j sin t_j`` (all j), with
    ``r_j = sqrt(-2 ln u1[j])`` and ``t_j = 2 pi u2[j]``: twice as many independent N(0, 1)."""
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])


class _Draws(ABC):
    """Normals, masks and the Gaussian mechanism, built from ``uniform`` (one construction)."""

    @abstractmethod
    def uniform(self, n: int) -> np.ndarray:
        """``n`` independent uniforms in the open interval (0, 1)."""

    def standard_normal(self, n: int) -> np.ndarray:
        """``n`` N(0, 1) values by Box-Muller (not hardened; see :meth:`normal`): value ``j`` and
        value ``j + ceil(n/2)`` are the two members of the pair drawn from uniforms ``j`` and
        ``ceil(n/2) + j``."""
        half = (int(n) + 1) // 2
        u = self.uniform(2 * half)
        return box_muller(u[:half], u[half:])[: int(n)]

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        """N(0, std^2) values: ``(z_1 + z_2 + z_3 + z_4) / 2`` (Holohan & Braghin 2021), each
        ``z_k`` from its own :meth:`standard_normal` call, so the 4 summands of one value come
        from 4 different pairs of uniforms (8 uniforms in all)."""
        shape, n = _size(shape)
        z = self.standard_normal(n)
        for _ in range(3):
            z += self.standard_normal(n)
        return (z * (float(std) / 2.0)).reshape(shape)

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        """``n`` independent Bernoulli(p) draws: ``u < p`` for fresh uniforms ``u``."""
        return self.uniform(int(n)) < float(p)

    def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
        """``exact + N(0, std^2)`` (float64), the one way mechanisms add noise."""
        exact = np.asarray(exact, dtype=np.float64)
        return exact + self.normal(exact.shape, std)


class SecureSource(_Draws):
    """ChaCha20 keystream under a master key from ``os.urandom``: unpredictable without the key.

    ``key`` (32 bytes) may be given only to share one stream between data-parallel ranks in memory
    (:meth:`shared_key`); it is never stored. The keystream is rekeyed every ``blocks_per_key``
    64-byte blocks (a class attribute, kept far below ChaCha20's 2^32-block counter; tests lower
    it to cross many rekeys); segment ``i``'s key and nonce are HKDF-SHA256 of the master key with
    ``i`` in the info string, so equal master keys give equal streams across rekeys.
    """

    private = True
    #: 64-byte blocks drawn under one derived key (2^30 blocks = 64 GiB; must stay below 2^32).
    blocks_per_key: int = 2**30

    def __init__(self, key: bytes | None = None) -> None:
        master = os.urandom(_MASTER_BYTES) if key is None else bytes(key)
        if len(master) != _MASTER_BYTES:
            raise ValueError(f"SecureSource: the key must be {_MASTER_BYTES} bytes")
        self._master = master
        self._segment = -1
        self._rekey()

    def __repr__(self) -> str:
        return "SecureSource(<secret key>)"

    def __reduce__(self) -> Any:
        raise TypeError("a SecureSource holds a secret key and cannot be pickled or copied")

    def __deepcopy__(self, memo: dict) -> Any:
        raise TypeError("a SecureSource holds a secret key and cannot be copied")

    @staticmethod
    def shared_key() -> bytes:
        """A fresh 32-byte master key to hand to every rank's ``SecureSource(key)`` in memory."""
        return os.urandom(_MASTER_BYTES)

    def _segment_key(self, i: int) -> tuple[bytes, bytes]:
        """Segment ``i``'s ChaCha20 key (32 bytes) and 16-byte nonce: 4 zero bytes (the block
        counter, little-endian, starting at 0) + 12 derived nonce bytes."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        info = b"easyhard.SecureSource segment " + i.to_bytes(8, "little")
        okm = HKDF(hashes.SHA256(), length=44, salt=None, info=info).derive(self._master)
        return okm[:32], bytes(4) + okm[32:]

    def _rekey(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        if not 0 < self.blocks_per_key < 2**32:
            raise ValueError("SecureSource.blocks_per_key must be in [1, 2^32)")
        self._segment += 1
        key, nonce = self._segment_key(self._segment)
        self._stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
        self._used = 0  # bytes drawn under this segment's key

    def _keystream(self, nbytes: int) -> bytes:
        """The next ``nbytes`` bytes of the stream, rekeying at every segment boundary."""
        parts = []
        while nbytes > 0:
            room = self.blocks_per_key * _BLOCK - self._used
            if room <= 0:
                self._rekey()
                continue
            take = min(room, nbytes)
            parts.append(self._stream.update(bytes(take)))
            self._used += take
            nbytes -= take
        return b"".join(parts)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniforms in the open interval (0, 1) from the top 52 bits of 8 keystream bytes."""
        k = np.frombuffer(self._keystream(8 * int(n)), dtype=np.uint64) >> np.uint64(12)
        return open_uniform(k)

    def state(self) -> None:
        return None  # the key is never saved: a resumed run draws fresh secret noise

    def restore(self, state: dict[str, Any] | None) -> None:
        return None


class SeededSource(_Draws):
    """numpy PCG64 seeded from the public ``seed`` and a ``stream`` name: replayable by anyone.

    For tests and bit-identical replays; never a private release. Same construction of normals
    and masks as :class:`SecureSource`, from PCG64's 52-bit integers.
    """

    private = False

    def __init__(self, seed: int, stream: str) -> None:
        self.stream = stream
        entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode())]
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))

    def __repr__(self) -> str:
        return f"SeededSource(stream={self.stream!r}, NOT PRIVATE)"

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniforms in the open interval (0, 1), as :meth:`SecureSource.uniform`."""
        return open_uniform(self._rng.integers(0, 2**52, size=int(n), dtype=np.uint64))

    def state(self) -> dict[str, Any]:
        return self._rng.bit_generator.state

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self._rng.bit_generator.state = state


def noise_source(randomness: str, seed: int, stream: str, key: bytes | None = None) -> NoiseSource:
    """The source a mechanism draws from: ``secure`` (secret) or ``seeded`` (public seed, replays).

    ``stream`` names the mechanism (e.g. ``"central"``, ``"dp_sgd"``) so that seeded streams of
    different mechanisms are independent; ``key`` shares one secure stream between ranks.
    """
    if randomness == "secure":
        return SecureSource(key)
    if randomness == "seeded":
        return SeededSource(seed, stream)
    raise ValueError(
        f"privacy.randomness must be one of {', '.join(RANDOMNESS)}; got {randomness!r}"
    )
