"""The README's results table is the committed default run's metrics, number for number.

Each row of the table under "## Results" names a method; its ε, FID and every classifier's
accuracy (mean ± std over classifier seeds) must equal ``runs/<method>/metrics.json`` rounded as
printed, and the dataset total must equal ``report/privacy.json`` (both committed with the run).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"DP-FETA": "dpfeta", "DPDM": "dpdm", "FETA-Pro": "fetapro"}


def _table() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def test_readme_results_table_equals_the_committed_metrics():
    table = _table()
    header, rows = table[0], table[2:]
    assert [r[0] for r in rows] == list(ROWS)
    for row in rows:
        m = json.loads((ROOT / "runs" / ROWS[row[0]] / "metrics.json").read_text())
        cells = dict(zip(header, row, strict=True))
        assert cells["ε"] == _fmt(m["epsilon"], 2)
        assert cells["FID ↓"] == _fmt(m["fid"], 1)
        for name, col in (
            ("cnn", "CNN acc. ↑"),
            ("resnet", "ResNet acc. ↑"),
            ("logreg", "log. reg. acc. ↑"),
        ):
            assert cells[col] == f"{_fmt(m[name], 3)} ± {_fmt(m[name + '_sd'], 3)}", (row[0], col)
        audit = json.loads((ROOT / "runs" / ROWS[row[0]] / "audit.json").read_text())
        assert audit["verdict"] in cells["audit"]


def test_readme_dataset_total_equals_the_committed_report():
    privacy = json.loads((ROOT / "report" / "privacy.json").read_text())
    text = (ROOT / "README.md").read_text()
    found = re.search(r"dataset total ε = ([0-9.]+)", text)
    assert found and float(found.group(1)) == round(privacy["epsilon"], 2)
