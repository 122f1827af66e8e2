"""Orderings between methods are stated with their run-to-run spread, never from means alone."""

from __future__ import annotations

import pytest

from easyhard.ordering import compare, ordering_lines


def _row(method: str, eps: float, n: int, fid: float, fid_std: float, acc: float, acc_std: float):
    return {
        "method": method,
        "target_epsilon": eps,
        "repeats": n,
        "fid": fid,
        "fid_std": fid_std,
        "cnn_acc_mean": acc,
        "cnn_acc_std": acc_std,
    }


def test_a_gap_beyond_both_spreads_is_a_clear_ordering():
    summary = [
        _row("dpfeta", 10, 3, 170.0, 5.0, 0.78, 0.02),
        _row("dpdm", 10, 3, 280.0, 5.0, 0.22, 0.03),
    ]
    (c,) = compare(summary, "dpfeta", "dpdm", ["cnn"])
    assert c.target_epsilon == 10 and c.repeats == (3, 3)
    assert c.signs == {"fid": ">", "cnn": ">"}  # FID lower is better, accuracy higher
    assert c.holds  # every metric at least as good


def test_a_gap_within_the_spread_is_not_a_clear_ordering():
    summary = [
        _row("fetapro", 1, 3, 295.0, 8.0, 0.24, 0.05),
        _row("dpfeta", 1, 3, 300.0, 8.0, 0.28, 0.05),
    ]
    (c,) = compare(summary, "fetapro", "dpfeta", ["cnn"])
    assert c.signs == {"fid": "≥", "cnn": "≤"}  # better/worse mean, gap inside s_a + s_b
    assert not c.holds


def test_a_gap_beyond_the_spread_the_wrong_way():
    summary = [
        _row("fetapro", 10, 3, 120.0, 5.0, 0.70, 0.01),
        _row("dpfeta", 10, 3, 170.0, 5.0, 0.78, 0.01),
    ]
    (c,) = compare(summary, "fetapro", "dpfeta", ["cnn"])
    assert c.signs == {"fid": ">", "cnn": "<"}


def test_one_run_has_no_spread_so_no_clear_ordering():
    summary = [_row("dpfeta", 2, 1, 200.0, 0.0, 0.5, 0.0), _row("dpdm", 2, 1, 290.0, 0.0, 0.2, 0.0)]
    (c,) = compare(summary, "dpfeta", "dpdm", ["cnn"])
    assert c.signs == {"fid": "≥", "cnn": "≥"}  # direction only: one run per method
    (line,) = ordering_lines(summary, [("dpfeta", "dpdm")], ["cnn"])
    assert line == "ε = 2, 1 vs 1 repeats: dpfeta vs dpdm: fid ≥, cnn ≥ (holds)"


def test_lines_cover_every_epsilon_both_methods_have():
    summary = [
        _row("dpfeta", 1, 3, 300.0, 1.0, 0.3, 0.01),
        _row("dpdm", 1, 3, 305.0, 1.0, 0.15, 0.01),
        _row("dpfeta", 10, 3, 170.0, 1.0, 0.78, 0.01),
        _row("fetapro", 10, 3, 120.0, 1.0, 0.76, 0.01),
    ]
    lines = ordering_lines(summary, [("dpfeta", "dpdm"), ("fetapro", "dpfeta")], ["cnn"])
    assert lines == [
        "ε = 1, 3 vs 3 repeats: dpfeta vs dpdm: fid >, cnn > (holds)",
        "ε = 10, 3 vs 3 repeats: fetapro vs dpfeta: fid >, cnn < (does not hold)",
    ]


def test_a_missing_metric_is_refused():
    summary = [
        _row("dpfeta", 1, 3, 300.0, 1.0, 0.3, 0.01),
        _row("dpdm", 1, 3, 305.0, 1.0, 0.15, 0.01),
    ]
    with pytest.raises(ValueError, match="resnet"):
        compare(summary, "dpfeta", "dpdm", ["resnet"])
