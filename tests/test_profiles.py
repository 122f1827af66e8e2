"""GPU profiles: every profile validates, its network has the published size, and the pipeline
stages run a few steps on CPU with the real network on tiny data generated in the real format."""

import itertools
import time

import numpy as np
import pytest
import yaml
from test_data import make_celeba, make_idx_gz

from easyhard import profiles
from easyhard.config import Params as ParamsCls
from easyhard.networks import build_unet, count_parameters
from easyhard.schema import ConfigError, from_mapping, merge

ROOT = profiles.PROFILE_DIR.parent
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())
NAMES = profiles.names()
REQUIRED = {f"{d}-eps{e}" for d in ("mnist", "fmnist", "celeba", "camelyon") for e in (1, 10)}


def test_every_dataset_has_eps_1_and_10():
    assert REQUIRED <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_profile_validates_and_network_has_the_published_size(name):
    s = profiles.check(name, BASE, with_plan=False)
    p, meta = s["params"], s["meta"]
    assert p.device == "cuda" and p.compute.precision == "auto"
    assert p.finetune.clip == 1.0 and p.edm.noise_multiplicity == 32
    n = p.privacy.dataset_size
    assert p.privacy.delta < 1 / n
    shape = tuple(meta["image_shape"])
    # expected DP batch: 4096 (DPImageBench, every dataset)
    assert p.finetune.sample_rate * n == pytest.approx(4096, rel=1e-3)
    unet = build_unet(p.network, shape, meta["classes"])
    assert count_parameters(unet) == pytest.approx(meta["published_parameters"], rel=0.10)
    # attention at half resolution only
    assert p.network.attention == (False, True)


@pytest.mark.parametrize(
    "a, b",
    list(
        itertools.permutations(["mnist-eps10", "celeba-eps1", "camelyon-eps10", "cifar10-eps1"], 2)
    ),
)
def test_applying_profiles_in_any_order_gives_the_same_params(a, b):
    """Each profile sets every key any profile changes, so applying B after A equals B alone."""
    after_a = profiles.load(a).merged(BASE)
    assert profiles.load(b).params(after_a) == profiles.load(b).params(BASE)


def test_privacy_plan_of_the_tightest_profile():
    r = profiles.check("mnist-eps1", BASE)
    assert 0 < r["central_epsilon"] < 0.5
    assert r["steps"] == 2197 and r["noise_multiplier"] > 5


def test_apply_writes_validated_params_and_refuses_bad_profiles(tmp_path, monkeypatch):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    p = profiles.apply("celeba-eps10", params_file)
    assert p.data.name == "celeba" and p.data.image_size == 32
    from easyhard.config import load_params

    assert load_params(params_file) == p
    assert params_file.read_text().startswith("# easyhard params: profile celeba-eps10")
    # a bad profile is refused before anything is written
    bad = tmp_path / "profiles"
    bad.mkdir()
    (bad / "broken.yaml").write_text("profile: {dataset: x}\nfinetune: {clip: -1}\n")
    monkeypatch.setattr(profiles, "PROFILE_DIR", bad)
    before = params_file.read_text()
    with pytest.raises(ConfigError, match="finetune.clip must be > 0"):
        profiles.apply("broken", params_file)
    assert params_file.read_text() == before
    with pytest.raises(ConfigError, match="not found"):
        profiles.load("nope", bad)
    assert profiles.main(["--params", str(params_file), "apply", "broken"]) == 2


def test_compute_bf16_on_cpu_is_refused():
    data = merge(
        profiles.load("mnist-eps10").merged(BASE),
        {"device": "cpu", "compute": {"precision": "bf16"}},
    )
    with pytest.raises(ConfigError, match="compute.precision=bf16 needs device=cuda"):
        from_mapping(ParamsCls, data)


# ----------------------------------------------------------------- real network size, on CPU
SHORT = {  # a few steps of each stage; everything else (network, K, clip, sampler kind) as published
    "device": "cpu",
    "methods": ["dpfeta"],
    "central": {"sample_rate": 0.5, "queries": 2},
    "pretrain": {"steps": 1, "batch_size": 4, "log_every": 1, "checkpoint_every": 0},
    "finetune": {
        "sample_rate": 0.05,
        "epochs": 0.05,
        "physical_batch": 2,
        "log_every": 1,
        "checkpoint_every": 0,
    },
    "sample": {"count": 4, "steps": 2, "batch_size": 4},
}


def _run_stages(tmp_path, name, make_data, train_size, with_finetune):
    from easyhard.pipeline import central_images, finetune, prepare, pretrain
    from easyhard.pipeline.notebook import setup

    make_data(tmp_path / "data" / "raw")
    data = merge(profiles.load(name).merged(BASE), SHORT)
    data["data"]["root"] = "data/raw"
    data["privacy"]["dataset_size"] = train_size  # the generated stand-in, not the real set
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    params, paths = setup({}, tmp_path)
    meta = profiles.load(name).meta
    prepare.run(params, paths)
    central_images.run(params, paths, "dpfeta")
    out = pretrain.run(params, paths, "dpfeta")
    assert out["parameters"] == pytest.approx(meta["published_parameters"], rel=0.10)
    assert np.isfinite([r["loss"] for r in out["history"]]).all()
    if with_finetune:  # one DP-SGD step, K = 32 noise draws per example, the published clip
        f = finetune.run(params, paths, "dpfeta")
        assert f["mechanism"].steps == 1 and np.isfinite(f["history"][0]["loss"])
    return params


def test_mnist_profile_runs_the_training_stages_on_cpu(tmp_path):
    t = time.perf_counter()
    p = _run_stages(
        tmp_path, "mnist-eps10", lambda r: make_idx_gz(r, "MNIST", 40, 20), 40, with_finetune=True
    )
    assert p.network.channels == (64, 64) and p.edm.noise_multiplicity == 32
    assert time.perf_counter() - t < 120


def test_celeba_profile_prepares_and_pretrains_on_cpu(tmp_path):
    p = _run_stages(
        tmp_path, "celeba-eps10", lambda r: make_celeba(r, n=12), 6, with_finetune=False
    )
    assert p.data.image_size == 32 and p.network.channels == (64, 128)
