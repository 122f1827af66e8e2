"""Randomness that a DP guarantee can rest on: secret noise and Poisson masks.

The adversary of a DP release knows the code, ``params.yaml`` (including its public ``seed``) and
every released artifact. Noise drawn from a generator seeded by that public seed can be regenerated
and subtracted, which turns every "noisy" release into the exact statistic. So every
privacy-relevant draw (Poisson masks and Gaussian noise of every mechanism) comes from a
:class:`NoiseSource`:

* :class:`SecureSource` (``privacy.randomness: secure``, the default): the ChaCha20 keystream of the
  ``cryptography`` package, keyed with 32 bytes from the operating system's CSPRNG
  (``os.urandom``). The key lives in memory only: it is never written to a file, a log, a
  checkpoint or a notebook (the object refuses to be pickled or copied and its ``repr`` hides it).
  Uniforms use 53 keystream bits each; Gaussians are hardened against the floating-point attack on
  Gaussian samplers (Jin et al. 2022) by the construction opacus' secure mode uses (Holohan &
  Braghin 2021): each N(0, 1) value is the sum of 4 independent Box-Muller draws divided by 2.
* :class:`SeededSource` (``privacy.randomness: seeded``): numpy's PCG64 seeded from the public seed
  and a stream name. Bit-identical replays for tests and debugging only: a seeded run is **not** a
  private release (its ledger and metrics say ``"private": false``).

Everything that is not privacy-relevant (initialisation, the split, augmentation, the K diffusion
noise draws inside each example's loss, sampling) keeps the public seed.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Protocol

import numpy as np

from easyhard.config import RANDOMNESS

_TWO_POW_53 = float(2**53)


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


def _box_muller(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Two arrays of uniforms in (0, 1) -> twice as many independent N(0, 1) values."""
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])


class SecureSource:
    """ChaCha20 keystream keyed from ``os.urandom``: unpredictable to anyone without the key.

    ``key`` may be given only to share one stream between data-parallel ranks in memory
    (:meth:`shared_key`); it is never stored.
    """

    private = True

    def __init__(self, key: bytes | None = None) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        key = os.urandom(48) if key is None else bytes(key)
        if len(key) != 48:
            raise ValueError("SecureSource: the key material must be 48 bytes (key + nonce)")
        cipher = Cipher(algorithms.ChaCha20(key[:32], key[32:]), mode=None)
        self._stream = cipher.encryptor()

    def __repr__(self) -> str:
        return "SecureSource(<secret key>)"

    def __reduce__(self) -> Any:
        raise TypeError("a SecureSource holds a secret key and cannot be pickled or copied")

    def __deepcopy__(self, memo: dict) -> Any:
        raise TypeError("a SecureSource holds a secret key and cannot be copied")

    @staticmethod
    def shared_key() -> bytes:
        """Fresh key material (48 bytes) to hand to every rank's ``SecureSource(key)`` in memory."""
        return os.urandom(48)

    def _uint64(self, n: int) -> np.ndarray:
        return np.frombuffer(self._stream.update(bytes(8 * n)), dtype=np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniforms in the open interval (0, 1): (k + 1/2) / 2^53, k from 53 keystream bits."""
        k = self._uint64(n) >> np.uint64(11)
        return (k.astype(np.float64) + 0.5) / _TWO_POW_53

    def standard_normal(self, n: int) -> np.ndarray:
        """``n`` N(0, 1) values by Box-Muller (not hardened; see :meth:`normal`)."""
        half = (n + 1) // 2
        u = self.uniform(2 * half)
        return _box_muller(u[:half], u[half:])[:n]

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        shape, n = _size(shape)
        z = self.standard_normal(4 * n).reshape(4, n).sum(0) / 2.0  # Holohan & Braghin 2021
        return (z * float(std)).reshape(shape)

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        return self.uniform(int(n)) < float(p)

    def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
        exact = np.asarray(exact, dtype=np.float64)
        return exact + self.normal(exact.shape, std)

    def state(self) -> None:
        return None  # the key is never saved: a resumed run draws fresh secret noise

    def restore(self, state: dict[str, Any] | None) -> None:
        return None


class SeededSource:
    """numpy PCG64 seeded from the public ``seed`` and a ``stream`` name: replayable by anyone.

    For tests and bit-identical replays; never a private release.
    """

    private = False

    def __init__(self, seed: int, stream: str) -> None:
        self.stream = stream
        entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode())]
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))

    def __repr__(self) -> str:
        return f"SeededSource(stream={self.stream!r}, NOT PRIVATE)"

    def uniform(self, n: int) -> np.ndarray:
        return self._rng.random(int(n))

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        shape, n = _size(shape)
        z = self._rng.standard_normal((4, n)).sum(0) / 2.0  # same construction as SecureSource
        return (z * float(std)).reshape(shape)

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        return self._rng.random(int(n)) < float(p)

    def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
        exact = np.asarray(exact, dtype=np.float64)
        return exact + self.normal(exact.shape, std)

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
