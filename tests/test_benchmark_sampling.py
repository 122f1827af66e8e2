"""benchmarks/sampling.py on a tiny untrained network, with pixels standing in for Inception."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from easyhard.config import defaults
from easyhard.data import ImageSet, save_npz
from easyhard.modelfile import build_denoiser, save_model

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
NET = replace(defaults().network, channels=(8, 16), attention=(False, False), norm_groups=4)


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
        B.Setting("sde-3", "sde-dpmsolver", 3),
        B.restart("rs-3", 3, 1, 2, 0.1, 1.0),
        B.Setting("churn-4", "heun", 4, churn=10.0, churn_tmin=0.05, churn_tmax=50.0),
    ]
    real = np.random.default_rng(0).random((30, 64))
    logs = []
    res = B.run_benchmark(
        tiny,
        SHAPE,
        3,
        real,
        settings,
        count=7,
        batch_size=4,
        features=pixels,
        log=logs.append,
        repeat="rs-3",
    )
    rows = res["rows"]
    assert [r["name"] for r in rows] == ["dpm-3", "sde-3", "rs-3", "churn-4"]
    assert [r["nfe"] for r in rows] == [3, 3, 9, 7]
    for r in rows:
        assert np.isfinite(r["fid"]) and r["seconds"] > 0 and r["count"] == 7 and r["seed"] == 0
        assert r["seconds_per_1000"] == pytest.approx(r["seconds"] / 7 * 1000)
    assert res["reference"] == "rs-3" and len(logs) == 5  # 4 settings + the run-to-run line
    assert res["cheapest"] in {r["name"] for r in rows}
    ref_fid = rows[2]["fid"]
    best = next(r for r in rows if r["name"] == res["cheapest"])
    assert res["fid_ratio"] == pytest.approx(best["fid"] / ref_fid) and res["fid_ratio"] <= 1.05
    rr = res["run_to_run"]
    assert rr["name"] == "rs-3" and rr["seeds"] == [0, 1] and rr["fid"][0] == ref_fid
    assert rr["fid"][1] != rr["fid"][0]  # another seed, other images
    assert rr["rel_diff"] == pytest.approx(abs(rr["fid"][0] - rr["fid"][1]) / np.mean(rr["fid"]))
    md = B.markdown_rows(res)
    assert len(md) == 4 and md[3].startswith("| churn-4 | heun, S_churn 10 | 4 | 7 |")
    assert md[2].startswith("| rs-3 | restart, K=1 x 2 Heun steps in [0.1, 1] | 3 | 9 |")
    fig = B.fid_vs_nfe_figure(res)
    assert fig.axes[0].get_xscale() == "log"


def test_pick_cheapest_and_summary_line():
    rows = [
        {"name": "a", "nfe": 10, "seconds": 1.0, "fid": 11.0},
        {"name": "b", "nfe": 20, "seconds": 2.0, "fid": 10.4},
        {"name": "c", "nfe": 1999, "seconds": 99.0, "fid": 10.0},
    ]
    picked = B.pick_cheapest(rows)
    assert picked["reference"] == "c" and picked["cheapest"] == "b" and picked["tolerance"] == 0.05
    assert picked["fid_ratio"] == pytest.approx(1.04)
    assert B.summary_line({"rows": rows, **picked}) == "easyhard fewstep_nfe=20 fid_ratio=1.040"
    assert B.pick_cheapest(rows, tolerance=0.2)["cheapest"] == "a"
    # as many network calls: the lower FID wins, not the faster clock
    tied = [*rows, {"name": "a2", "nfe": 10, "seconds": 1.5, "fid": 10.2}]
    assert B.pick_cheapest(tied)["cheapest"] == "a2"
    worse = [dict(r, fid=20.0) if r["name"] != "c" else r for r in rows]
    assert B.summary_line({"rows": worse, **B.pick_cheapest(worse)}) == (
        "easyhard fewstep_nfe=1999 fid_ratio=1.000"
    )


def test_default_grid():
    grid = B.default_settings()
    nfe = {s.name: s.nfe for s in grid}
    assert grid[-1].name == "heun-churn-1000" and grid[-1].nfe == 1999 == max(nfe.values())
    ref = grid[-1]
    assert (ref.churn, ref.churn_tmin, ref.churn_tmax, ref.churn_noise) == (10.0, 0.025, 50.0, 1.0)
    few = {s.sampler for s in grid if 10 <= s.nfe <= 35 and (s.churn > 0 or "sde" in s.sampler)}
    few |= {s.sampler for s in grid if s.sampler == "restart" and s.nfe <= 35}
    assert few == {"heun", "sde-dpmsolver", "restart"}  # every stochastic family at NFE <= 35
    assert nfe["restart-18-k2x2"] == 43 and nfe["restart-10-k2x2"] == 27
    assert [s.nfe for s in B.default_settings(quick=True)] == [10, 10, 29, 49]
    for s in grid:  # every setting is a valid config
        assert s.config(defaults().sample).sampler == s.sampler


def _fixture_files(tmp_path, tiny):
    model = tmp_path / "model.pt"
    save_model(model, tiny, NET, SHAPE)
    rng = np.random.default_rng(1)
    test = tmp_path / "test.npz"
    y = np.arange(60) % 3
    save_npz(test, ImageSet(rng.random((60, *SHAPE)).astype(np.float32), y, ("a", "b", "c")))
    return model, test


def test_cli_writes_results(tmp_path, tiny, monkeypatch, capsys):
    """The CLI end to end on a saved tiny model and fake test images (features stubbed)."""
    model, test = _fixture_files(tmp_path, tiny)
    grid = [B.Setting("h2", "heun", 2), B.Setting("s3", "sde-dpmsolver", 3)]
    monkeypatch.setattr(B, "default_settings", lambda *a, **k: grid)
    import easyhard.fid as M

    seen = []
    monkeypatch.setattr(M, "inception_features", lambda x, **kw: seen.append(len(x)) or pixels(x))
    out = tmp_path / "out"
    common = ["--model", str(model), "--real-images", str(test), "--out", str(out)]
    assert B.main([*common, "--quick"]) == 0
    result = json.loads((out / "sampling.json").read_text())
    assert [r["nfe"] for r in result["rows"]] == [3, 3] and result["quick"]
    assert result["real_images"] == str(test) and result["real_count"] == 50  # quick: 50 of 60
    assert seen[0] == 50  # the test images' features first, then one call per sampled setting
    assert result["run_to_run"]["name"] == result["cheapest"]
    assert (out / "sampling_fid_vs_nfe.png").stat().st_size > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    best = next(r for r in result["rows"] if r["name"] == result["cheapest"])
    assert last == f"easyhard fewstep_nfe={best['nfe']} fid_ratio={result['fid_ratio']:.3f}"
    assert B.main([*common, "--real-count", "60", "--count", "6", "--repeat", "none"]) == 0
    result = json.loads((out / "sampling.json").read_text())
    assert result["real_count"] == 60 and "run_to_run" not in result
    assert B.main(["--model", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert B.main([*common, "--real-images", str(tmp_path / "none.npz")]) == 2
    assert B.main([*common, "--repeat", "nope"]) == 2


def test_cli_proxy_reads_only_public_data(tmp_path, monkeypatch):
    """--proxy (how the default sampler is chosen) trains its model on the public proxy and scores
    against the proxy's held-out images: from a folder with no run outputs and no data, and with
    every loader of a sensitive dataset refused."""
    grid = [B.Setting("h2", "heun", 2), B.Setting("s3", "sde-dpmsolver", 3)]
    monkeypatch.setattr(B, "default_settings", lambda *a, **k: grid)
    import easyhard.data as D
    import easyhard.fid as M

    def refuse(*args, **kwargs):
        raise AssertionError("--proxy read a run's or the default data's files")

    monkeypatch.setattr(D, "load_npz", refuse)
    monkeypatch.setattr(B, "test_features", refuse)
    seen = []
    monkeypatch.setattr(M, "inception_features", lambda x, **kw: seen.append(len(x)) or pixels(x))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert B.main(["--proxy", "--quick", "--out", str(out), "--repeat", "none"]) == 0
    result = json.loads((out / "sampling.json").read_text())
    assert result["proxy"] and "proxy" in result["real_images"] and seen[0] == 50
    assert [r["nfe"] for r in result["rows"]] == [3, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written


def test_cli_only_reruns_named_settings_and_merges(tmp_path, tiny, monkeypatch):
    """--only replaces the named rows of an existing sampling.json and keeps the others."""
    model, test = _fixture_files(tmp_path, tiny)
    grid = [B.Setting("h2", "heun", 2), B.Setting("e3", "euler", 3)]
    monkeypatch.setattr(B, "default_settings", lambda *a, **k: grid)
    import easyhard.fid as M

    monkeypatch.setattr(M, "inception_features", lambda x, **kw: pixels(x))
    out = tmp_path / "out"
    common = ["--model", str(model), "--real-images", str(test), "--quick", "--out", str(out)]
    assert B.main([*common, "--repeat", "none"]) == 0
    first = json.loads((out / "sampling.json").read_text())
    assert B.main([*common, "--only", "e3", "--repeat", "none"]) == 0
    merged = json.loads((out / "sampling.json").read_text())
    assert [r["name"] for r in merged["rows"]] == ["h2", "e3"]
    assert merged["rows"][0] == first["rows"][0]  # untouched
    assert merged["rows"][1]["fid"] == pytest.approx(first["rows"][1]["fid"])  # same images
    assert B.main([*common, "--only", "nope"]) == 2
    assert B.main([*common, "--only", "e3", "--real-count", "40"]) == 2  # other FID reference
    assert B.main([*common, "--only", "e3", "--repeat", "h2"]) == 2  # not among those run
