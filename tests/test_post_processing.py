"""Everything published is a mechanism output or post-processing of one (the trust boundary).

The whole pipeline (``dvc repro``, every stage of fetapro, whose stages include every other method's) runs on tiny params on a source
D and on D + {x*}, with every mechanism's released value held fixed between the two runs
(:mod:`easyhard.privacy.replay`: masks identical for the shared records, x* sampled in the first
draw of every mechanism, the noisy outputs of run 1 returned in run 2). Then every public byte must
be identical: each file git would commit, each DVC output, ``dvc.lock``, each executed notebook,
metric and figure, and the run's stdout/stderr (wall-clock times and the two folders' paths
masked, nothing else). Any value computed from the records without noise that reaches a public
place shows up as a difference, whichever leak it is.

Test of the test: each of four leaks, put back into a copy of the finished runs, is caught: a
progress bar printing DP-SGD's realised batch size into the run's log (the runner's private-zone
guard removed), a metric computed from training images, a DVC dependency on the training file, and
the non-private ceiling in the public report.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from easyhard.data import ImageSet, split
from easyhard.datasets import load_digits, load_folder
from easyhard.schema import merge

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = 30  # digits per class in the tiny source
TEST_FRACTION = 0.2
TINY = {
    # FETA-Pro's stages are a superset of every other method's; fixed warm-ups, so that both of its
    # releases run at this tiny N (planned, the frequency release is off and its run DP-FETA's)
    "methods": ["fetapro"],
    "data": {"name": "folder", "root": "private/raw", "test_fraction": TEST_FRACTION},
    "privacy": {"epsilon": 5.0, "delta": 1.0e-3, "dataset_size": 240, "randomness": "secure"},
    "central": {
        "plan": "fixed",
        "queries": 2,
        "downsample": 2,
        "sample_rate": 0.5,
        "budget_share": 0.1,
    },
    "network": {"channels": [8, 16], "attention": [False, True], "norm_groups": 4},
    "edm": {"noise_multiplicity": 2},
    "pretrain": {"steps": 4, "batch_size": 8, "log_every": 2, "checkpoint_every": 0},
    "finetune": {
        "sample_rate": 0.1,
        "epochs": 0.3,
        "physical_batch": 16,
        "log_every": 1,
        "checkpoint_every": 0,
    },
    "sample": {"count": 20, "steps": 3, "batch_size": 10},
    "evaluate": {
        "fid_real_count": 20,
        "fid_count": 20,
        "classifier_epochs": 2,
        "classifier_seeds": 1,
        "classifiers": ["logreg"],
        "batch_size": 20,
    },
    "frequency": {
        "plan": "fixed",
        "budget_share": 0.1,
        "features": 64,
        "lengthscale": 2.0,
        "images_per_class": 6,
        "pretrain_steps": 2,
    },
    "auxgen": {"steps": 5, "batch_per_class": 4, "z_dim": 8, "width": 8},
    "audit": {"canaries": 200, "blackbox_count": 20},
}

#: Not public: git's and DVC's own state, the private zone, caches of tools.
SKIP_PARTS = {".git", ".dvc", "private", "__pycache__", ".pytest_cache", ".ruff_cache"}


# ------------------------------------------------------------------------------ the source
def _write_source(folder: Path, ds: ImageSet) -> None:
    for i, (x, y) in enumerate(zip(ds.x, ds.y, strict=True)):
        d = folder / ds.classes[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(x[0] * 255).astype(np.uint8)).save(d / f"{i:05d}.png")


def _neighbours(tmp: Path) -> tuple[ImageSet, Path, Path, int]:
    """Source D (PER_CLASS digits a class) and D + {x*} as image folders; x*'s index in the
    training split of D + {x*} (x* lands in the training split)."""
    digits = load_digits()
    keep = np.concatenate([np.flatnonzero(digits.y == c)[:PER_CLASS] for c in range(10)])
    d = ImageSet(digits.x[keep], digits.y[keep], digits.classes)
    for k in range(100):  # an unusual image that the keyed split puts into training
        star = np.zeros((1, 1, 8, 8), np.float32)
        star[0, 0, k % 8, :] = 1.0
        star[0, 0, :, (k // 8) % 8] = 1.0
        plus = ImageSet(np.concatenate([d.x, star]), np.concatenate([d.y, [3]]), d.classes)
        a, b = tmp / "source_d", tmp / f"source_d_plus_{k}"
        shutil.rmtree(b, ignore_errors=True)
        _write_source(b, plus)
        loaded = load_folder(b)
        train, _ = split(loaded, TEST_FRACTION, 0)
        hits = np.flatnonzero((train.x.reshape(len(train), -1) == star.reshape(1, -1)).all(1))
        if len(hits):
            _write_source(a, d)
            return d, a, b, int(hits[0])
    raise AssertionError("no x* found that lands in the training split")


# ------------------------------------------------------------------------------ the runs
def _repo(dest: Path, source: Path, override: dict | None = None) -> Path:
    """A copy of this repository's tracked files, committed, with the tiny params and the source
    in its private zone."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = ROOT / f.decode()
        if src.is_file():
            (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f.decode())
    for stale in ("dvc.lock", "runs", "report", "docs"):  # results of the committed default run
        p = dest / stale
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    (dest / "docs" / "sweep").mkdir(parents=True)  # the report's dependency: no sweep committed
    (dest / "docs" / "sweep" / "sweep.json").write_text("[]\n")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(base, merge(TINY, override or {}))))
    shutil.copytree(source, dest / "private" / "raw")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def _env(tmp: Path, name: str, mode: str, insert: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASYHARD_")}
    env.update(
        EASYHARD_TEST_REPLAY=f"{mode}:{tmp / 'replay'}",
        EASYHARD_SPEND_DIR=str(tmp / f"spend-{name}"),
        PYTHONPATH="",
        OMP_NUM_THREADS="1",
    )
    if insert is not None:
        env["EASYHARD_TEST_REPLAY_INSERT"] = str(insert)
    return env


def _repro(repo: Path, env: dict[str, str], *args: str) -> str:
    """``dvc repro`` in ``repo``; its stdout + stderr (it must succeed)."""
    r = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    return log


def _public_files(repo: Path) -> set[str]:
    """What leaves the machine: what git would commit (tracked + untracked not ignored) and every
    DVC output (dvc.lock's outs, folders expanded)."""
    git = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = {f for f in git.split("\0") if f and (repo / f).is_file()}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            p = repo / out["path"]
            if p.is_dir():
                files |= {str(q.relative_to(repo)) for q in p.rglob("*") if q.is_file()}
            elif p.is_file():
                files.add(out["path"])
    return {f for f in files if not SKIP_PARTS & set(Path(f).parts)}


_TIMES = [
    (re.compile(r"\[\d+:\d+(:\d+)?<[^\]]*\]"), "[<time>]"),
    (re.compile(r"\d+(\.\d+)?\s?(s|ms|min|it/s|s/it|cell/s)\b"), "<time>"),
]


#: The Jupyter kernel's own lifecycle messages, printed or not depending on shutdown timing.
_KERNEL_LIFECYCLE = (
    "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.",
    "[IPKernelApp] WARNING | Kernel is running over TCP without encryption.",
)


def _mask(text: str, *roots: Path) -> str:
    for r in roots:
        text = text.replace(str(r), "<repo>")
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    text = "\n".join(line for line in lines if not line.startswith(_KERNEL_LIFECYCLE))
    for pattern, repl in _TIMES:
        text = pattern.sub(repl, text)
    return text


def _differences(a: Path, b: Path, log_a: str, log_b: str) -> list[str]:
    fa, fb = _public_files(a), _public_files(b)
    diff = [f"only in one run: {f}" for f in sorted(fa ^ fb)]
    for f in sorted(fa & fb):
        if (a / f).read_bytes() != (b / f).read_bytes():
            diff.append(f"differs: {f}")
    if _mask(log_a, a) != _mask(log_b, b):
        diff.append("differs: stdout/stderr of dvc repro")
    return diff


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The pipeline on D (recording every release) and on D + {x*} (replaying them)."""
    tmp = tmp_path_factory.mktemp("post_processing")
    d, source_d, source_plus, insert = _neighbours(tmp)
    a = _repo(tmp / "a", source_d)
    b = _repo(tmp / "b", source_plus)
    log_a = _repro(a, _env(tmp, "a", "record", None))
    log_b = _repro(b, _env(tmp, "b", "replay", insert))
    (tmp / "log_a.txt").write_text(log_a)  # for a look when the test fails
    (tmp / "log_b.txt").write_text(log_b)
    return {"tmp": tmp, "a": a, "b": b, "log_a": log_a, "log_b": log_b, "insert": insert}


def test_post_processing_every_public_byte_is_the_same_on_neighbouring_datasets(runs):
    a, b = runs["a"], runs["b"]
    # the runs really differ in private: x* was in the training split and was sampled
    ta = np.load(a / "private/prepared/train.npz")["x"]
    tb = np.load(b / "private/prepared/train.npz")["x"]
    assert len(tb) == len(ta) + 1
    assert (a / "private/prepared/train.npz").read_bytes() != (
        b / "private/prepared/train.npz"
    ).read_bytes()
    assert _differences(a, b, runs["log_a"], runs["log_b"]) == []
    stages = set(yaml.safe_load((a / "dvc.lock").read_text())["stages"])
    for stage in ("prepare", "central@fetapro", "frequency@fetapro", "finetune@fetapro", "report"):
        assert stage in stages  # every kind of stage ran


def test_post_processing_no_private_file_is_hashed_tracked_or_pushed(runs):
    """dvc.lock, git and a DVC remote hold no private-zone file, nor its hash or size."""
    a = runs["a"]
    private = [p for p in (a / "private").rglob("*") if p.is_file()]
    assert any(p.name == "train.npz" for p in private)
    md5s = {hashlib.md5(p.read_bytes()).hexdigest() for p in private}
    lock = (a / "dvc.lock").read_text()
    for stage in yaml.safe_load(lock)["stages"].values():  # commands may name private paths
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            assert not entry["path"].startswith("private"), entry["path"]
    assert not [m for m in md5s if m in lock]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=a,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [f for f in tracked if f.startswith("private/")]
    remote = runs["tmp"] / "remote"
    env = _env(runs["tmp"], "a", "record", None)
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)],
        cwd=a,
        env=env,
        check=True,
        capture_output=True,
    )
    r = subprocess.run(
        [sys.executable, "-m", "dvc", "push"], cwd=a, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    pushed = [p for p in remote.rglob("*") if p.is_file()]
    assert pushed  # the public outputs did go
    names = {p.parent.name + p.name for p in pushed}  # DVC stores files/md5/ab/cdef...
    assert not md5s & names
    contents = {hashlib.md5(p.read_bytes()).hexdigest() for p in pushed}
    assert not md5s & contents


# ------------------------------------------------------------------------------ test of the test
def _patch(repo: Path, rel: str, old: str, new: str) -> None:
    f = repo / rel
    text = f.read_text()
    assert old in text, f"{rel}: {old!r} not found"
    f.write_text(text.replace(old, new, 1))


def _leak_progress_bar(repo: Path) -> list[str]:
    """The runner's guards removed (every stage treated as public): DP fine-tuning's progress bar
    (B = realised batch size) is echoed into the run's log like a public stage's."""
    _patch(
        repo,
        "easyhard/pipeline/zones.py",
        '    return "private" if Path(notebook).stem in PRIVATE_NOTEBOOKS else "public"',
        '    return "public"',
    )
    _patch(
        repo,
        "easyhard/pipeline/zones.py",
        '    if zone_of(notebook) != "private":\n        return',
        "    return",
    )
    _patch(repo, "easyhard/pipeline/zones.py", '== "public":', '== "never":')
    return ["finetune@fetapro", "--single-item", "--force"]


def _leak_training_metric(repo: Path) -> list[str]:
    """A metric computed from the training images."""
    _patch(
        repo,
        "easyhard/pipeline/evaluate.py",
        "    write_json(paths.metrics(method), metrics)",
        "    import numpy\n"
        "    train = numpy.load(paths.root / 'private/prepared/train.npz')['x']\n"
        "    metrics['train_mean'] = float(train.mean())\n"
        "    write_json(paths.metrics(method), metrics)",
    )
    return ["evaluate@fetapro", "--single-item", "--force"]


def _leak_dvc_dependency(repo: Path) -> list[str]:
    """A DVC dependency on the training file (its md5 and size land in dvc.lock)."""
    _patch(repo, ".dvcignore", "/private/\n", "")
    _patch(
        repo,
        "dvc.yaml",
        "        - notebooks/08_evaluate.ipynb\n",
        "        - notebooks/08_evaluate.ipynb\n        - private/prepared/train.npz\n",
    )
    return ["evaluate@fetapro", "--single-item"]


def _leak_ceiling(repo: Path) -> list[str]:
    """The non-private ceiling's results in the public report."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["methods"] = ["fetapro", "nonprivate"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    return ["report"]


@pytest.mark.parametrize(
    "leak", [_leak_progress_bar, _leak_training_metric, _leak_dvc_dependency, _leak_ceiling]
)
def test_post_processing_test_catches_a_leak_put_back(runs, leak, tmp_path):
    """Each leak, applied to copies of both finished runs, makes the public bytes differ."""
    # the same machine's state: the replay and both spend stores (their keys fix the training
    # split's fingerprint, so only what the leak changes reruns, not the whole pipeline)
    for state in ("replay", "spend-a", "spend-b"):
        shutil.copytree(runs["tmp"] / state, tmp_path / state)
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs["a"], a, symlinks=True)
    shutil.copytree(runs["b"], b, symlinks=True)
    args = leak(a)
    leak(b)
    log_a = _repro(a, _env(tmp_path, "a", "record", None), *args)
    log_b = _repro(b, _env(tmp_path, "b", "replay", runs["insert"]), *args)
    assert _differences(a, b, log_a, log_b) != []


def test_post_processing_public_stage_cannot_read_the_training_split(tmp_path, monkeypatch):
    """The structural guard: in a public-zone stage, the training split's only reader refuses."""
    from easyhard.pipeline import zones
    from easyhard.pipeline.paths import Paths

    monkeypatch.setenv(zones.ZONE_ENV, "public")
    with pytest.raises(zones.ZoneError, match="public-zone stage"):
        zones.load_training(Paths(tmp_path))
