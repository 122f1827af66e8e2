"""benchmarks/sampling.py on a tiny untrained network and fake real features (no Inception)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from easyhard.checkpoint import build_denoiser, save_model
from easyhard.config import NetworkConfig

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
NET = NetworkConfig(channels=(8, 16), attention=(False, False), norm_groups=4)


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "bench_sampling", ROOT / "benchmarks" / "sampling.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


B = _load_benchmark()


def pixels(x: np.ndarray) -> np.ndarray:
    """Cheap stand-in for Inception: the flattened pixels."""
    return x.reshape(len(x), -1).astype(np.float64)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_denoiser(NET, SHAPE, 3, 0.5).eval()


def test_run_benchmark_rows_and_choice(tiny):
    settings = [
        B.Setting("dpm-3", "dpmsolver", 3),
        B.Setting("heun-3", "heun", 3),
        B.Setting("churn-4", "heun", 4, churn=10.0, churn_tmin=0.05, churn_tmax=50.0),
    ]
    real = np.random.default_rng(0).random((30, 64))
    logs = []
    res = B.run_benchmark(
        tiny, SHAPE, 3, real, settings, count=7, batch_size=4, features=pixels, log=logs.append
    )
    rows = res["rows"]
    assert [r["name"] for r in rows] == ["dpm-3", "heun-3", "churn-4"]
    assert [r["nfe"] for r in rows] == [3, 5, 7]
    for r in rows:
        assert np.isfinite(r["fid"]) and r["seconds"] > 0 and r["count"] == 7
        assert r["seconds_per_1000"] == pytest.approx(r["seconds"] / 7 * 1000)
    assert res["reference"] == "churn-4" and len(logs) == 3
    assert res["cheapest"] in {r["name"] for r in rows}
    md = B.markdown_rows(res)
    assert len(md) == 3 and md[2].startswith("| churn-4 | heun, S_churn 10 | 4 | 7 |")
    fig = B.fid_vs_nfe_figure(res)
    assert fig.axes[0].get_xscale() == "log"


def test_pick_cheapest():
    rows = [
        {"name": "a", "nfe": 10, "seconds": 1.0, "fid": 11.0},
        {"name": "b", "nfe": 20, "seconds": 2.0, "fid": 10.4},
        {"name": "c", "nfe": 1999, "seconds": 99.0, "fid": 10.0},
    ]
    assert B.pick_cheapest(rows) == {"reference": "c", "cheapest": "b", "tolerance": 0.05}
    assert B.pick_cheapest(rows, tolerance=0.2)["cheapest"] == "a"


def test_default_grid_nfe():
    assert [s.nfe for s in B.default_settings()] == [10, 20, 35, 79, 35, 79, 35, 79, 199, 1999]
    assert [s.nfe for s in B.default_settings(quick=True)] == [10, 35, 49]
    assert B.default_settings()[-1].churn > 0


def test_cli_writes_results(tmp_path, tiny, monkeypatch):
    """The CLI end to end on a saved tiny model (features stubbed to keep it fast)."""
    model = tmp_path / "model.pt"
    save_model(model, tiny, NET, SHAPE)
    real = tmp_path / "real.npz"
    np.savez(real, feats=np.random.default_rng(1).random((30, 64)))
    monkeypatch.setattr(B, "default_settings", lambda *a, **k: [B.Setting("h2", "heun", 2)])
    import easyhard.metrics as M

    monkeypatch.setattr(M, "inception_features", lambda x, **kw: pixels(x))
    out = tmp_path / "out"
    rc = B.main(["--model", str(model), "--real-features", str(real), "--quick", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "sampling.json").read_text())
    assert result["rows"][0]["nfe"] == 3 and result["cheapest"] == "h2" and result["quick"]
    assert (out / "sampling_fid_vs_nfe.png").stat().st_size > 0
    assert B.main(["--model", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2


def test_cli_only_reruns_named_settings_and_merges(tmp_path, tiny, monkeypatch):
    """--only replaces the named rows of an existing sampling.json and keeps the others."""
    model = tmp_path / "model.pt"
    save_model(model, tiny, NET, SHAPE)
    real = tmp_path / "real.npz"
    np.savez(real, feats=np.random.default_rng(1).random((30, 64)))
    grid = [B.Setting("h2", "heun", 2), B.Setting("e3", "euler", 3)]
    monkeypatch.setattr(B, "default_settings", lambda *a, **k: grid)
    import easyhard.metrics as M

    monkeypatch.setattr(M, "inception_features", lambda x, **kw: pixels(x))
    out = tmp_path / "out"
    common = ["--model", str(model), "--real-features", str(real), "--quick", "--out", str(out)]
    assert B.main(common) == 0
    first = json.loads((out / "sampling.json").read_text())
    assert B.main([*common, "--only", "e3"]) == 0
    merged = json.loads((out / "sampling.json").read_text())
    assert [r["name"] for r in merged["rows"]] == ["h2", "e3"]
    assert merged["rows"][0] == first["rows"][0]  # untouched
    assert merged["rows"][1]["fid"] == pytest.approx(
        first["rows"][1]["fid"]
    )  # same seed, same images
    assert B.main([*common, "--only", "nope"]) == 2
