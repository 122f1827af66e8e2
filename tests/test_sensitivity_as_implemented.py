"""The DP-SGD that runs is the DP-SGD that is analysed: the neighbouring-dataset check, as run.

The subsampled Gaussian analysis of DP fine-tuning (:mod:`easyhard.dpsgd`, "Sensitivity") assumes
that, for add/remove neighbours D and D' = D + {x*} with the same Poisson masks for the shared
records, the pre-noise clipped gradient sum of a step changes by x*'s clipped term (norm <= C) when
the step samples x* and by exactly 0 when it does not. Here the real loop
(:func:`easyhard.train.dp_finetune` with the default network, K, clipping norm and gradient engine
of ``params.yaml``) runs 20 steps on MNIST digits for D and D', x* inserted in the middle of D (so
every later record's position shifts). A replay source prescribes the masks and adds zero noise,
recording each pre-noise sum; the D' run is fed D's released gradients, so both runs hold
bit-identical parameters at every step and each step's sums are compared from the same model.

The test of the test puts back the old shared diffusion stream (one generator consumed in batch
order) and a position-keyed derivation: the same check must fail for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

import easyhard.train as train_module
from easyhard.config import defaults
from easyhard.datasets import load_mnist_offline
from easyhard.edm import draw_noise
from easyhard.modelfile import build_denoiser
from easyhard.train import dp_finetune

DEFAULTS = defaults()  # params.yaml: the only place defaults live

N, Q, STEPS, AT = 48, 0.25, 20, 24  # |D|, Poisson rate, steps, x*'s position in D'
#: steps that sample x*: an early one (so a shared stream would shift every later draw) and more
SAMPLED = {0, 3, 4, 9, 15}
TOL = 1e-4  # relative float slack on ||dS|| <= C (batch size changes the float summation order)


class ReplaySource:
    """A test NoiseSource: prescribed Poisson masks, zero noise; records every pre-noise value.

    ``released`` (optional) is what ``gaussian`` returns instead of its input, call by call."""

    private = False

    def __init__(self, masks: list[np.ndarray], released: list[np.ndarray] | None = None) -> None:
        self._masks: Iterator[np.ndarray] = iter(masks)
        self._released = None if released is None else iter(released)
        self.exact: list[np.ndarray] = []

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        mask = next(self._masks)
        assert len(mask) == n and p == Q
        return mask.copy()

    def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
        assert std > 0
        self.exact.append(np.array(exact, dtype=np.float64, copy=True))
        return self.exact[-1].copy() if self._released is None else next(self._released).copy()

    def normal(self, shape: int | tuple[int, ...], std: float = 1.0) -> np.ndarray:
        raise AssertionError("DP fine-tuning draws its noise through gaussian() only")

    def state(self) -> None:
        return None

    def restore(self, state: dict | None) -> None:
        return None


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """D (N MNIST digits) and D' = D with x* (another digit) inserted at position AT."""
    ds = load_mnist_offline()
    pick = np.random.default_rng(0).permutation(len(ds.y))[: N + 1]
    x, y = torch.as_tensor(ds.x[pick]), torch.as_tensor(ds.y[pick])
    order = [*range(AT), N, *range(AT, N)]  # x* = record N of the pick, at position AT in D'
    return x[:N], y[:N], x[order], y[order]


def _masks() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The same mask for every shared record; x*'s bit is 1 exactly in the SAMPLED steps."""
    rng = np.random.default_rng(1)
    d = [rng.random(N) < Q for _ in range(STEPS)]
    return d, [np.insert(m, AT, t in SAMPLED) for t, m in enumerate(d)]


def _finetune(x: torch.Tensor, y: torch.Tensor, source: ReplaySource) -> dict[str, torch.Tensor]:
    """STEPS steps of the real loop from the same initial model; returns the final parameters."""
    torch.manual_seed(0)  # the same initial model for both datasets
    den = build_denoiser(DEFAULTS.network, (1, 28, 28), 10, DEFAULTS.edm.sigma_data)
    dp_finetune(
        den,
        x,
        y,
        cfg=replace(DEFAULTS.finetune, sample_rate=Q),  # clip, engine, lr: the defaults
        edm=DEFAULTS.edm,
        noise_multiplier=1.0,  # any value > 0: the replay source adds none, it records the sums
        steps=STEPS,
        expected_batch=Q * N,
        noise=source,
        seed=DEFAULTS.seed,
        progress=False,
    )
    return den.state_dict()


def _per_step(exact: list[np.ndarray]) -> list[np.ndarray]:
    """One flat pre-noise clipped sum per step (gaussian is called once per parameter tensor)."""
    per = len(exact) // STEPS
    assert per * STEPS == len(exact)
    return [
        np.concatenate([e.ravel() for e in exact[t * per : (t + 1) * per]]) for t in range(STEPS)
    ]


def neighbour_differences() -> list[np.ndarray]:
    """dS_t = S_t(D') - S_t(D), every step from bit-identical parameters."""
    x, y, x2, y2 = _data()
    masks, masks2 = _masks()
    on_d = ReplaySource(masks)
    final = _finetune(x, y, on_d)
    on_d2 = ReplaySource(masks2, released=on_d.exact)  # D's updates: the same parameters
    final2 = _finetune(x2, y2, on_d2)
    assert all(torch.equal(final[k], final2[k]) for k in final)  # the coupling held to the end
    return [b - a for a, b in zip(_per_step(on_d.exact), _per_step(on_d2.exact), strict=True)]


def violations(delta: list[np.ndarray], clip: float) -> list[str]:
    """Where the analysed sensitivity fails: ||dS|| > C when x* is sampled, dS != 0 otherwise."""
    out = []
    for t, d in enumerate(delta):
        norm = float(np.linalg.norm(d))
        if t in SAMPLED and norm > clip * (1 + TOL):
            out.append(f"step {t} (x* sampled): ||dS|| = {norm:.4g} > C = {clip}")
        if t not in SAMPLED and np.any(d != 0):
            out.append(f"step {t} (x* not sampled): ||dS|| = {norm:.4g} != 0")
    return out


def test_pre_noise_sum_moves_by_at_most_c_and_by_exactly_zero_when_x_star_is_absent():
    clip = DEFAULTS.finetune.clip
    delta = neighbour_differences()
    assert violations(delta, clip) == []
    norms = [float(np.linalg.norm(d)) for d in delta]
    # x* contributes: its clipped term is there, in every step that samples it
    assert all(norms[t] > 0.1 * clip for t in SAMPLED)


class SharedStream:
    """The old design: one public generator (fresh at step 0 of each run) consumed in batch order;
    the record ids are ignored."""

    def __call__(self, ids: list[int], step: int, shape: tuple[int, ...], cfg: object) -> object:
        if step == 0:
            self.gen = torch.Generator().manual_seed(DEFAULTS.seed + 1)
        return draw_noise(len(ids), shape, cfg, self.gen)


def test_the_check_catches_a_shared_diffusion_stream(monkeypatch):
    monkeypatch.setattr(train_module, "draw_noise_per_record", SharedStream())
    delta = neighbour_differences()
    found = violations(delta, DEFAULTS.finetune.clip)
    assert any("not sampled" in v for v in found), found
    # as in the finding: a step without x* moves by more than one clipped gradient
    absent = [float(np.linalg.norm(d)) for t, d in enumerate(delta) if t not in SAMPLED]
    assert max(absent) > DEFAULTS.finetune.clip


def test_the_check_catches_position_keyed_draws(monkeypatch):
    """Ids from a record's index (not its content): x* shifts every later record's draws."""
    monkeypatch.setattr(train_module, "record_ids", lambda x, y, seed: list(range(len(x))))
    found = violations(neighbour_differences(), DEFAULTS.finetune.clip)
    assert any("not sampled" in v for v in found), found


@pytest.mark.parametrize("layer", ["dropout", "batchnorm"])
def test_layers_that_mix_examples_or_draw_from_a_shared_stream_are_refused(layer):
    torch.manual_seed(0)
    net = replace(DEFAULTS.network, dropout=0.1) if layer == "dropout" else DEFAULTS.network
    den = build_denoiser(net, (1, 28, 28), 10, DEFAULTS.edm.sigma_data)
    if layer == "batchnorm":
        den.unet.conv_in = torch.nn.Sequential(den.unet.conv_in, torch.nn.BatchNorm2d(16))
    x, y, _, _ = _data()
    with pytest.raises(ValueError, match="dropout" if layer == "dropout" else "BatchNorm"):
        dp_finetune(
            den,
            x,
            y,
            cfg=replace(DEFAULTS.finetune, sample_rate=Q),
            edm=DEFAULTS.edm,
            noise_multiplier=1.0,
            steps=1,
            expected_batch=Q * N,
            noise=ReplaySource([]),
            seed=DEFAULTS.seed,
            progress=False,
        )
