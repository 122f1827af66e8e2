"""The README's first screen: short, its links resolve, and its results are the committed run's.

When a default run's results are committed (``runs/<method>/metrics.json``), each row of the first
table under "## Results" names a method and its ε, FID and every classifier's accuracy (mean ± std
over classifier seeds) must equal that file rounded as printed, and the dataset total must equal
``report/privacy.json``. Without committed results the README must say so and show no numbers.
When an ε sweep is committed (``docs/sweep/sweep.json``), the second table is exactly the table
``python -m easyhard.sweep`` prints for it (mean ± std over whole-pipeline repeats).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from easyhard.pipeline.sharing import resolve

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"DP-FETA": "dpfeta", "DPDM": "dpdm", "FETA-Pro": "fetapro"}


def _tables() -> list[list[str]]:
    """The markdown tables under "## Results", each as its lines, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    tables: list[list[str]] = []
    previous = False
    for ln in section.splitlines():
        row = ln.startswith("| ")
        if row and not previous:
            tables.append([])
        if row:
            tables[-1].append(ln)
        previous = row
    return tables


def _table() -> list[list[str]]:
    """The first table: the default run, its cells."""
    tables = _tables()
    lines = tables[0] if tables else []
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


COMMITTED = all((ROOT / "runs" / m / "metrics.json").is_file() for m in ROWS.values())


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert missing == []


def test_readme_results_say_what_is_committed():
    section = (ROOT / "README.md").read_text().split("\n## Results", 1)[1].split("\n## ", 1)[0]
    if COMMITTED:
        assert _table()
    else:  # nothing measured for this code: say so, quote no result
        assert "Not committed for this code yet" in section and not _table()


@pytest.mark.skipif(not COMMITTED, reason="no default run committed for this code")
def test_readme_results_table_equals_the_committed_metrics():
    table = _table()
    header, rows = table[0], table[2:]
    titles = [r[0].split(" (= ")[0] for r in rows]  # "FETA-Pro (= DP-FETA's run)": shared
    assert titles == list(ROWS)
    for title, row in zip(titles, rows, strict=True):
        owner = resolve(ROOT / "runs", ROWS[title])  # a shared run's files are its owner's
        m = json.loads((ROOT / "runs" / owner / "metrics.json").read_text())
        cells = dict(zip(header, row, strict=True))
        assert cells["ε"] == _fmt(m["epsilon"], 2)
        assert cells["FID ↓"] == _fmt(m["fid"], 1)
        for name, col in (
            ("cnn", "CNN acc. ↑"),
            ("resnet", "ResNet acc. ↑"),
            ("logreg", "log. reg. acc. ↑"),
        ):
            assert cells[col] == f"{_fmt(m[name], 3)} ± {_fmt(m[name + '_sd'], 3)}", (row[0], col)
        if m.get("recognised") is not None or "recognised ↑" in cells:
            assert cells["recognised ↑"] == _fmt(m["recognised"], 3), (row[0], "recognised")
        audit = json.loads((ROOT / "runs" / owner / "audit.json").read_text())
        assert audit["verdict"] in cells["audit"]


@pytest.mark.skipif(not COMMITTED, reason="no default run committed for this code")
def test_readme_dataset_total_equals_the_committed_report():
    privacy = json.loads((ROOT / "report" / "privacy.json").read_text())
    text = (ROOT / "README.md").read_text()
    found = re.search(r"dataset total ε = ([0-9.]+)", text)
    assert found and float(found.group(1)) == round(privacy["epsilon"], 2)


SWEEP = json.loads((ROOT / "docs" / "sweep" / "sweep.json").read_text())


@pytest.mark.skipif(not SWEEP, reason="no ε sweep committed for this code")
def test_readme_sweep_table_equals_the_committed_sweep():
    from easyhard.sweep_summary import summary_table

    tables = _tables()
    assert len(tables) >= 2, "the committed sweep's table is missing from the README's Results"
    expected = [ln for ln in summary_table(SWEEP) if ln.startswith("|")]
    assert tables[1] == expected
    text = (ROOT / "README.md").read_text()
    assert "docs/sweep/quality_vs_epsilon.png" in text


@pytest.mark.skipif(not SWEEP, reason="no ε sweep committed for this code")
def test_readme_orderings_are_the_committed_sweeps_with_their_spread():
    """Every ordering the README states is a line easyhard.ordering computes from the sweep."""
    from easyhard.ordering import ordering_lines

    expected = ordering_lines(SWEEP)
    section = (ROOT / "README.md").read_text().split("\n## Results", 1)[1].split("\n## ", 1)[0]
    stated = [ln for ln in section.splitlines() if ln.startswith("ε = ")]
    assert stated == expected
