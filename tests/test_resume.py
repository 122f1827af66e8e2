"""Crash safety: a SIGKILLed fine-tuning resumes with the same ledger (seeded: the same weights)."""

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from easyhard.config import defaults
from easyhard.pipeline import central_images, finetune, frequency, prepare, pretrain
from easyhard.pipeline.notebook import setup
from easyhard.pipeline.paths import Paths
from easyhard.privacy import Ledger
from easyhard.schema import merge
from tests.test_pipeline import TINY, write_params

DEFAULTS = defaults()  # params.yaml: the only place defaults live

RESUME = merge(TINY, {"finetune": {"sample_rate": 0.05, "epochs": 1.5, "checkpoint_every": 1}})
SCRIPT = (
    "import sys\nfrom easyhard.pipeline import finetune, notebook\n"
    "params, paths = notebook.setup(root=sys.argv[1])\n"
    "finetune.run(params, paths, 'dpdm')\n"
)


def _prepared(root: Path, randomness: str) -> Path:
    write_params(root, merge(RESUME, {"privacy": {"randomness": randomness}}))
    params, paths = setup({}, root)
    prepare.run(params, paths)
    central_images.run(params, paths, "dpdm")
    frequency.run(params, paths, "dpdm")
    pretrain.run(params, paths, "dpdm")
    return root


@pytest.fixture(scope="module", params=["seeded", "secure"])
def prepared(request, tmp_path_factory):
    return request.param, _prepared(tmp_path_factory.mktemp(request.param), request.param)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def test_sigkill_then_rerun_counts_every_released_step_once(prepared, tmp_path):
    """Kill fine-tuning mid-run, rerun: the ledger equals an uninterrupted run's; in seeded mode
    the weights are bit-identical too (secure mode draws fresh noise after the checkpoint)."""
    mode, base = prepared
    ref = _copy(base, tmp_path / "ref")
    params, paths = setup({}, ref)
    out_ref = finetune.run(params, paths, "dpdm")
    total = out_ref["mechanism"].steps
    assert total == 30
    assert not paths.checkpoint("dpdm", "finetune").exists()  # cleared once complete

    run = _copy(base, tmp_path / "run")
    rpaths = Paths(run)
    ckpt = rpaths.checkpoint("dpdm", "finetune")
    kill_at = random.Random(os.getpid()).randint(3, 12)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # wait on events, not a clock: a checkpoint at step >= kill_at appears, or the process ends
    while _checkpoint_step(ckpt) < kill_at:
        assert proc.poll() is None, "fine-tuning finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_step(ckpt)
    assert kill_at <= killed_at < total
    # nothing under a final name: no model, no ledger
    assert not rpaths.model("dpdm", "finetune").exists()
    assert not rpaths.ledger("dpdm").exists()
    # the checkpoint carries the ledger so far (exactly the steps taken) and never the secret key
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    partial = Ledger.from_dict(blob["ledger"])
    assert partial.mechanisms[-1].steps == killed_at
    assert (blob["noise"] is None) == (mode == "secure")

    rparams, _ = setup({}, run)
    out = finetune.run(rparams, rpaths, "dpdm")
    assert not ckpt.exists()
    resumed, reference = Ledger.load(rpaths.ledger("dpdm")), Ledger.load(paths.ledger("dpdm"))
    assert resumed == reference
    assert resumed.mechanisms[-1].steps == total
    assert resumed.private is (mode == "secure")
    a, b = _state(paths.model("dpdm", "finetune")), _state(rpaths.model("dpdm", "finetune"))
    assert a.keys() == b.keys()
    same = all(torch.equal(a[k], b[k]) for k in a)
    if mode == "seeded":
        assert same, "resumed weights differ from the uninterrupted seeded run"
        assert out["history"] == out_ref["history"]
    else:
        assert not same, "secure mode must not replay the noise of the uninterrupted run"
        assert [r["step"] for r in out["history"]] == list(range(1, total + 1))


def test_stale_checkpoint_of_another_run_is_ignored(prepared, tmp_path):
    run = _copy(prepared[1], tmp_path / "stale")
    paths = Paths(run)
    ckpt = paths.checkpoint("dpdm", "finetune")
    ckpt.parent.mkdir(parents=True)
    torch.save({"fingerprint": "another run", "step": 29}, ckpt)
    params, _ = setup({}, run)
    out = finetune.run(params, paths, "dpdm")
    assert len(out["history"]) == 30  # started from step 0, not 29


def test_crafted_pickle_in_a_checkpoint_or_model_file_is_refused(prepared, tmp_path):
    """torch.load(weights_only=True): a payload hidden in model.pt / a checkpoint never runs."""
    from easyhard.checkpoint import Checkpointer
    from easyhard.modelfile import load_model

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "network": Payload()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load_model(evil)
    with pytest.raises(pickle.UnpicklingError):
        Checkpointer(evil, 1, "x", "secure").load()
    assert not marker.exists()


def test_same_seed_same_weights(prepared, tmp_path):
    if prepared[0] != "seeded":
        pytest.skip("bit-identical replays are what seeded mode is for")
    states = []
    for name in ("a", "b"):
        root = _copy(prepared[1], tmp_path / name)
        params, paths = setup({"finetune": {"epochs": 0.2}}, root)
        finetune.run(params, paths, "dpdm")
        states.append((_state(paths.model("dpdm", "finetune")), Ledger.load(paths.ledger("dpdm"))))
    (a, la), (b, lb) = states
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert la == lb


def test_pretrain_resumes_bit_identically(tmp_path):
    from easyhard.checkpoint import Checkpointer
    from easyhard.modelfile import build_denoiser
    from easyhard.train import pretrain

    net = replace(DEFAULTS.network, channels=(8, 16), attention=(False, True), norm_groups=4)
    cfg = replace(DEFAULTS.pretrain, steps=4, batch_size=4, log_every=1, checkpoint_every=2)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10) % 3

    def fresh():
        torch.manual_seed(0)
        return build_denoiser(net, (1, 8, 8), 3, 0.5)

    ref_ema, ref_hist = pretrain(fresh(), x, y, cfg, DEFAULTS.edm, seed=1, progress=False)
    ckpt = Checkpointer(tmp_path / "p.pt", cfg.checkpoint_every, "fp", None)
    pretrain(fresh(), x, y, cfg, DEFAULTS.edm, seed=1, progress=False, checkpoint=ckpt)
    assert torch.load(ckpt.path, weights_only=True)["step"] == 2  # the state a crash leaves
    ema, hist = pretrain(fresh(), x, y, cfg, DEFAULTS.edm, seed=1, progress=False, checkpoint=ckpt)
    a, b = ref_ema.model.state_dict(), ema.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert hist.rows == ref_hist.rows


# ------------------------------------------------------------------ randomness mode of a checkpoint
def _seeded_checkpoint(path: Path, fingerprint: str, tagged: bool = True) -> None:
    """What a seeded fine-tuning leaves after a crash (``tagged=False``: a file from before the
    ``randomness`` tag, recognisable by its seeded stream state)."""
    from easyhard.checkpoint import Checkpointer
    from easyhard.privacy.randomness import SeededSource

    state = {"noise": SeededSource(0, "dp_sgd").state(), "ledger": {}}
    Checkpointer(path, 1, fingerprint, "seeded").save(7, state)
    if not tagged:
        blob = torch.load(path, weights_only=True)
        del blob["randomness"]
        torch.save(blob, path)


@pytest.mark.parametrize("tagged", [True, False])
@pytest.mark.parametrize("fingerprint", ["fp", "another run"])
def test_secure_run_refuses_a_seeded_checkpoint_whatever_its_fingerprint(
    tmp_path, tagged, fingerprint
):
    from easyhard.checkpoint import Checkpointer, CheckpointError

    path = tmp_path / "finetune.pt"
    _seeded_checkpoint(path, fingerprint, tagged)
    with pytest.raises(CheckpointError) as err:
        Checkpointer(path, 1, "fp", "secure").load()
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert str(path) in message and "delete it" in message
    assert path.exists()  # refused, not deleted behind the user's back
    # the seeded run it belongs to resumes it; a seeded run of other params ignores it
    blob = Checkpointer(path, 1, fingerprint, "seeded").load()
    assert blob is not None and blob["step"] == 7
    assert Checkpointer(path, 1, "other params", "seeded").load() is None


def test_checkpoint_stores_its_randomness_mode(tmp_path):
    from easyhard.checkpoint import Checkpointer

    for mode in ("secure", "seeded", None):
        c = Checkpointer(tmp_path / f"{mode}.pt", 1, "fp", mode)
        c.save(3, {"noise": None, "step": 99, "randomness": "forged"})
        blob = torch.load(c.path, weights_only=True)
        assert (blob["randomness"], blob["step"], blob["fingerprint"]) == (mode, 3, "fp")
        assert c.load()["step"] == 3  # its own run resumes it


def _fingerprint(root: Path, over: dict) -> str:
    """The fingerprint finetune.run gives its checkpoint under ``over`` (training not run)."""
    seen = {}

    class Stop(Exception):
        pass

    def capture(*args, checkpoint, **kwargs):
        seen["fingerprint"], seen["randomness"] = checkpoint.fingerprint, checkpoint.randomness
        raise Stop

    params, paths = setup(over, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune, "dp_finetune", capture)
        with pytest.raises(Stop):
            finetune.run(params, paths, "dpdm")
    assert seen["randomness"] == params.privacy.randomness
    return seen["fingerprint"]


def test_finetune_fingerprint_covers_randomness_and_what_shapes_the_release(prepared):
    mode, root = prepared
    other = "seeded" if mode == "secure" else "secure"
    base = _fingerprint(root, {})
    assert _fingerprint(root, {}) == base  # deterministic: the same run resumes
    changes = [
        {"privacy": {"randomness": other}},
        {"privacy": {"size_tolerance": 0.07}},
        {"network": {"dropout": 0.1}},
        {"compute": {"precision": "fp32"}},
        {"finetune": {"clip": 0.5}},
    ]
    prints = [_fingerprint(root, c) for c in changes]
    assert base not in prints and len(set(prints)) == len(prints)


def test_secure_finetune_refuses_a_seeded_checkpoint_in_one_line(prepared, tmp_path):
    """The whole runner: a secure fine-tuning that finds a seeded run's checkpoint at its resume
    path stops (exit 2) with one public line pointing to its private log, where the
    CheckpointError names the file; it writes no model or ledger."""
    from tests.test_pipeline import NB, _runner

    if prepared[0] != "secure":
        pytest.skip("the refusal is a secure run's")
    run = _copy(prepared[1], tmp_path / "run")
    paths = Paths(run)
    ckpt = paths.checkpoint("dpdm", "finetune")
    _seeded_checkpoint(ckpt, "a seeded run's fingerprint")
    out = "private/runs/dpdm/finetune/06_finetune.ipynb"  # a private-zone stage
    r = _runner(run, str(NB / "06_finetune.ipynb"), out, "--method", "dpdm")
    assert r.returncode == 2, r.stderr[-2000:]
    log = "private/logs/runs/dpdm/finetune/06_finetune.log"
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: 06_finetune (dpdm) failed in the private zone; see {log}"
    )
    last = [ln for ln in (run / log).read_text().splitlines() if "CheckpointError: " in ln][-1]
    assert str(ckpt) in last and "delete it" in last, last
    assert not paths.model("dpdm", "finetune").exists() and not paths.ledger("dpdm").exists()
    assert not (run / out).exists()
