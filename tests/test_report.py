"""The report's table and reading on metrics written the way the evaluate stage writes them: rounded
numbers, ± over classifier seeds, ↑/↓, ∞ for the ceiling, and a reading that follows the numbers."""

from __future__ import annotations

import pytest

from easyhard.pipeline.evaluate import headline
from easyhard.pipeline.report import NOT_PRIVATE, export, reading, table

CLASSIFIERS = ("cnn", "logreg")


def _metrics(eps: float | None, fid: float, cnn: float, sd: float, private: bool = True) -> dict:
    details = {
        "epsilon": eps,
        "private": private,
        "nonprivate": eps is None,
        "fid": fid,
        "cnn_acc_mean": cnn,
        "cnn_acc_std": sd,
        "logreg_acc_mean": cnn - 0.1,
        "logreg_acc_std": sd,
    }
    return headline(details, CLASSIFIERS)


def _run(feta_cnn: float, dpdm_cnn: float, sd: float = 0.01) -> dict:
    return {
        "dpfeta": _metrics(9.975360165329072, 202.65906367196163, feta_cnn, sd),
        "dpdm": _metrics(9.99, 240.1234, dpdm_cnn, sd),
        "nonprivate": _metrics(None, 120.0, 0.9, 0.02),
    }


def test_headline_rounds_and_flags_the_ceiling():
    m = _run(0.53312, 0.4)
    assert m["dpfeta"] == {
        "epsilon": 9.975,
        "private": True,
        "fid": 202.7,
        "cnn": 0.533,
        "cnn_sd": 0.01,
        "logreg": 0.433,
        "logreg_sd": 0.01,
    }
    assert m["nonprivate"]["epsilon"] is None and m["nonprivate"]["private"] is False
    rec = {"epsilon": 9.9, "private": True, "nonprivate": False, "fid": 1.0, "recognised": 0.61234}
    for c in CLASSIFIERS:
        rec |= {f"{c}_acc_mean": 0.5, f"{c}_acc_std": 0.0}
    assert headline(rec, CLASSIFIERS)["recognised"] == 0.612
    seeded = _metrics(9.9, 200.0, 0.5, 0.01, private=False)
    assert seeded["private"] is False and seeded["epsilon"] == 9.9


def test_table_is_rounded_with_spread_arrows_and_infinity():
    rows = table(_run(0.53312, 0.4), CLASSIFIERS)
    assert list(rows[0]) == ["method", "ε ↓", "FID ↓", "cnn accuracy ↑", "logreg accuracy ↑"]
    assert rows[0] == {
        "method": "DP-FETA",
        "ε ↓": "9.97",
        "FID ↓": "202.7",
        "cnn accuracy ↑": "0.533 ± 0.010",
        "logreg accuracy ↑": "0.433 ± 0.010",
    }
    assert rows[2]["method"] == "non-private ceiling" and rows[2]["ε ↓"] == NOT_PRIVATE
    seeded = table({"dpdm": _metrics(9.9, 200.0, 0.5, 0.01, private=False)}, CLASSIFIERS)
    assert "not private" in seeded[0]["ε ↓"]


def test_the_reading_follows_the_numbers():
    ahead = reading(_run(0.60, 0.40), CLASSIFIERS)
    assert "With the cnn classifier, DP-FETA is most accurate (0.600 ± 0.010)" in ahead
    assert "do not overlap" in ahead
    assert "DP-FETA has the lowest FID among the private methods (202.7" in ahead
    assert "ceiling reaches 0.900 with cnn (+0.300" in ahead
    assert "std over classifier seeds" in ahead
    behind = reading(_run(0.40, 0.60), CLASSIFIERS)
    assert "With the cnn classifier, DPDM is most accurate (0.600 ± 0.010)" in behind
    close = reading(_run(0.50, 0.49, sd=0.05), CLASSIFIERS)
    assert "intervals overlap, so this run does not separate them" in close
    assert "nothing to compare" in reading({"nonprivate": _run(0.5, 0.5)["nonprivate"]}, ["cnn"])


def test_table_shows_the_recognised_share_where_a_method_has_it():
    run = _run(0.53312, 0.4)
    run["dpfeta"] = run["dpfeta"] | {"recognised": 0.6123}
    rows = table(run, CLASSIFIERS)
    assert [r["recognised ↑"] for r in rows] == ["0.612", "–", "–"]
    assert "recognised ↑" not in table(_run(0.5, 0.4), CLASSIFIERS)[0]


def test_export_copies_the_figures(tmp_path):
    src = tmp_path / "figures"
    src.mkdir()
    (src / "metrics.png").write_bytes(b"\x89PNG")
    done = export(src, tmp_path / "docs")
    assert [p.name for p in done] == ["metrics.png"] and (tmp_path / "docs/metrics.png").is_file()
    with pytest.raises(FileNotFoundError, match="no PNG figures"):
        export(tmp_path / "empty", tmp_path / "docs")


def test_readme_table_is_what_the_readme_test_expects(tmp_path):
    """`python -m easyhard.pipeline.report --readme` prints the table tests/test_readme.py checks:
    one row per method with ε (2 decimals), FID (1), accuracies (3) ± classifier-seed std, the
    audit verdict, then the dataset total (∞ when privacy.json has none)."""
    import json

    from easyhard.pipeline.report import README_METHODS, readme_table

    for i, m in enumerate(README_METHODS.values()):
        d = tmp_path / "runs" / m
        d.mkdir(parents=True)
        metrics = {"epsilon": 9.976, "fid": 100.04 + i, "private": True}
        for c in ("cnn", "resnet", "logreg"):
            metrics |= {c: 0.5 + i / 10, f"{c}_sd": 0.0123}
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "verdict.json").write_text(json.dumps({"verdict": "inconclusive", "eps_hat": 1.234}))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "privacy.json").write_text(
        json.dumps({"epsilon": 29.9, "private": True})
    )
    lines = readme_table(tmp_path)
    assert (
        lines[0] == "| method | ε | FID ↓ | CNN acc. ↑ | ResNet acc. ↑ | log. reg. acc. ↑ "
        "| recognised ↑ | audit |"
    )
    assert lines[2] == (
        "| DP-FETA | 9.98 | 100.0 | 0.500 ± 0.012 | 0.500 ± 0.012 | 0.500 ± 0.012 | – "
        "| inconclusive (ε̂ = 1.23) |"
    )
    assert [ln.split(" | ")[0] for ln in lines[2:5]] == ["| DP-FETA", "| DPDM", "| FETA-Pro"]
    metrics = json.loads((tmp_path / "runs" / "dpdm" / "metrics.json").read_text())
    (tmp_path / "runs" / "dpdm" / "metrics.json").write_text(
        json.dumps(metrics | {"recognised": 0.4567})
    )
    assert readme_table(tmp_path)[3].split(" | ")[-2] == "0.457"
    assert lines[-1] == "dataset total ε = 29.90 (every release composed)"
    (tmp_path / "report" / "privacy.json").write_text(json.dumps({"epsilon": None}))
    assert readme_table(tmp_path)[-1].startswith("dataset total ε = ∞")
