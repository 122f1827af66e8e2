"""benchmarks/inception.py --quick: both memory layouts timed, the library's path is the one timed."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline_network(monkeypatch):
    import easyhard.fid as fid

    monkeypatch.setattr(fid, "CLEANFID_WEIGHTS", "/nonexistent/inception-2015-12-05.pt")


def test_quick_run_prints_both_layouts_and_the_ratio(capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_inception", ROOT / "benchmarks" / "inception.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    assert mod.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| nchw |" in out and "| channels_last |" in out
    diff = float(re.search(r"max abs feature difference: (\S+)", out).group(1))
    assert diff < 1e-4
    last = out.strip().splitlines()[-1]
    ratio = re.fullmatch(r"easyhard inception_speedup=(\d+\.\d\d)", last)
    assert ratio is not None and float(ratio.group(1)) > 0
