"""easyhard.pipeline.sharing: a method whose run equals an earlier method's is run once.

The decision reads public values only; a shared stage runs no notebook, reads no data and spends
nothing, and writes a marker for every output dvc.yaml declares; the report, the README table and
the sweep give the shared method the run's results; the CLI's plan says what the stages do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml

from easyhard import sweep
from easyhard.config import load_params
from easyhard.pipeline import report, sharing
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import layout
from easyhard.privacy import spend
from easyhard.run import run_notebook
from easyhard.schema import ConfigError, merge

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"
PER_METHOD = [
    "03_central_images",
    "04_frequency",
    "05_pretrain",
    "06_finetune",
    "07_sample",
    "08_evaluate",
    "09_audit",
]
PRIVATE = {"03_central_images", "04_frequency", "06_finetune", "09_audit"}
NO_SIGNAL = 1.0e9  # a min_snr no setting reaches: that warm-up is planned off


def params_file(root: Path, override: dict) -> Path:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(merge(base, override)))
    return path


def decisions(root: Path, override: dict) -> dict[str, str | None]:
    params = load_params(params_file(root, override))
    public = layout(params, Paths(root))
    return {m: sharing.same_as(params, public, m) for m in params.methods}


def test_fetapro_shares_dpfeta_where_its_frequency_release_is_planned_off(tmp_path):
    """At the defaults' N, ε = 1 plans FETA-Pro's frequency release off: FETA-Pro is DP-FETA."""
    assert decisions(tmp_path / "a", {"privacy": {"epsilon": 1.0}}) == {
        "dpfeta": None,
        "dpdm": None,
        "fetapro": "dpfeta",
    }
    assert decisions(tmp_path / "b", {"privacy": {"epsilon": 10.0}}) == dict.fromkeys(
        ("dpfeta", "dpdm", "fetapro")
    )


def test_only_the_table_pair_shares_and_methods_order_does_not_matter(tmp_path):
    """FETA-Pro shares DP-FETA's run whatever the order of methods; with both warm-ups off
    DP-FETA still runs as DPDM does, on its own (only the table's pair shares); the non-private
    ceiling never shares."""
    off = {"central": {"min_snr": NO_SIGNAL}, "frequency": {"min_snr": NO_SIGNAL}}
    over = {"methods": ["fetapro", "dpfeta"], "privacy": {"epsilon": 1.0}}
    assert decisions(tmp_path / "a", over) == {"fetapro": "dpfeta", "dpfeta": None}
    over = off | {"methods": ["dpdm", "dpfeta", "fetapro", "nonprivate"]}
    assert decisions(tmp_path / "b", over) == {
        "dpdm": None,
        "dpfeta": None,
        "fetapro": "dpfeta",
        "nonprivate": None,
    }


def test_no_marker_is_left_beside_real_files_nor_real_files_beside_a_marker(tmp_path, spend_store):
    """Stages run by hand (not by DVC, which clears outputs itself): at ε = 1 FETA-Pro's central
    stage leaves only a marker; run again at ε = 10 it clears the marker and its outputs first
    (the real stage then runs; here the notebook fails without data, after the clearing)."""
    root = tmp_path / "repo"
    params_file(root, {"privacy": {"epsilon": 1.0}})
    out = root / "private/runs/fetapro/central/03_central_images.ipynb"
    central = root / "runs/fetapro/central"
    (central).mkdir(parents=True)
    (central / "central.npz").write_bytes(b"old real output")
    run_notebook(NB / "03_central_images.ipynb", out, root=root, extra={"method": "fetapro"})
    assert sorted(p.name for p in central.iterdir()) == [sharing.MARKER]
    params_file(root, {"privacy": {"epsilon": 10.0}})
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError):  # no training split: the real stage fails
        run_notebook(NB / "03_central_images.ipynb", out, root=root, extra={"method": "fetapro"})
    assert not central.exists()


def test_every_shared_stage_requires_its_partner_in_methods(tmp_path):
    """A later stage that follows a marker refuses too when methods lost DP-FETA since."""
    root = tmp_path / "repo"
    params_file(root, {"methods": ["fetapro"], "privacy": {"epsilon": 1.0}})
    (root / "runs/fetapro/central").mkdir(parents=True)
    (root / "runs/fetapro/central" / sharing.MARKER).write_text(json.dumps({"same_as": "dpfeta"}))
    out = root / "private/runs/fetapro/frequency/04_frequency.ipynb"
    with pytest.raises(ConfigError, match="add dpfeta to methods"):
        run_notebook(NB / "04_frequency.ipynb", out, root=root, extra={"method": "fetapro"})


def test_fetapro_alone_where_its_run_is_dpfetas_is_refused_in_one_line(tmp_path, spend_store):
    root = tmp_path / "repo"
    params_file(root, {"methods": ["fetapro"], "privacy": {"epsilon": 1.0}})
    out = root / "private/runs/fetapro/central/03_central_images.ipynb"
    with pytest.raises(ConfigError, match="its run is dpfeta's: add dpfeta to methods"):
        run_notebook(NB / "03_central_images.ipynb", out, root=root, extra={"method": "fetapro"})
    assert not out.exists() and not (root / "runs").exists()
    done = subprocess.run(
        [sys.executable, "-m", "easyhard.run", str(NB / "03_central_images.ipynb"), str(out)]
        + ["--method", "fetapro"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "add dpfeta to methods" in done.stderr


def test_the_decision_reads_public_values_only(tmp_path):
    """Two held-out splits of the same declared layout, with different images, give the same
    decision (the training data is never an input: same_as takes params and the layout)."""
    rng = np.random.default_rng(0)
    out = []
    for name in ("a", "b"):
        root = tmp_path / name
        path = params_file(root, {"data": {"name": "folder"}, "privacy": {"epsilon": 1.0}})
        test = root / "data" / "prepared" / "test.npz"
        test.parent.mkdir(parents=True)
        x = rng.integers(0, 256, (30, 1, 28, 28), dtype=np.uint8)
        np.savez(test, x=x, y=np.arange(30) % 10, classes=np.asarray([str(i) for i in range(10)]))
        params = load_params(path)
        out.append(
            {m: sharing.same_as(params, layout(params, Paths(root)), m) for m in params.methods}
        )
    assert out[0] == out[1] and out[0]["fetapro"] == "dpfeta"


def test_stage_outputs_are_the_ones_dvc_yaml_declares():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for nb in PER_METHOD:
        stage = next(
            s for s in spec["stages"].values() if "do" in s and f"{nb}.ipynb" in s["do"]["cmd"]
        )
        declared = [
            next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots")
            for o in stage["do"].get(key, [])
        ]
        got = sharing.stage_outputs(ROOT, NB / f"{nb}.ipynb", "fetapro")
        assert [str(p.relative_to(ROOT)) for p in got] == [
            d.replace("${item}", "fetapro") for d in declared
        ]
    with pytest.raises(ValueError, match="no per-method stage"):
        sharing.stage_outputs(ROOT, "notebooks/10_report.ipynb", "fetapro")


def test_a_shared_stage_reads_no_data_spends_nothing_and_marks_every_output(tmp_path, spend_store):
    """FETA-Pro's stages at ε = 1, with no data anywhere: no notebook runs (it would fail without
    the training split), each declared output says whose run it is, the spend store stays empty,
    and no training split is needed."""
    root = tmp_path / "repo"
    params_file(root, {"privacy": {"epsilon": 1.0}})
    for nb in PER_METHOD:
        stage = {"03_central_images": "central", "04_frequency": "frequency"}.get(nb, nb[3:])
        out = root / ("private/" if nb in PRIVATE else "") / f"runs/fetapro/{stage}/{nb}.ipynb"
        assert (
            run_notebook(NB / f"{nb}.ipynb", out, root=root, extra={"method": "fetapro"})
            == "dpfeta"
        )
        cells = nbformat.read(out, as_version=4).cells
        assert [c.cell_type for c in cells] == ["markdown"] and "dpfeta's run" in cells[0].source
        for path in sharing.stage_outputs(root, NB / f"{nb}.ipynb", "fetapro"):
            marker = path if path.suffix == ".json" else path / sharing.MARKER
            assert json.loads(marker.read_text())["same_as"] == "dpfeta", path
    assert not (root / "private" / "prepared").exists()
    assert not spend_store.exists() or spend.sources(spend_store) == {}


def test_the_cli_plan_names_the_run_the_stages_share(tmp_path, capsys):
    from easyhard.privacy.__main__ import main

    for eps in (1.0, 10.0):
        root = tmp_path / f"e{eps:g}"
        path = params_file(root, {"privacy": {"epsilon": eps}})
        assert main(["plan", "--params", str(path)]) == 0
        last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        params = load_params(path)
        public = layout(params, Paths(root))
        assert {m: r["same_as"] for m, r in last.items()} == {
            m: sharing.same_as(params, public, m) for m in params.methods
        }
        assert last["fetapro"]["same_as"] == ("dpfeta" if eps == 1.0 else None)


def _headline(fid: float, acc: float) -> dict:
    """What the evaluate stage writes to metrics.json."""
    out = {"epsilon": 0.997, "private": True, "fid": fid}
    for i, c in enumerate(("cnn", "resnet", "logreg")):
        out |= {c: acc - 0.01 * i, f"{c}_sd": 0.01}
    return out


def _committed_runs(root: Path) -> None:
    """runs/ as a run at ε = 1 leaves it: DP-FETA's and DPDM's results, FETA-Pro's markers."""
    for m, fid, acc in (("dpfeta", 200.0, 0.4), ("dpdm", 290.0, 0.2)):
        (root / "runs" / m / "evaluate").mkdir(parents=True)
        (root / "runs" / m / "metrics.json").write_text(json.dumps(_headline(fid, acc)))
        (root / "runs" / m / "verdict.json").write_text(
            json.dumps({"verdict": "pass", "eps_hat": 0.8})
        )
        (root / "runs" / m / "evaluate" / "details.json").write_text(
            json.dumps({"target_epsilon": 1.0, "seed": 0})
        )
    for name in ("metrics.json", "verdict.json"):
        (root / "runs" / "fetapro").mkdir(parents=True, exist_ok=True)
        (root / "runs" / "fetapro" / name).write_text(json.dumps({"same_as": "dpfeta"}))
    (root / "report").mkdir()
    (root / "report" / "privacy.json").write_text(json.dumps({"epsilon": 1.0, "private": True}))


def test_the_report_and_readme_table_give_a_shared_method_its_runs_results(tmp_path):
    _committed_runs(tmp_path)
    lines = report.readme_table(tmp_path)
    dpfeta = next(r for r in lines if r.startswith("| DP-FETA |"))
    fetapro = next(r for r in lines if r.startswith("| FETA-Pro"))
    assert fetapro.startswith("| FETA-Pro (= DP-FETA's run) |")
    assert fetapro.split("|")[2:] == dpfeta.split("|")[2:]
    metrics = report.resolved_metrics(Paths(tmp_path), ["dpfeta", "dpdm", "fetapro"])
    assert metrics["fetapro"] == metrics["dpfeta"] | {"same_as": "dpfeta"}
    rows = report.table(metrics, ["cnn"])
    assert rows[2]["method"] == "FETA-Pro (= DP-FETA's run: the same plan)"
    text = report.reading(metrics, ["cnn"])
    assert "FETA-Pro runs the same plan as DP-FETA here" in text
    assert "ahead of FETA-Pro" not in text and "FETA-Pro is most" not in text
    assert "ceiling" not in text  # a shared run is not a method without ε
    with_ceiling = metrics | {"nonprivate": _headline(150.0, 0.9) | {"epsilon": None}}
    assert "The non-private ceiling reaches 0.900" in report.reading(with_ceiling, ["cnn"])
    (tmp_path / "runs" / "dpfeta" / "metrics.json").write_text(json.dumps({"same_as": "fetapro"}))
    with pytest.raises(ValueError, match="cycle"):
        sharing.resolve(tmp_path / "runs", "fetapro")


def test_the_sweep_counts_a_shared_run_with_the_runs_metrics(tmp_path):
    """From metrics files and from `dvc exp show --json` alike: FETA-Pro's row is DP-FETA's run,
    marked, so the ordering between them is equality (≥) and never a second draw."""
    _committed_runs(tmp_path)
    files = [str(tmp_path / "runs" / m / "metrics.json") for m in ("dpfeta", "dpdm", "fetapro")]
    rows = sweep.rows_from_metrics_files(files)
    by = {r["method"]: r for r in rows}
    assert by["fetapro"]["same_as"] == "dpfeta" and by["fetapro"]["target_epsilon"] == 1.0
    assert {k: v for k, v in by["fetapro"].items() if k not in ("method", "same_as")} == {
        k: v for k, v in by["dpfeta"].items() if k != "method"
    }
    metrics = {
        f"runs/{m}/metrics.json": {"data": json.loads(Path(f).read_text())}
        for m, f in zip(("dpfeta", "dpdm", "fetapro"), files, strict=True)
    }
    exp = [
        {
            "rev": "a" * 40,
            "name": "exp-1",
            "data": {
                "rev": "a" * 40,
                "params": {"params.yaml": {"data": {"privacy": {"epsilon": 1.0}, "seed": 0}}},
                "metrics": metrics,
            },
            "error": None,
            "experiments": None,
        }
    ]
    got = {r["method"]: r for r in sweep.rows_from_exp_show(exp)}
    assert got["fetapro"]["cnn"] == got["dpfeta"]["cnn"] and got["fetapro"]["same_as"] == "dpfeta"
    summary = sweep.summarise(list(got.values()))
    assert next(r for r in summary if r["method"] == "fetapro")["same_as"] == "dpfeta"
    lines = sweep.ordering_lines(summary)
    line = next(x for x in lines if "fetapro vs dpfeta" in x)
    assert line.endswith(
        "fid =, cnn =, resnet =, logreg = (the same runs: fetapro's plan is dpfeta's, "
        "equal by construction)"
    ), line
    own = dict(got["fetapro"], experiment="exp-0", seed=1)
    own.pop("same_as")
    with pytest.raises(ValueError, match="mixes its own runs with runs shared with dpfeta"):
        sweep.summarise([*got.values(), own])
    with pytest.raises(ValueError, match="which methods does not list"):
        report.resolved_metrics(Paths(tmp_path), ["dpdm", "fetapro"])
    metrics.pop("runs/dpfeta/metrics.json")  # e.g. saved while the run was going: left out
    assert {r["method"] for r in sweep.rows_from_exp_show(exp)} == {"dpdm"}
