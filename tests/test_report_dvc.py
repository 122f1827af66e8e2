"""What a reader sees through DVC, on a tiny git + DVC repository holding files written the way
the stages write them: `dvc metrics show` fits in 175 characters a line, the documented
`dvc exp show` commands in 200, and `dvc plots show` draws the project's PNGs with no script and
no network address (no vega, no CDN)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from easyhard.pipeline.audit import summary as audit_summary
from easyhard.pipeline.evaluate import headline

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "experiments.md"
METHODS = ("dpfeta", "dpdm", "fetapro")
CLASSIFIERS = ("cnn", "resnet", "logreg")

pytestmark = pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc not installed")


def _details(eps: float | None, fid: float, acc: float) -> dict:
    """An evaluate stage's details.json (full precision), as easyhard.pipeline.evaluate writes."""
    out = {
        "private": True,
        "nonprivate": eps is None,
        "epsilon": eps,
        "epsilon_rdp": None if eps is None else eps * 1.15,
        "target_epsilon": 10.0,
        "delta": 1e-05,
        "noise_multiplier": 0.6379008467033074,
        "fid": fid,
        "precision": 0.01,
        "recall": 0.008,
        "recognised": 0.61234567,
        "classifier_seeds": 3,
        "dataset_epsilon": 21.010480022678916,
    }
    for i, c in enumerate(CLASSIFIERS):
        out[f"{c}_acc_mean"] = acc - 0.05 * i + 1e-9
        out[f"{c}_acc_std"] = 0.040792156108742275
    return out


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _dvc(root: Path, *args: str) -> str:
    done = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _write_run(root: Path, methods, eps: float, fid: float, acc: float) -> None:
    for m in methods:
        d = root / "runs" / m
        (d / "evaluate").mkdir(parents=True, exist_ok=True)
        details = _details(None if m == "nonprivate" else eps * 0.9975, fid, acc)
        (d / "evaluate" / "details.json").write_text(json.dumps(details))
        (d / "metrics.json").write_text(json.dumps(headline(details, CLASSIFIERS)))
        # the audit stage's metric, made by its own summary() from a full record
        record = {"verdict": "conclusive-pass", "max_epsilon": 5.7812345}
        record["release"] = {"eps_hat": 1.3812345, "verdict": "inconclusive"}
        (d / "verdict.json").write_text(json.dumps(audit_summary(record)))
    (root / "report").mkdir(exist_ok=True)
    (root / "report" / "privacy.json").write_text(
        json.dumps({"epsilon": 21.010480022678916, "private": True})
    )


def _repo(tmp_path: Path, methods) -> Path:
    """A git + DVC repository with this project's metric files (dvc.yaml's own metrics: and
    plots: entries, expanded over ``methods``) and one stage with a dependency."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@example.org")
    _git(root, "config", "user.name", "t")
    _dvc(root, "init", "-q")
    ours = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    metrics = [
        path.replace("${item}", m)
        for st in ours["stages"].values()
        for entry in (st.get("do", st).get("metrics") or [])
        for path in entry
        for m in (methods if "${item}" in path else [""])
    ]
    (root / "data").mkdir()
    (root / "data" / "input.txt").write_text("a")
    (root / "params.yaml").write_text(
        yaml.safe_dump({"seed": 0, "methods": list(methods), "privacy": {"epsilon": 10.0}})
    )
    stage = {"cmd": "cp data/input.txt out.txt", "deps": ["data/input.txt"], "outs": ["out.txt"]}
    stage["params"] = ["privacy.epsilon"]
    spec = {"stages": {"ev": stage}, "metrics": metrics, "plots": ours["plots"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    _write_run(root, methods, 10.0, 202.65906367196163, 0.446)
    _dvc(root, "repro", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "baseline")
    return root


def _width(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("methods", [METHODS, (*METHODS, "nonprivate")])
def test_dvc_metrics_show_fits_in_175_characters(tmp_path, methods):
    root = _repo(tmp_path, methods)
    out = _dvc(root, "metrics", "show")
    assert len(out.splitlines()) == 1 + 2 * len(methods) + 1  # header, metrics + audit, report
    assert _width(out) <= 175, out
    ceiling = [line for line in out.splitlines() if line.startswith("runs/nonprivate/metrics")]
    for line in ceiling:  # the ceiling: no epsilon (shown '-') and flagged not private
        assert "10.0" not in line and "False" in line


def _documented_exp_show() -> list[str]:
    """The table-printing `dvc exp show` commands docs/experiments.md gives.

    `--json` lines (saved to a file for another machine) print no table, so no width applies.
    """
    lines = re.findall(r"^(dvc exp show [^\n`]+)$", DOCS.read_text(), flags=re.M)
    found = [line for line in lines if "--json" not in line]
    assert found, "docs/experiments.md gives no `dvc exp show` command"
    return found


def test_the_documented_dvc_exp_show_fits_in_200_characters(tmp_path):
    root = _repo(tmp_path, METHODS)
    (root / "data" / "input.txt").write_text("b")  # an experiment: a changed param and dep
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["privacy"]["epsilon"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    _write_run(root, METHODS, 1.0, 260.0, 0.31)
    _dvc(root, "repro", "-q")
    for command in _documented_exp_show():
        args = [a.strip("'") for a in command.split()[1:]]
        out = _dvc(root, *args, "--no-pager")
        assert _width(out) <= 200, (command, out)
        header = out.splitlines()[0]
        assert "privacy.epsilon" in header  # the changed param
        assert "Created" not in header and "data/input.txt" not in header
        assert header.count("metrics.json:") == len(METHODS)  # one key metric per method


def test_dvc_plots_show_needs_no_network(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = _repo(tmp_path, METHODS)
    for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]:
        assert isinstance(entry, str) and entry.endswith(".png"), entry  # images only: no vega
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        (root / entry).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(root / entry)
        plt.close(fig)
    _dvc(root, "plots", "show")
    html = (root / "dvc_plots" / "index.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count("<img") == len(yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"])
