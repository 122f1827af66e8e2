"""The neighbouring-dataset check for the warm-up releases, over a whole stage as it runs.

``central_images.run`` and ``frequency.run`` are run on D and on D' = D + {x*} (x* stored in the
middle of ``train.npz``, so every later record's position shifts) with a zero-noise source that
gives every shared record the same Poisson bit in both runs and records each released statistic
(each ``gaussian(exact, std)`` call's ``exact``). Every released statistic must move by at most the
stated L2 sensitivity when x* is sampled, and by exactly 0 when it is not; the noise scale must not
move at all. The sensitivities are the reference values, computed here from public values:

* central ``mean``: ``sqrt(d) / (q N / K)`` with ``d`` the downsampled size; ``mode``: ``sqrt(d)``;
* frequency: ``1 / (q N / K)`` (unit-norm random Fourier features).

x* is the all-ones image, for which the mean query's bound is attained exactly, so the checks also
show the bound is tight rather than vacuous.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from easyhard import data as D
from easyhard.pipeline import central_images, frequency
from easyhard.pipeline.notebook import setup
from easyhard.schema import merge

ROOT = Path(__file__).resolve().parents[1]
N, K, SHAPE, AT, STAR_LABEL = 40, 4, (1, 28, 28), 17, 2
NOISE = 1.0  # noise multipliers of both warm-ups (fixed: no calibration)
BITS = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]  # x*'s bit in each of the central queries
PARAMS = {
    "seed": 5,
    "methods": ["dpfeta", "fetapro"],
    "privacy": {
        "epsilon": 100.0,
        "delta": 1e-3,
        "dataset_size": N,
        "size_tolerance": 0.1,
        "accountant": "pld",  # the fastest to calibrate DP-SGD in the plan each stage makes
    },
    "central": {
        "plan": "fixed",
        "noise_multiplier": NOISE,
        "budget_share": None,
        "queries": len(BITS),
    },
    "frequency": {
        "plan": "fixed",
        "noise_multiplier": NOISE,
        "budget_share": None,
        "images_per_class": 2,
    },
    "auxgen": {"steps": 2, "batch_per_class": 2},
}


class ZeroNoise:
    """Prescribed Poisson masks (``insert``: x*'s bits at position AT), no noise, every released
    statistic recorded with its noise std."""

    private = False

    def __init__(self, stream: str, masks: list[np.ndarray], bits: list[int] | None = None):
        self.stream, self.masks, self.bits = stream, masks, bits
        self.calls = 0
        self.released: list[tuple[np.ndarray, float]] = []

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        mask = self.masks[self.calls]
        if self.bits is not None:
            mask = np.insert(mask, AT, bool(self.bits[self.calls]))
        self.calls += 1
        assert len(mask) == n
        return mask.copy()

    def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
        self.released.append((np.array(exact, dtype=np.float64, copy=True), float(std)))
        return self.released[-1][0].copy()

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        raise AssertionError("the warm-ups add noise through gaussian() only")

    def state(self) -> None:
        return None

    def restore(self, state: dict | None) -> None:
        return None


def _datasets() -> tuple[D.ImageSet, D.ImageSet]:
    rng = np.random.default_rng(0)
    x = np.round(rng.random((N, *SHAPE)) * 255).astype(np.float32) / 255
    y = np.arange(N) % K
    classes = tuple("abcd")
    star = np.ones((1, *SHAPE), dtype=np.float32)
    d2 = D.ImageSet(np.insert(x, AT, star, axis=0), np.insert(y, AT, STAR_LABEL), classes)
    return D.ImageSet(x, y, classes), d2


def _repo(root: Path, train: D.ImageSet, extra: dict):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(merge(base, merge(PARAMS, extra))))
    params, paths = setup({}, root)
    D.save_npz(paths.train, train)
    D.save_npz(paths.test, D.ImageSet(train.x[:8], train.y[:8], train.classes))
    return params, paths


def _source(monkeypatch, module, source: ZeroNoise) -> None:
    def noise_for(params, stream, world=None):
        assert stream == source.stream
        return source

    monkeypatch.setattr(module, "noise_for", noise_for)


def _masks(q: float, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.random(N) < q for _ in range(count)]


def _check(d: ZeroNoise, d2: ZeroNoise, bits: list[int], sensitivity: float) -> list[float]:
    """Every released statistic: the same noise std, ||delta|| <= sensitivity when x* is sampled,
    delta == 0 exactly when it is not. Returns the norms ||delta|| / sensitivity."""
    assert len(d.released) == len(d2.released) == len(bits)
    ratios = []
    for (a, std_a), (b, std_b), bit in zip(d.released, d2.released, bits, strict=True):
        assert std_a == std_b == pytest.approx(NOISE * sensitivity, rel=1e-12)
        if bit:
            ratios.append(float(np.linalg.norm(b - a)) / sensitivity)
            assert ratios[-1] <= 1 + 1e-9
        else:
            assert np.array_equal(a, b), "x* not sampled, yet the released statistic moved"
            ratios.append(0.0)
    return ratios


@pytest.mark.parametrize("kind", ["mean", "mode"])
def test_central_stage_moves_by_at_most_its_sensitivity(tmp_path, monkeypatch, kind):
    q = 0.5
    dset, dset2 = _datasets()
    params, paths = _repo(tmp_path, dset, {"central": {"type": kind, "sample_rate": q}})
    masks = _masks(q, len(BITS))
    runs = []
    for train, bits in ((dset, None), (dset2, BITS)):
        D.save_npz(paths.train, train)  # the stage reads whichever dataset paths.train holds
        src = ZeroNoise("central", masks, bits)
        _source(monkeypatch, central_images, src)
        central_images.run(params, paths, "dpfeta")
        assert src.calls == len(BITS)
        runs.append(src)
    assert params.central.downsample == 4
    d = SHAPE[0] * (SHAPE[1] // 4) * (SHAPE[2] // 4)
    ref = math.sqrt(d) / (q * N / K) if kind == "mean" else math.sqrt(d)
    ratios = _check(*runs, BITS, ref)
    # attained: the all-ones x* adds exactly sqrt(d) / normaliser (mean); one count per value (mode)
    assert all(
        r == pytest.approx(1.0, rel=1e-9) for r, bit in zip(ratios, BITS, strict=True) if bit
    )


@pytest.mark.parametrize(("q", "bits"), [(0.5, [1, 0]), (1.0, [1])])
def test_frequency_stage_moves_by_at_most_its_sensitivity(tmp_path, monkeypatch, q, bits):
    """q < 1: one release with x* sampled, one without; q = 1: every record is in (no mask)."""
    dset, dset2 = _datasets()
    params, paths = _repo(tmp_path, dset, {"frequency": {"sample_rate": q}})
    _source(monkeypatch, central_images, ZeroNoise("central", _masks(0.5, len(BITS))))
    central_images.run(params, paths, "fetapro")  # the ledger so far, which the stage reads
    masks = _masks(q, 1)

    def release(train: D.ImageSet, bit: int | None) -> ZeroNoise:
        D.save_npz(paths.train, train)
        src = ZeroNoise("frequency", masks, None if bit is None or q == 1 else [bit])
        _source(monkeypatch, frequency, src)
        frequency.run(params, paths, "fetapro")
        assert src.calls == (1 if q < 1 else 0)  # q = 1: every record, no mask drawn
        return src

    on_d = release(dset, None)
    for bit in bits:
        ratios = _check(on_d, release(dset2, bit), [bit], 1.0 / (q * N / K))
        if bit:
            assert ratios[0] == pytest.approx(1.0, rel=1e-9)  # ||phi(x*)|| = 1: attained
