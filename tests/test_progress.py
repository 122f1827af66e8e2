"""Text progress bars in pipeline runs: no times, and the same lines however slow the machine."""

from __future__ import annotations

import io

import pytest
import tqdm.std

from easyhard import progress


def _log(monkeypatch, seconds_per_call: float, postfix: bool = False, total: int = 200) -> str:
    """A text bar's whole output on a fake clock that advances ``seconds_per_call`` per reading."""
    clock = {"t": 0.0}

    def fake_time() -> float:
        clock["t"] += seconds_per_call
        return clock["t"]

    monkeypatch.setattr(tqdm.std, "time", fake_time)
    monkeypatch.setenv(progress.TEXT_ENV, "1")
    out = io.StringIO()
    bar = progress.progress_bar(range(total), desc="step", file=out)
    for i in bar:
        if postfix and i % 50 == 0:
            bar.set_postfix(loss=f"{1.0 / (i + 1):.3f}")
    bar.close()
    return out.getvalue()


@pytest.mark.parametrize("postfix", [False, True])
def test_text_bar_output_does_not_depend_on_the_clock(monkeypatch, postfix):
    fast = _log(monkeypatch, 1e-6, postfix)
    slow = _log(monkeypatch, 30.0, postfix)  # a machine 10^7 times slower: the same lines
    assert fast == slow
    assert "it/s" not in fast and "<" not in fast  # no rates, no times
    states = [s for s in fast.split("\r") if s.strip()]
    assert states[-1].startswith("step: 100%") and len(states) <= progress.TEXT_STEPS + 8


def test_small_and_unsized_bars(monkeypatch):
    assert _log(monkeypatch, 1e-6, total=3) == _log(monkeypatch, 100.0, total=3)
    monkeypatch.setenv(progress.TEXT_ENV, "1")
    out = io.StringIO()
    for _ in progress.progress_bar(iter(range(5)), desc="x", file=out):
        pass
    assert "5/?" in out.getvalue()
