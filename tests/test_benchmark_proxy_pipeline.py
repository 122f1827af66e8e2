"""benchmarks/proxy_pipeline.py: its variant syntax, its summary, and a tiny end-to-end run that
reads no run output and no image of the default data."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "bench_proxy", ROOT / "benchmarks" / "proxy_pipeline.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


B = _load()


def test_parse_variant():
    assert B.parse_variant("dpfeta") == ("dpfeta", {})
    method, over = B.parse_variant("fetapro:frequency.cap_fraction=0.25,finetune.epochs=10")
    assert method == "fetapro"
    assert over == {"frequency": {"cap_fraction": 0.25}, "finetune": {"epochs": 10}}
    with pytest.raises(ValueError, match="key=value"):
        B.parse_variant("fetapro:frequency.cap_fraction")


def test_summarise_mean_and_spread():
    rows = [
        {"variant": "a", "seed": 0, "fid": 10.0, "cnn_acc_mean": 0.5},
        {"variant": "b", "seed": 0, "fid": 20.0, "cnn_acc_mean": 0.7},
        {"variant": "a", "seed": 1, "fid": 12.0, "cnn_acc_mean": 0.7},
    ]
    a, b = B.summarise(rows)
    assert a["variant"] == "a" and a["fid"] == (11.0, pytest.approx(2**0.5))
    assert a["cnn"][0] == pytest.approx(0.6) and b["cnn"] == (0.7, 0.0)


def test_bad_variant_is_refused_before_any_work(tmp_path, capsys):
    assert B.main(["fetapro:frequency.cap_fractio=0.2", "--keep", str(tmp_path)]) == 2
    assert "cap_fractio" in capsys.readouterr().out and not any(tmp_path.iterdir())


def test_a_tiny_run_uses_only_the_generated_proxy(tmp_path, monkeypatch, capsys):
    import easyhard.datasets as D

    def refuse(*args, **kwargs):
        raise AssertionError("the proxy run loaded a bundled dataset")

    monkeypatch.setattr(D, "load_mnist_offline", refuse, raising=False)
    monkeypatch.setattr(D, "load_digits", refuse)
    import easyhard.pipeline.evaluate as E
    import easyhard.pipeline.fid_reference as F

    def pixels(x, **kwargs):  # a cheap stand-in for Inception (the stages are tested elsewhere)
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, :64]

    monkeypatch.setattr(E, "inception_features", pixels)
    monkeypatch.setattr(F, "inception_features", pixels)
    monkeypatch.chdir(tmp_path)
    mine = str(tmp_path / "my-spend-store")
    monkeypatch.setenv("EASYHARD_SPEND_DIR", mine)
    out = tmp_path / "rows.json"
    work = tmp_path / "work"
    assert B.main(["dpdm", "--quick", "--seeds", "1", "--json", str(out), "--keep", str(work)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["dpdm"] and np.isfinite(rows[0]["fid"])
    assert 0 <= rows[0]["cnn_acc_mean"] <= 1
    assert len(list((work / "raw").rglob("*.png"))) == 120  # 12 per class, written here
    # its (seeded, public-data) releases went to its own store, and the user's is restored
    assert (work / "spend").is_dir() and not Path(mine).exists()
    assert os.environ["EASYHARD_SPEND_DIR"] == mine
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("easyhard proxy best=dpdm cnn=")


def test_sample_steps_sample_one_trained_model_per_setting(tmp_path, monkeypatch):
    """--sample-steps: fine-tuning runs once per (seed, variant), sampling and evaluation once per
    steps value, each a row of its own (a paired comparison of samplers on one model)."""
    import easyhard.pipeline.evaluate as E
    import easyhard.pipeline.fid_reference as F
    import easyhard.pipeline.finetune as T
    import easyhard.pipeline.sample as S

    def pixels(x, **kwargs):
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, :64]

    monkeypatch.setattr(E, "inception_features", pixels)
    monkeypatch.setattr(F, "inception_features", pixels)
    calls = {"finetune": 0, "steps": []}
    finetune_run, sample_run = T.run, S.run

    def counted_finetune(params, paths, method):
        calls["finetune"] += 1
        return finetune_run(params, paths, method)

    def recorded_sample(params, paths, method):
        calls["steps"].append(params.sample.steps)
        return sample_run(params, paths, method)

    monkeypatch.setattr(T, "run", counted_finetune)
    monkeypatch.setattr(S, "run", recorded_sample)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EASYHARD_SPEND_DIR", str(tmp_path / "store"))
    out = tmp_path / "rows.json"
    args = ["dpdm", "--quick", "--seeds", "1", "--sample-steps", "2", "3", "--json", str(out)]
    assert B.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["dpdm@steps=2", "dpdm@steps=3"]
    assert calls == {"finetune": 1, "steps": [2, 3]}
    assert all(np.isfinite(r["fid"]) for r in rows)


def test_sample_settings_pair_steps_and_guidance_and_bad_ones_are_refused(tmp_path, capsys):
    assert B.sample_settings() == [{}]
    assert B.sample_settings([10], [1.0, 2.0]) == [
        {"steps": 10, "guidance": 1.0},
        {"steps": 10, "guidance": 2.0},
    ]
    assert B.sample_settings(None, [1.5]) == [{"guidance": 1.5}]
    assert B.setting_label("dpfeta", {}) == "dpfeta"
    assert (
        B.setting_label("dpfeta", {"steps": 10, "guidance": 1.5}) == "dpfeta@steps=10,guidance=1.5"
    )
    # a guidance scale the schema refuses stops the run before any work
    assert B.main(["dpdm", "--guidance", "1", "-3", "--keep", str(tmp_path)]) == 2
    assert "guidance" in capsys.readouterr().out and not any(tmp_path.iterdir())


def test_proxy_sources_write_class_folders(tmp_path):
    """--proxy: both public sources write 10 class folders of PNGs; an unknown one is refused."""
    from PIL import Image

    for source in B.SOURCES:
        root = tmp_path / source
        assert B.write_source(root, 2, seed=0, source=source) == 20
        pngs = sorted(root.rglob("*.png"))
        assert sorted({p.parent.name for p in pngs}) == [str(k) for k in range(10)]
        assert Image.open(pngs[0]).size == (28, 28)
    with pytest.raises(ValueError, match="glyphs"):
        B.write_source(tmp_path / "x", 2, seed=0, source="mnist")
