"""GPU profiles: every profile validates, its network has the published size, its privacy plan
spends the target with its own method's warm-ups, and the pipeline stages run a few steps on CPU
with the real network on tiny data generated in the real format."""

import itertools
import math
import shutil
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
FETAPRO = sorted(
    f"fetapro-{d}-eps{e}"
    for d in ("mnist", "fmnist", "celeba", "camelyon", "cifar10")
    for e in (1, 10)
)
REQUIRED |= set(FETAPRO)


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
        itertools.permutations(
            [
                "mnist-eps10",
                "celeba-eps1",
                "camelyon-eps10",
                "cifar10-eps1",
                "fetapro-mnist-eps1",
                "fetapro-celeba-eps10",
            ],
            2,
        )
    ),
)
def test_applying_profiles_in_any_order_gives_the_same_params(a, b):
    """Each profile sets every key any profile changes, so applying B after A equals B alone."""
    after_a = profiles.load(a).merged(BASE)
    assert profiles.load(b).params(after_a) == profiles.load(b).params(BASE)


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def test_every_profile_sets_every_key_any_profile_changes():
    """The invariant behind the test above, for all profiles at once (base chains merged)."""
    keys = {n: _leaves(profiles.load(n).overrides) for n in NAMES}
    union = set().union(*keys.values())
    assert {n: sorted(union - k) for n, k in keys.items() if union - k} == {}


@pytest.mark.parametrize("name", NAMES)
def test_profile_runs_its_own_method_and_fixed_warmup_noise_takes_no_share(name):
    p = profiles.check(name, BASE, with_plan=False)["params"]
    assert p.methods == (("fetapro",) if name.startswith("fetapro-") else ("dpfeta",))
    assert p.central.noise_multiplier is not None and p.central.budget_share is None


@pytest.mark.parametrize("name", FETAPRO)
def test_fetapro_profile_has_the_official_settings_on_its_dpfeta_profile(name):
    """FETA-Pro's configs differ from DP-FETA's only in the warm-ups: central-image noise, rate and
    queries, the frequency release, its generator, and the pretraining schedule (pretrain.steps and
    a batch of 256, cfg's frequency-phase batch). Network, DP-SGD, sampler, data: the DP-FETA
    profile's."""
    s = profiles.check(name, BASE, with_plan=False)
    p, k = s["params"], s["meta"]["classes"]
    dpfeta = profiles.check(name.removeprefix("fetapro-"), BASE, with_plan=False)["params"]
    for section in ("data", "privacy", "network", "edm", "finetune", "sample", "evaluate"):
        assert getattr(p, section) == getattr(dpfeta, section), section
    f, n = p.frequency, p.privacy.dataset_size
    assert f.features == 10000 and f.lengthscale == pytest.approx(math.sqrt(105), rel=1e-6)
    assert f.downsample == 1 and f.sample_rate == 1.0
    assert f.noise_multiplier is not None and f.budget_share is None
    assert f.images_per_class * k == 60000 and f.pretrain_steps == 10 * (60000 // 256)
    a = p.auxgen
    assert a.steps == 5 * (n // (a.batch_per_class * k))  # 5 epochs of floor(N / batch) steps
    assert a.z_dim == 60 and a.lr_decay == pytest.approx(0.9**4)
    assert p.pretrain.batch_size == 256


@pytest.mark.parametrize("name", FETAPRO)
def test_fetapro_plan_spends_the_target_on_central_frequency_and_dp_sgd(name):
    s = profiles.check(name, BASE)
    p, r = s["params"], s["plans"]["fetapro"]
    central, freq, sgd = r["mechanisms"]
    assert [m.name for m in r["mechanisms"]] == ["central_images_mean", "frequency_mmd", "dp_sgd"]
    assert (central.noise_multiplier, central.sample_rate, central.steps) == (
        p.central.noise_multiplier,
        p.central.sample_rate,
        p.central.queries,
    )
    assert (freq.noise_multiplier, freq.sample_rate, freq.steps) == (
        p.frequency.noise_multiplier,
        1.0,
        1,
    )
    assert sgd.steps == round(p.finetune.epochs / p.finetune.sample_rate)
    eps = p.privacy.epsilon
    assert 0.99 * eps <= r["epsilon"] <= eps
    assert 0 < r["warmup_epsilons"]["frequency_mmd"] < r["warmup_epsilon"] < r["epsilon"]


def test_privacy_plan_of_the_tightest_profile():
    r = profiles.check("mnist-eps1", BASE)
    assert [m.name for m in r["mechanisms"]] == ["central_images_mean", "dp_sgd"]
    assert 0 < r["central_epsilon"] < 0.5
    assert r["steps"] == 2197 and r["noise_multiplier"] > 5
    assert 0.99 <= r["epsilon"] <= 1.0


def test_table_shows_each_profiles_method(tmp_path, monkeypatch):
    for n in ("mnist-eps10", "fetapro-mnist-eps10"):
        shutil.copy(profiles.PROFILE_DIR / f"{n}.yaml", tmp_path)
    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path)
    rows = profiles.table(BASE).splitlines()
    assert rows[0].startswith("| profile | method | dataset |")
    assert rows[2].startswith("| fetapro-mnist-eps10 | fetapro | MNIST")
    assert rows[3].startswith("| mnist-eps10 | dpfeta | MNIST")


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
    from easyhard.pipeline import central_images, finetune, frequency, prepare, pretrain
    from easyhard.pipeline.notebook import setup

    make_data(tmp_path / "data" / "raw")
    data = merge(profiles.load(name).merged(BASE), SHORT)
    data["data"]["root"] = "data/raw"
    data["privacy"]["dataset_size"] = train_size  # the generated stand-in, not the real set
    # the plan needs q*N >= 1 record; ~10 expected makes an empty Poisson batch (loss nan: no
    # examples) a 1e-5 event with secure masks (q = 0.05 of 40 drew none 13% of the time)
    q = min(1.0, max(SHORT["finetune"]["sample_rate"], 10 / train_size))
    data["finetune"].update(sample_rate=q, epochs=q)  # one DP-SGD step
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    params, paths = setup({}, tmp_path)
    meta = profiles.load(name).meta
    prepare.run(params, paths)
    central_images.run(params, paths, "dpfeta")
    frequency.run(params, paths, "dpfeta")  # passes the ledger through (no frequency warm-up)
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


def test_list_is_an_aligned_table_that_says_each_profiles_epsilon():
    lines = profiles.listing(BASE)
    assert lines[0].split() == ["profile", "methods", "ε", "dataset"]
    assert len(lines) == 1 + len(profiles.names())
    for col in ("methods", "ε", "dataset"):  # every row's cell starts where its header does
        start = lines[0].index(col)
        for line in lines[1:]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (col, line)
    by = {line.split()[0]: line.split() for line in lines[1:]}
    assert by["mnist-eps1"][2] == "1" and by["mnist-eps10"][2] == "10"
    assert by["fetapro-mnist-eps1"][1] == "fetapro" and by["mnist-eps1"][1] == "dpfeta"
