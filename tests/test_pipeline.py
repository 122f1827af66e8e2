"""Papermill smoke run of every notebook on tiny params, both methods, plus the runner's errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from easyhard.privacy import Ledger, compose_epsilon
from easyhard.run import run_notebook
from easyhard.schema import merge

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"

TINY = {
    "methods": ["dpfeta", "dpdm", "fetapro", "nonprivate"],
    "data": {"name": "digits", "test_fraction": 0.2},
    "privacy": {"epsilon": 5.0, "delta": 1.0e-4, "dataset_size": 1438},
    "central": {"queries": 2, "downsample": 2, "sample_rate": 0.5},
    "network": {"channels": [8, 16], "attention": [False, True], "norm_groups": 4},
    "edm": {"noise_multiplicity": 2},
    "pretrain": {"steps": 4, "batch_size": 8, "log_every": 2},
    "finetune": {"sample_rate": 0.01, "epochs": 0.03, "physical_batch": 16, "log_every": 1},
    "sample": {"count": 20, "steps": 3, "batch_size": 10},
    "evaluate": {"fid_real_count": 20, "classifier_epochs": 2, "batch_size": 20},
    "frequency": {"features": 64, "lengthscale": 2.0, "images_per_class": 6, "pretrain_steps": 2},
    "auxgen": {"steps": 5, "batch_per_class": 4, "z_dim": 8, "width": 8},
    "audit": {"canaries": 300, "blackbox_count": 40},
}
METHODS = TINY["methods"]
DP_METHODS = ("dpfeta", "dpdm", "fetapro")

PRIVATE = {"01_prepare", "03_central_images", "04_frequency", "06_finetune", "09_audit"}

STAGES = [
    ("01_prepare", None, "private/prepared/01_prepare.ipynb"),
    ("02_fid_reference", None, "data/fid_reference/02_fid_reference.ipynb"),
    *[
        (nb, m, ("private/" if nb in PRIVATE else "") + f"runs/{m}/{stage}/{nb}.ipynb")
        for m in METHODS
        for nb, stage in [
            ("03_central_images", "central"),
            ("04_frequency", "frequency"),
            ("05_pretrain", "pretrain"),
            ("06_finetune", "finetune"),
            ("07_sample", "sample"),
            ("08_evaluate", "evaluate"),
            ("09_audit", "audit"),
        ]
    ],
    ("10_report", None, "report/10_report.ipynb"),
]


def write_params(root: Path, override: dict) -> None:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(base, override)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_params(root, TINY)
    for nb, method, out in STAGES:
        run_notebook(
            NB / f"{nb}.ipynb",
            root / out,
            root=root,
            extra={"method": method} if method else None,
            progress=False,
        )
    return root


def test_every_notebook_runs_and_writes_its_outputs(tiny_run):
    root = tiny_run
    for _, _, out in STAGES:
        assert (root / out).is_file(), out
    for m in METHODS:
        for f in (
            "central/central.npz",
            "frequency/generator_images.npz",
            "pretrain/model.pt",
            "finetune/model.pt",
            "sample/samples.npz",
            "sample/samples.png",
            "ledger.json",
            "metrics.json",
        ):
            assert (root / "runs" / m / f).is_file(), (m, f)
    assert (root / "runs/dpfeta/central/central_images.png").is_file()
    assert (root / "runs/fetapro/frequency/generator_images.png").is_file()
    for f in ("metrics.png", "samples.png"):
        assert (root / "report" / "figures" / f).is_file()
    assert not (root / "report" / "figures" / "loss.png").exists()  # un-noised: not in the report
    privacy = json.loads((root / "report" / "privacy.json").read_text())
    assert set(privacy) == {"epsilon", "private"} and privacy["private"]
    dataset = json.loads((root / "report" / "summary.json").read_text())["dataset"]
    # three releases of six mechanisms: dpfeta: central + DP-SGD; dpdm: DP-SGD; fetapro:
    # central + frequency + DP-SGD; the non-private ceiling is not a release, but its published
    # results make the published total infinite (null)
    assert dataset["mechanisms"] == 6 and dataset["epsilon"] is None is privacy["epsilon"]
    # nothing left under a temporary or failed name
    leftovers = [
        p
        for p in root.rglob("*")
        if p.name.endswith((".tmp", ".failed.ipynb")) or ".running." in p.name
    ]
    assert leftovers == []


def test_audit_certifies_no_more_than_the_ledger_claims(tiny_run):
    for m in DP_METHODS:
        audit = json.loads((tiny_run / "runs" / m / "audit.json").read_text())
        assert audit["enabled"] and audit["private"]
        assert audit["verdict"] in ("conclusive-pass", "inconclusive")
        assert audit["resolvable"]["verdict"] == "conclusive-pass"
        release = audit["release"]
        assert 0.0 <= release["eps_hat"] <= release["claimed_epsilon"] <= audit["epsilon"]
        assert release["verdict"] == (
            "inconclusive"
            if release["claimed_epsilon"] > audit["max_epsilon"]
            else "conclusive-pass"
        )
        assert (
            audit["observed"]["steps"]
            == Ledger.load(tiny_run / "runs" / m / "ledger.json").mechanisms[-1].steps
        )
        assert "blackbox_auc" not in json.dumps(audit)  # an exact function of training images
        membership = json.loads(
            (tiny_run / "private/runs" / m / "audit/membership.json").read_text()
        )
        assert 0.0 <= membership["blackbox_auc"] <= 1.0
        assert (tiny_run / "private/runs" / m / "audit/membership.png").is_file()
        assert (tiny_run / "runs" / m / "audit" / "canary_scores.png").is_file()
        assert audit["figure"] == f"runs/{m}/audit/canary_scores.png"  # committed: no local path


def test_audit_stage_fails_in_one_line_when_the_noise_is_public(tiny_run, tmp_path):
    """A seeded release whose ledger claims eps = 1 for DP-SGD (q = 0.3, 5 steps): the audit fails
    outright, the auditor replaying the public seed; the stage exits non-zero with one public line
    (its reason in the private log) and audit.json says fail."""
    import shutil

    from easyhard.privacy import Ledger, calibrate_noise_multiplier

    root = tmp_path / "seeded"
    shutil.copytree(tiny_run / "data", root / "data")
    shutil.copytree(tiny_run / "runs/dpdm/finetune", root / "runs/dpdm/finetune")
    write_params(root, merge(TINY, {"privacy": {"epsilon": 1.0, "randomness": "seeded"}}))
    sgd = calibrate_noise_multiplier(1.0, 1e-4, sample_rate=0.3, steps=5)
    Ledger(1e-4, 1.0, "prv", [sgd], private=False).save(root / "runs/dpdm/ledger.json")
    out = "private/runs/dpdm/audit/09_audit.ipynb"  # the audit stage is in the private zone
    r = _runner(root, str(NB / "09_audit.ipynb"), out, "--method", "dpdm")
    assert r.returncode == 1, r.stderr[-2000:]
    log = "private/logs/runs/dpdm/audit/09_audit.log"
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"error: 09_audit (dpdm) failed in the private zone; see {log}"
    why = [ln for ln in (root / log).read_text().splitlines() if ln.startswith("AuditFailure:")]
    assert why and why[-1].startswith("AuditFailure: dpdm: privacy.randomness is seeded")
    assert "replayable from the public seed" in why[-1]
    assert not (root / out).exists()
    assert json.loads((root / "runs/dpdm/audit.json").read_text())["verdict"] == "fail"


def test_metrics_epsilon_is_the_composition_of_the_ledger(tiny_run):
    expected = {
        "dpfeta": ["central_images_mean", "dp_sgd"],
        "dpdm": ["dp_sgd"],
        "fetapro": ["central_images_mean", "frequency_mmd", "dp_sgd"],
    }
    for m in DP_METHODS:
        metrics = json.loads((tiny_run / "runs" / m / "metrics.json").read_text())
        details = json.loads((tiny_run / "runs" / m / "evaluate" / "details.json").read_text())
        ledger = Ledger.load(tiny_run / "runs" / m / "ledger.json")
        eps = compose_epsilon(ledger.mechanisms, ledger.delta, ledger.accountant)
        assert details["epsilon"] == pytest.approx(eps, rel=1e-9)
        assert metrics["epsilon"] == round(eps, 3) and metrics["private"] is True
        assert details["epsilon"] <= TINY["privacy"]["epsilon"]
        assert details["epsilon"] >= 0.99 * TINY["privacy"]["epsilon"]
        assert [x.name for x in ledger.mechanisms] == expected[m]
        for key in ("fid", "delta", "epsilon_rdp", "precision", "recall", "target_epsilon"):
            assert key in details
        # metrics.json: only what a reader compares (dvc metrics show stays narrow)
        names = ("cnn", "resnet", "logreg")
        assert set(metrics) == {
            "epsilon",
            "private",
            "fid",
            *names,
            *(f"{c}_sd" for c in names),
            "recognised",
        }
        # the reader (trained on the public test split) labels every synthetic image
        assert 0.0 <= metrics["recognised"] <= 1.0
        assert metrics["recognised"] == round(details["recognised"], 3)
        assert len(details["recognised_by_class"]) == 10
        for name in names:
            assert 0.0 <= metrics[name] <= 1.0 and metrics[f"{name}_sd"] >= 0.0
            assert metrics[name] == round(details[f"{name}_acc_mean"], 3)
        runs = json.loads((tiny_run / "runs" / m / "evaluate" / "classifiers.json").read_text())
        assert len(runs) == 3 * details["classifier_seeds"]


def test_the_non_private_ceiling_is_labelled_and_never_a_release(tiny_run):
    metrics = json.loads((tiny_run / "runs/nonprivate/metrics.json").read_text())
    assert metrics["private"] is False and metrics["epsilon"] is None  # no target ε shown
    assert Ledger.load(tiny_run / "runs/nonprivate/ledger.json").mechanisms == []
    audit = json.loads((tiny_run / "runs/nonprivate/audit.json").read_text())
    assert audit["enabled"] is False
    # its exact statistics and model are published: the source's published total is infinite
    privacy = json.loads((tiny_run / "report/privacy.json").read_text())
    assert privacy["epsilon"] is None and privacy["private"]  # every DP release is
    dataset = json.loads((tiny_run / "report/summary.json").read_text())["dataset"]
    assert dataset["epsilon_infinite_because"] == [
        "nonprivate/central: exact central statistics, published",
        "nonprivate/finetune: non-private fine-tuning, model published",
    ]
    assert dataset["releases"] == 6  # dpfeta 2, dpdm 1, fetapro 3
    assert dataset["epsilon_private_releases"] > TINY["privacy"]["epsilon"]
    assert 0.0 <= metrics["cnn"] <= 1.0


def _executed_notebooks(root: Path) -> list[Path]:
    return [root / out for _, _, out in STAGES]


def test_executed_notebooks_have_few_stream_outputs_per_cell(tiny_run):
    """Progress bars leave their final line, not hundreds of outputs (easyhard.run.tidy_notebook)."""
    import nbformat

    for path in _executed_notebooks(tiny_run):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            streams = [o for o in cell.get("outputs", []) if o["output_type"] == "stream"]
            assert len(streams) <= 5, (path.name, len(streams))


def test_no_stage_log_has_the_kernel_transport_warning(tiny_run):
    logs = list((tiny_run / "private" / "logs").rglob("*.log"))
    assert len(logs) == sum(1 for nb, _, _ in STAGES if nb in PRIVATE)
    for log in logs:
        assert "TCP without encryption" not in log.read_text(), log


def test_the_executed_report_renders_offline_with_embedded_figures(tiny_run):
    """nbconvert's HTML of report/10_report.ipynb (no network): every figure a data: URI, no
    http(s) image source; the table shows the ceiling as not private and ± over classifier seeds."""
    import re

    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(tiny_run / "report" / "10_report.ipynb", as_version=4)
    html, _ = HTMLExporter().from_notebook_node(nb)
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", html)
    assert len(srcs) >= 2 and all(s.startswith("data:image/png;base64,") for s in srcs), srcs[:3]
    assert not re.search(r"<img[^>]*src=\"https?:", html)
    assert "∞ (not private)" in html and "std over classifier seeds" in html
    assert "With the cnn classifier," in html  # the generated reading


def test_the_report_draws_the_committed_sweep(tiny_run, tmp_path):
    """With a committed docs/sweep/sweep.json the report stage draws quality against ε (± over
    whole-pipeline repeats) from it; without one (the tiny run) it draws no such figure."""
    import shutil

    from easyhard import sweep
    from easyhard.config import load_params
    from easyhard.pipeline import report
    from easyhard.pipeline.paths import Paths

    assert (
        "quality_vs_epsilon"
        not in report.run(load_params(tiny_run / "params.yaml"), Paths(tiny_run))["figures"]
    )
    root = tmp_path / "repo"
    shutil.copytree(tiny_run, root, ignore=shutil.ignore_patterns("private"))
    rows = [
        {
            "experiment": f"e{s}",
            "method": "dpfeta",
            "target_epsilon": eps,
            "seed": s,
            "epsilon": eps,
            "private": True,
            "fid": 100.0 / eps + s,
            "cnn": 0.5 + 0.01 * s,
        }
        for eps in (1.0, 10.0)
        for s in range(3)
    ]
    (root / "docs" / "sweep").mkdir(parents=True)
    (root / "docs" / "sweep" / "sweep.json").write_text(json.dumps(sweep.summarise(rows)))
    out = report.run(load_params(root / "params.yaml"), Paths(root))
    assert out["sweep"] == sweep.summarise(rows)
    assert out["figures"]["quality_vs_epsilon"].is_file()


def _runner(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "easyhard.run", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ({"privacy": {"epsilom": 1.0}}, "unknown params key 'privacy.epsilom'"),
        ({"privacy": {"epsilon": 0.0}}, "privacy.epsilon must be > 0"),
        ({"finetune": {"sample_rate": 2.0}}, "finetune.sample_rate must be in (0, 1]"),
        ({"privacy": {"delta": 0.01}}, "privacy.delta=0.01 must be < 1/N"),
    ],
)
def test_runner_rejects_bad_params_before_running(tmp_path, override, message):
    write_params(tmp_path, merge(TINY, override))
    out = tmp_path / "private/prepared/01_prepare.ipynb"
    r = _runner(tmp_path, str(NB / "01_prepare.ipynb"), str(out))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {r.stderr.strip()[7:]}"]
    assert message in r.stderr
    assert not out.exists() and not (tmp_path / "private/prepared/train.npz").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"data": {"name": "folder", "root": "no/such/folder"}}, "data folder not found"),
    ],
)
def test_runner_reports_data_errors_in_one_line(tmp_path, override, message):
    """A stage that reads the sensitive data fails with one public line naming its private log;
    the message (which may quote the data) is in that log only."""
    write_params(tmp_path, merge(TINY, override))
    out = tmp_path / "private/prepared/01_prepare.ipynb"
    r = _runner(tmp_path, str(NB / "01_prepare.ipynb"), str(out))
    assert r.returncode == 2, r.stderr[-2000:]
    log = "private/logs/prepared/01_prepare.log"
    assert r.stderr.strip().splitlines() == [
        f"error: 01_prepare failed in the private zone; see {log}"
    ]
    assert r.stdout == ""
    assert message in (tmp_path / log).read_text()
    assert not out.exists() and not (tmp_path / "private/prepared/train.npz").exists()


def test_a_private_stage_cannot_write_its_notebook_into_the_public_zone(tmp_path):
    write_params(tmp_path, TINY)
    r = _runner(tmp_path, str(NB / "06_finetune.ipynb"), "runs/dpdm/finetune/06_finetune.ipynb")
    assert r.returncode == 2
    assert "reads the sensitive data: its executed notebook must be written under" in r.stderr


def test_an_empty_class_folder_is_a_class_without_images(tmp_path):
    """No halt for the data (one record more or less must not decide whether a run stops)."""
    from easyhard.pipeline import prepare
    from easyhard.pipeline.notebook import setup

    _make_folder(tmp_path / "imgs", "empty_class")
    write_params(tmp_path, merge(TINY, {"data": {"name": "folder", "root": "imgs"}}))
    params, paths = setup({}, tmp_path)
    out = prepare.run(params, paths)
    assert out["train"].classes == ("a", "b", "c")
    assert out["size_warning"].startswith("warning: the sensitive training set has")


def test_central_images_refused_when_they_alone_exceed_the_budget(tmp_path, spend_store):
    """No query runs, no ledger is written and nothing is recorded when the fixed-noise easy
    stage would exhaust the budget (the whole release is planned before the first query)."""
    from easyhard.pipeline import central_images, frequency, prepare
    from easyhard.pipeline.notebook import setup
    from easyhard.privacy import PrivacyBudgetError

    fixed = {"plan": "fixed", "noise_multiplier": 5.0, "budget_share": None}
    write_params(tmp_path, merge(TINY, {"privacy": {"epsilon": 0.05}, "central": fixed}))
    params, paths = setup({}, tmp_path)
    prepare.run(params, paths)
    for method in ("dpfeta", "fetapro"):
        with pytest.raises(PrivacyBudgetError, match="central_images_mean"):
            central_images.run(params, paths, method)
    assert not (tmp_path / "runs").exists() and not (spend_store / "sources").exists()
    # the frequency release, planned with the central images, is refused the same way
    (paths.stage("fetapro", "central")).mkdir(parents=True)
    as_written = {"central": {"plan": "fixed"}}
    write_params(tmp_path, merge(TINY, {"privacy": {"epsilon": 0.05}, **as_written}))
    ok, _ = setup({}, tmp_path)
    central_images.run(ok, paths, "fetapro")  # the shares fit: central images released
    over = {"plan": "fixed", "noise_multiplier": 0.5, "budget_share": None}
    bad, _ = setup({"frequency": over}, tmp_path)
    with pytest.raises(PrivacyBudgetError):
        frequency.run(bad, paths, "fetapro")
    assert not paths.frequency_ledger("fetapro").exists()


def test_delta_must_be_below_one_over_the_declared_n():
    """delta < 1/N on the *declared* N: refused when params load, before any data is read."""
    from easyhard.config import Params
    from easyhard.schema import ConfigError, from_mapping

    with pytest.raises(ConfigError, match="privacy.delta=0.5 must be < 1/N"):
        from_mapping(
            Params,
            merge(yaml.safe_load((ROOT / "params.yaml").read_text()), {"privacy": {"delta": 0.5}}),
        )


def _make_folder(root: Path, case: str) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    if case == "truncated":
        data = (root / "a" / "3.png").read_bytes()
        (root / "a" / "3.png").write_bytes(data[: len(data) // 2])
    elif case == "mixed_channels":
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "b" / "5.png")
    elif case == "mixed_sizes":
        Image.fromarray(rng.integers(0, 256, (9, 8), dtype=np.uint8)).save(root / "b" / "6.png")
    elif case == "empty_class":
        (root / "c").mkdir()


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", "3.png: unreadable image"),
        ("mixed_channels", "5.png: shape (3, 8, 8)"),
        ("mixed_sizes", "6.png: shape (1, 9, 8)"),
        ("too_small", "too small for finetune.sample_rate"),
    ],
)
def test_bad_data_is_refused_before_any_privacy_is_spent(tmp_path, case, message):
    from easyhard.pipeline import central_images, finetune, frequency, prepare, pretrain
    from easyhard.pipeline.notebook import setup

    _make_folder(tmp_path / "imgs", case)
    override = {
        "data": {"name": "folder", "root": "imgs"},
        "privacy": {"delta": 1e-3, "dataset_size": 20},
    }
    if case == "too_small":
        override["finetune"] = {"sample_rate": 0.01}
    write_params(tmp_path, merge(TINY, override))
    params, paths = setup({}, tmp_path)
    with pytest.raises(ValueError) as e:  # DataError, or the plan refusing q*N < 1
        prepare.run(params, paths)
        central_images.run(params, paths, "dpdm")  # DPDM: the first spend is DP-SGD
        frequency.run(params, paths, "dpdm")
        pretrain.run(params, paths, "dpdm")
        finetune.run(params, paths, "dpdm")
    assert message in str(e.value)
    # DPDM's warm-up stages may have written their (empty) ledgers; nothing was spent
    assert all(not Ledger.load(f).mechanisms for f in tmp_path.rglob("ledger.json"))
    assert not paths.ledger("dpdm").exists()
    assert not (tmp_path / "private" / "checkpoints").exists()


def test_finetune_stage_on_two_processes_matches_one(tiny_run, tmp_path):
    """finetune.processes=2 relaunches the stage under torchrun: same ledger, same weights
    (seeded mode; in secure mode the ranks share rank 0's secret key: tests/test_distributed.py)."""
    import shutil

    import torch

    from easyhard.config import load_params
    from easyhard.pipeline import finetune
    from easyhard.pipeline.paths import Paths

    results = {}
    for n in (1, 2):
        root = tmp_path / f"p{n}"
        shutil.copytree(tiny_run / "data" / "prepared", root / "data" / "prepared")
        shutil.copytree(tiny_run / "private" / "prepared", root / "private" / "prepared")
        for part in ("central", "frequency", "pretrain"):
            shutil.copytree(tiny_run / "runs/dpfeta" / part, root / "runs/dpfeta" / part)
        # seeded: both runs must draw the same masks and noise to be compared
        over = {"finetune": {"processes": n}, "privacy": {"randomness": "seeded"}}
        write_params(root, merge(TINY, over))
        params = load_params(root / "params.yaml")
        out = finetune.run(params, Paths(root), "dpfeta")
        model = torch.load(root / "runs/dpfeta/finetune/model.pt", weights_only=True)
        results[n] = (out["ledger"].to_dict(), model["state_dict"], out["history"])
    (ledger1, weights1, hist1), (ledger2, weights2, hist2) = results[1], results[2]
    assert ledger1 == ledger2
    assert [r["batch_size"] for r in hist1] == [r["batch_size"] for r in hist2]
    for name, w in weights1.items():
        assert torch.allclose(w, weights2[name], atol=1e-5), name


def test_running_notebooks_leaves_the_callers_environment_alone(tiny_run):
    """The runner sets the kernel's zone and run id only while it runs: an in-process caller (this
    test session ran every notebook) is not left marked as a public-zone stage."""
    import os

    from easyhard.pipeline.zones import RUN_ENV, ZONE_ENV

    assert ZONE_ENV not in os.environ and RUN_ENV not in os.environ


def test_the_repeat_axis_seed_never_moves_the_published_split(tmp_path):
    """The held-out split is published: it is keyed by data.split_seed, so runs with another
    public seed (the sweep's repeats) publish the same held-out records, never a training record
    of another run; a new split_seed is a new split."""
    import numpy as np

    from easyhard.pipeline import prepare
    from easyhard.pipeline.notebook import setup

    tests = {}
    for name, over in (
        ("seed0", {}),
        ("seed3", {"seed": 3}),
        ("split1", {"data": {"split_seed": 1}}),
    ):
        root = tmp_path / name
        root.mkdir()
        write_params(root, merge(TINY, over))
        params, paths = setup({}, root)
        prepare.run(params, paths)
        with np.load(paths.test) as f:
            tests[name] = f["x"].copy()
    assert np.array_equal(tests["seed0"], tests["seed3"])
    assert not np.array_equal(tests["seed0"], tests["split1"])
