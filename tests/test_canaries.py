"""The white-box audit of the release's fine-tuning can fail: correct code passes, broken code does not.

Everything runs at the DEFAULT privacy params (eps 10, delta 1e-5, declared N 4,000, q 0.05,
100 steps, C 1, m = 1,000 canaries) through ``easyhard.train.dp_finetune``; only the network and
the fillers are reduced (the audit's layer types on 8x8 generated images, 40 fillers) to keep the
file near 2 minutes on 2 cores. Each broken implementation (noise sigma/10, seeded noise the
auditor replays, clipping off) must stop the stage with one AuditFailure line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from easyhard import dpsgd
from easyhard.canaries import (
    AuditFailure,
    Coordinates,
    DiracCanaries,
    StepRecorder,
    canary_ids,
    canary_images,
)
from easyhard.config import PARAMS_FILE, load_params
from easyhard.data import ImageSet, save_npz
from easyhard.dpsgd import Released
from easyhard.edm import to_model
from easyhard.pipeline import audit
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import layout, new_ledger, plan
from easyhard.privacy import Ledger
from easyhard.privacy.randomness import SecureSource, SeededSource

SMALL = {
    "network": {"norm_groups": 4},
    "audit": {"channels": [4, 8], "attention": [False, True], "fillers": 40},
}


def _repo(tmp_path, **privacy) -> tuple:
    params = load_params(PARAMS_FILE, {**SMALL, "privacy": privacy} if privacy else SMALL)
    paths = Paths(tmp_path)
    rng = np.random.default_rng(1)
    x = rng.random((60, 1, 8, 8), dtype=np.float32)
    save_npz(paths.test, ImageSet(x, np.arange(60) % 10, tuple(str(i) for i in range(10))))
    ledger = new_ledger(params)
    ledger.add(plan(params, method_row("dpdm"), layout(params, paths)).dp_sgd)  # eps 10
    ledger.save(paths.ledger("dpdm"))
    return params, paths


# -- the pieces -------------------------------------------------------------------------------


def test_canary_images_carry_their_index_and_fillers_none():
    m = 1000
    imgs = canary_images(m, (1, 8, 8))
    fillers = torch.rand(5, 1, 8, 8)
    fillers[0] = 1.0  # the brightest real image is still not a canary
    ids = canary_ids(to_model(torch.cat([imgs, fillers])), m)
    assert torch.equal(ids[:m], torch.arange(m)) and (ids[m:] == -1).all()


def test_hook_replaces_canary_gradients_by_diracs_and_keeps_fillers():
    shapes = {"a": (3, 4), "b": (5,)}
    coords = Coordinates.spread(shapes, 6, seed=0)
    flat = sorted(zip(coords.owner.tolist(), coords.local.tolist(), strict=True))
    assert len(set(flat)) == 6  # distinct coordinates
    hook = DiracCanaries(6, 10.0, coords, "denoiser.")
    x = to_model(torch.cat([canary_images(6, (1, 2, 2))[[4, 1]], torch.rand(1, 1, 2, 2)]))
    grads = {"denoiser.a": torch.randn(3, 3, 4), "denoiser.b": torch.randn(3, 5)}
    filler = {k: v[2].clone() for k, v in grads.items()}
    out = hook(grads, (x,))
    for row, i in ((0, 4), (1, 1)):
        vec = torch.cat([out["denoiser.a"][row].reshape(-1), out["denoiser.b"][row]])
        expected = torch.zeros(17)
        expected[int(coords.local[i]) + (12 if coords.owner[i] == 1 else 0)] = 10.0
        assert torch.equal(vec, expected)
    assert all(torch.equal(out[k][2], filler[k]) for k in grads)


def test_recorder_subtracts_the_replayed_noise_and_rewinds_on_resume():
    coords = Coordinates.spread({"w": (50,)}, 10, seed=0)
    noise, replay = SeededSource(3, "dp_sgd"), SeededSource(3, "dp_sgd")
    rec = StepRecorder(coords, "", records=20, sample_rate=0.5, replay=replay)
    exact = np.zeros(50)
    exact[coords.local[:3]] = 1.0
    states = []
    for _ in range(3):
        states.append(noise.state())
        noise.bernoulli(20, 0.5)
        released = torch.from_numpy(noise.gaussian(exact, 2.0)) / 4.0
        rec(Released({"w": released}, 2.0, 2.0, 1.0, 4.0, 7))
    assert np.allclose(np.stack(rec.values), exact[coords.local], atol=1e-9)
    rec.truncate(1)  # the run resumes after step 1: the stream is rewound there
    noise.restore(states[1])
    noise.bernoulli(20, 0.5)
    rec(Released({"w": torch.from_numpy(noise.gaussian(exact, 2.0)) / 4.0}, 2.0, 2.0, 1.0, 4.0, 7))
    assert len(rec.values) == 2 and np.allclose(rec.values[1], exact[coords.local], atol=1e-9)


# -- the stage at the default privacy params ----------------------------------------------------


def test_correct_code_passes_and_the_release_run_is_inconclusive(tmp_path):
    params, paths = _repo(tmp_path)
    report, runs = audit.white_box(params, paths, "dpdm", Ledger.load(paths.ledger("dpdm")))
    res = report["resolvable"]
    assert res["verdict"] == "conclusive-pass" and res["eps_hat"] <= res["claimed_epsilon"]
    assert res["claimed_epsilon"] == pytest.approx(1.0, rel=0.02)
    assert report["max_epsilon"] == pytest.approx(5.7823, abs=1e-3)
    rel = report["release"]
    assert rel["claimed_epsilon"] > report["max_epsilon"] and rel["verdict"] == "inconclusive"
    assert rel["canaries_needed"]["m"] is None  # no m reaches ~10 at delta = 1e-5
    assert report["verdict"] == "conclusive-pass"
    obs = report["observed"]  # what dp_finetune actually used, equal to the ledger's
    assert obs["steps"] == 100 and obs["clip"] == 1.0 and obs["normaliser"] == 200.0
    assert obs["resumed_from"] == 50  # cut after 55 steps, resumed from the step-50 checkpoint
    # the canaries are visible at all (IN scores higher on average): the audit has power
    r = runs["resolvable"]
    assert r.scores[r.included].mean() > r.scores[~r.included].mean()


def _fails(tmp_path, **privacy) -> str:
    params, paths = _repo(tmp_path, **privacy)
    with pytest.raises(AuditFailure) as err:
        audit.run(params, paths, "dpdm")
    line = str(err.value)
    assert "\n" not in line and line.startswith("dpdm: ")
    written = json.loads(paths.audit_metrics("dpdm").read_text())
    assert written["verdict"] == "fail" and written["reason"] in line
    assert "blackbox_auc" not in json.dumps(written)
    return line


def test_noise_sigma_over_10_fails(tmp_path, monkeypatch):
    """The noise source draws a tenth of the std DP-SGD asks for: invisible to the observer, the
    resolvable run's eps_hat exceeds its claim."""

    class Quiet(SecureSource):
        def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
            return super().gaussian(exact, std / 10)

    monkeypatch.setattr(audit, "noise_for", lambda params, stream: Quiet())
    assert "the audit certifies eps >=" in _fails(tmp_path)


def test_noise_std_below_the_ledger_fails_on_the_observed_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(
        dpsgd.DPSGD, "noise_std", lambda self: self.noise_multiplier * self.clip / 10
    )
    assert "noise_std" in _fails(tmp_path)


def test_seeded_noise_fails_and_the_replay_recovers_the_canaries(tmp_path):
    line = _fails(tmp_path, randomness="seeded")
    assert "replayable from the public seed" in line
    eps_hat = float(line.split("eps_hat = ")[1].split()[0])
    assert eps_hat > 3.0  # the noise subtracted, the canaries stand out


def test_clipping_disabled_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(dpsgd, "clip_factors", lambda norms, clip: norms.new_ones(norms.shape))
    assert "the audit certifies eps >=" in _fails(tmp_path)


def test_cli_audits_settings_through_dp_finetune():
    import subprocess
    import sys

    from easyhard.privacy import calibrate_noise_multiplier

    sigma = calibrate_noise_multiplier(1.0, 1e-5, sample_rate=0.2, steps=20).noise_multiplier
    cmd = [sys.executable, "-m", "easyhard.privacy", "audit", "--sigma", str(sigma)]
    cmd += ["--sample-rate", "0.2", "--steps", "20", "--dataset-size", "1000"]
    cmd += ["--canaries", "200", "--fillers", "10"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("epsilon_lower_bound=")
    assert 0.0 <= float(last.split("=")[1]) < 1.0  # honest DP-SGD at claimed eps = 1
    assert "conclusive-pass" in done.stdout and "through dp_finetune: 20 steps" in done.stdout


def _small_run(world=None):
    from dataclasses import replace

    from easyhard.canaries import canary_finetune
    from easyhard.modelfile import build_denoiser
    from easyhard.world import SINGLE_PROCESS

    params = load_params(PARAMS_FILE, SMALL)
    net = replace(params.network, channels=(4, 8), attention=(False, True))
    torch.manual_seed(0)
    den = build_denoiser(net, (1, 8, 8), 10, params.edm.sigma_data)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(10, 1, 8, 8, generator=g), torch.arange(10) % 10
    cfg = replace(params.finetune, sample_rate=0.2, physical_batch=8)
    run = canary_finetune(
        den, x, y, m=60, canary_norm=10.0, coin_seed=0, cfg=cfg, edm=params.edm,
        noise_multiplier=1.0, steps=6, expected_batch=8.0, noise=SeededSource(5, "dp_sgd"),
        seed=0, world=world or SINGLE_PROCESS,
    )  # fmt: skip
    return run.scores


def _rank(rank: int, size: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from easyhard.world import World

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        np.save(f"{out}.{rank}.npy", _small_run(World(rank, size)))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_single_process_canary_scores(tmp_path):
    """Each rank's hook rewrites its shard's canaries; the observer sees the all-reduced step."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(tmp_path / "scores")
    mp.spawn(_rank, args=(2, port, out), nprocs=2, join=True)
    single = _small_run()
    for r in range(2):
        assert np.allclose(np.load(f"{out}.{r}.npy"), single, atol=1e-4)


def test_observed_settings_must_be_the_ledgers():
    from easyhard.canaries import CanaryRun
    from easyhard.privacy import Mechanism

    sgd = Mechanism("dp_sgd", 0.64, 0.05, 100)

    def observed(**kw) -> CanaryRun:
        base = dict(
            scores=np.zeros(3), included=np.zeros(3, bool), noise_multiplier=(0.64,),
            noise_std=(0.64,), clip=(1.0,), normaliser=(200.0,), steps=100, records=700,
            sampled=3500, resumed_from=None,
        )  # fmt: skip
        return CanaryRun(**{**base, **kw})

    assert audit.settings_mismatch(observed(), sgd, 1.0, 4000) is None
    cases = {
        "noise_multiplier": observed(noise_multiplier=(0.064,)),
        "clip": observed(clip=(2.0,)),
        "normaliser": observed(normaliser=(175.0,)),  # len(data) instead of the declared N
        "released 99 steps": observed(steps=99),
        "sampled 7000": observed(sampled=7000),  # q = 0.1, not 0.05
    }
    for words, run in cases.items():
        line = audit.settings_mismatch(run, sgd, 1.0, 4000)
        assert line is not None and words in line and "\n" not in line, (words, line)
    # a changing setting (e.g. sigma modified mid-run) is a mismatch too
    assert "noise_multiplier" in audit.settings_mismatch(
        observed(noise_multiplier=(0.32, 0.64)), sgd, 1.0, 4000
    )
