"""The warm-up planner (easyhard/warmup.py): choices from public values only, a warm-up without
signal spends nothing, the cap on DP-SGD's noise holds, and the CLI prints what the stages run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from easyhard.config import Params, defaults
from easyhard.data import ImageSet, save_npz
from easyhard.layout import Layout, public_layout
from easyhard.pipeline.methods import METHODS
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import layout, plan
from easyhard.privacy import compose_epsilon
from easyhard.proxy import (
    central_snr,
    generated_shapes,
    proxy_images,
    proxy_split,
    release_errors,
)
from easyhard.schema import from_mapping, merge, to_dict
from easyhard.warmup import plan_frequency, plan_warmups, warmup_cap

DEFAULTS = defaults()
MNIST = Layout(10, (1, 28, 28))


def _params(epsilon: float = 10.0, **over) -> Params:
    base = merge(to_dict(DEFAULTS), {"privacy": {"epsilon": epsilon}})
    return from_mapping(Params, merge(base, over))


def _folder_repo(tmp_path, seed: int, n: int) -> tuple[Params, Paths]:
    """A folder source whose public held-out split has ``n`` random 28x28 images in 10 classes."""
    params = _params(data={"name": "folder", "root": str(tmp_path / "raw")})
    paths = Paths(tmp_path)
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    save_npz(paths.test, ImageSet(x, np.arange(n) % 10, tuple(str(i) for i in range(10))))
    return params, paths


def test_two_datasets_with_the_same_declared_n_classes_and_shape_get_the_same_plan(tmp_path):
    """Only public values enter: two sources with different images (and sizes) but the same
    declared N, K and shape are planned identically, and like the named dataset of that layout."""
    a = _folder_repo(tmp_path / "a", seed=1, n=50)
    b = _folder_repo(tmp_path / "b", seed=2, n=80)
    la, lb = layout(*a), layout(*b)
    assert la == lb == MNIST == public_layout(DEFAULTS.data)
    for name in ("dpfeta", "fetapro"):
        row = METHODS[name]
        assert row.warmup_plan(a[0], la) == row.warmup_plan(b[0], lb)
        assert plan(a[0], row, la) == plan(b[0], row, lb) == plan(DEFAULTS, row, MNIST)


def test_the_warmups_keep_dp_sgd_noise_within_the_tolerance():
    """Criterion: all planned warm-ups together raise DP-SGD's noise multiplier by at most
    privacy.warmup_tolerance (the final prv calibration, not only the rdp search)."""
    for eps in (1.0, 10.0):
        p = _params(eps)
        alone = plan(p, METHODS["dpdm"], MNIST).dp_sgd.noise_multiplier
        for name in ("dpfeta", "fetapro"):
            release = plan(p, METHODS[name], MNIST)
            tol = p.privacy.warmup_tolerance
            assert release.dp_sgd.noise_multiplier <= (1 + tol) * alone
            total = compose_epsilon(list(release.mechanisms), p.privacy.delta, "prv")
            assert 0.99 * eps <= total <= eps
        assert 0 < warmup_cap(p) < 1


def test_where_no_setting_has_signal_the_warmup_spends_nothing():
    """A declared N so small that no central-image setting reaches min_snr: DP-FETA's plan spends
    0 on the easy stage and its DP-SGD noise equals DPDM's (DP-FETA degrades to DPDM)."""
    p = _params(1.0, privacy={"epsilon": 1.0, "dataset_size": 200, "delta": 1e-4})
    wp = plan_warmups(p, MNIST, True, True)
    assert wp.central.config is None and wp.central.share == 0.0
    assert wp.frequency.config is None and "nothing spent" in wp.central.reason
    dpfeta, dpdm = plan(p, METHODS["dpfeta"], MNIST), plan(p, METHODS["dpdm"], MNIST)
    assert [m.name for m in dpfeta.mechanisms] == ["dp_sgd"]
    assert dpfeta.dp_sgd == dpdm.dp_sgd


def test_the_default_plan_has_signal_at_eps_1_and_10():
    """At the defaults the chosen central images are predicted clean (SNR above min_snr), and the
    planned per-pixel noise is far below the old fixed default's (share 0.1, q 0.5, 10 queries at
    7x7: std 1.73 at eps 1, 0.217 at eps 10)."""
    for eps, old_std in ((1.0, 1.73), (10.0, 0.217)):
        c = plan_warmups(_params(eps), MNIST, True, False).central
        assert c.config is not None and c.snr >= DEFAULTS.central.min_snr
        assert c.noise_std < old_std / 3


@pytest.mark.parametrize("eps", [1.0, 2.0, 5.0, 10.0])
def test_fetapro_never_plans_less_easy_stage_than_dpfeta(eps):
    """Splitting the cap between FETA-Pro's two warm-ups must not turn its easy stage off where
    DP-FETA's is on: where the split leaves one off (eps = 1 at the defaults), the central images
    get the whole budget, exactly DP-FETA's plan; otherwise both are on and share the cap."""
    p = _params(eps)
    dpfeta = plan_warmups(p, MNIST, True, False)
    fetapro = plan_warmups(p, MNIST, True, True)
    assert dpfeta.central.enabled  # the defaults have signal at every eps here
    if fetapro.frequency.enabled:
        assert fetapro.central.enabled
        assert fetapro.central.share + fetapro.frequency.share == pytest.approx(warmup_cap(p))
    else:
        assert fetapro.central == dpfeta.central
        assert fetapro.frequency.share == 0.0 and "central images" in fetapro.frequency.reason
    fp, fd = plan(p, METHODS["fetapro"], MNIST), plan(p, METHODS["dpfeta"], MNIST)
    assert (
        fp.dp_sgd.noise_multiplier
        <= (1 + p.privacy.warmup_tolerance)
        * plan(p, METHODS["dpdm"], MNIST).dp_sgd.noise_multiplier
    )
    if not fetapro.frequency.enabled:
        assert fp.mechanisms == fd.mechanisms


def test_cap_fraction_splits_fetapros_cap():
    """With both warm-ups planned, the frequency release gets ``cap_fraction`` of the cap and the
    central images the rest (a larger fraction: a smaller central share, a larger frequency one);
    DP-FETA's plan does not read it."""
    shares = {}
    for frac in (0.25, 0.5, 0.75):
        p = _params(10.0, frequency={"cap_fraction": frac})
        wp = plan_warmups(p, MNIST, True, True)
        assert wp.central.enabled and wp.frequency.enabled
        assert wp.frequency.share == pytest.approx(frac * warmup_cap(p), abs=1e-4)
        assert wp.central.share + wp.frequency.share == pytest.approx(warmup_cap(p))
        shares[frac] = wp.central.share
        assert plan_warmups(p, MNIST, True, False) == plan_warmups(
            _params(10.0), MNIST, True, False
        )
    assert shares[0.25] > shares[0.5] > shares[0.75]


def test_a_split_without_signal_falls_back_to_an_equal_one():
    """At eps = 5 a quarter of the cap gives the frequency release no signal: the planner then
    splits equally (both on, as with cap_fraction 0.5) rather than turning it off."""
    p = _params(5.0, frequency={"cap_fraction": 0.25})
    quarter = plan_frequency(p, MNIST, round(0.25 * warmup_cap(p), 4))
    assert not quarter.enabled  # the premise, at the defaults
    half = plan_warmups(_params(5.0, frequency={"cap_fraction": 0.5}), MNIST, True, True)
    wp = plan_warmups(p, MNIST, True, True)
    assert wp.central == half.central  # the chosen settings carry cap_fraction: compare the rest
    assert (wp.frequency.share, wp.frequency.snr) == (half.frequency.share, half.frequency.snr)
    assert wp.frequency.enabled and wp.frequency.share == pytest.approx(warmup_cap(p) / 2)


def test_predicted_error_grows_with_noise_and_reproduces_the_mechanism():
    """The proxy simulation: error 0 at std 0 without post-processing at full resolution; mean
    release error increases with noise; SNR is contrast / error."""
    errs = release_errors(MNIST, "mean", 1, 8, "none", (0.0, 0.05, 0.2, 1.0))
    assert errs[0] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(errs) > 0)
    assert central_snr(MNIST, "mean", 2, 8, "none", 0.1) > central_snr(
        MNIST, "mean", 2, 8, "none", 0.4
    )


def test_the_plan_printed_by_the_cli_is_the_one_the_stages_run(tmp_path, capsys):
    """`python -m easyhard.privacy plan --params`: its JSON line's warm-up settings and mechanisms
    equal what release.plan (called by the central, frequency and fine-tuning stages) gives."""
    from easyhard.privacy.__main__ import main

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(to_dict(DEFAULTS)))
    assert main(["plan", "--params", str(path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("dpfeta", "fetapro"):
        row = METHODS[name]
        release = plan(DEFAULTS, row, MNIST)
        assert last[name]["mechanisms"] == [m.name for m in release.mechanisms]
        assert last[name]["noise_multiplier"] == release.dp_sgd.noise_multiplier
        wp = row.warmup_plan(DEFAULTS, MNIST)
        assert last[name]["warmups"]["central"] == json.loads(json.dumps(wp.central.summary()))


def test_fixed_plans_run_as_written():
    p = _params(central={"plan": "fixed"}, frequency={"plan": "fixed"})
    wp = plan_warmups(p, MNIST, True, True)
    assert wp.central.config == p.central and wp.frequency.config == p.frequency


def test_a_digits_source_is_planned_on_generated_shapes_never_on_itself(monkeypatch):
    """With data.name: digits the sensitive records are scikit-learn's digits: the planner then
    simulates on generated shapes and never loads the digits."""
    import sklearn.datasets

    def refuse(*args, **kwargs):
        raise AssertionError("the planner loaded the sensitive source's own dataset")

    monkeypatch.setattr(sklearn.datasets, "load_digits", refuse)
    p = _params(data={"name": "digits"}, privacy={"dataset_size": 1400})
    layout = public_layout(p.data)
    wp = plan_warmups(p, layout, True, True)
    assert wp.central.config is not None or "nothing spent" in wp.central.reason
    x, y = proxy_images(layout, "shapes")
    assert x.shape[1:] == (1, 8, 8) and set(y.tolist()) == set(range(10))


def test_proxy_split_is_fixed_disjoint_and_whole():
    """The benchmarks' proxy split: the same for every call (a public seed), disjoint, and the
    whole proxy between its two halves; out-of-range sizes are refused."""
    layout = Layout(10, (1, 28, 28))
    x, y = proxy_images(layout, "digits")
    a, b = proxy_split(layout), proxy_split(layout)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    xtr, ytr, xte, yte = a
    assert len(xte) == 360 and len(xtr) + len(xte) == len(x)
    rows = {r.tobytes() for r in x.reshape(len(x), -1)}
    assert {r.tobytes() for r in np.concatenate([xtr, xte]).reshape(len(x), -1)} == rows
    assert not {r.tobytes() for r in xtr.reshape(len(xtr), -1)} & {
        r.tobytes() for r in xte.reshape(len(xte), -1)
    }
    assert np.bincount(np.concatenate([ytr, yte])).tolist() == np.bincount(y).tolist()
    with pytest.raises(ValueError, match="n_test"):
        proxy_split(layout, n_test=len(x))


def test_generated_shapes_are_ten_distinct_classes():
    x, y = generated_shapes(per_class=20)
    means = np.stack([x[y == k].mean(0) for k in range(10)])
    gaps = [np.abs(means[i] - means[j]).mean() for i in range(10) for j in range(i + 1, 10)]
    assert x.min() >= 0 and x.max() <= 1 and min(gaps) > 0.01


def test_a_fixed_noise_warmup_counts_against_the_cap():
    """FETA-Pro with fixed-noise central images and a planned frequency release: the frequency
    release gets the cap minus what the fixed central images cost (not the whole cap)."""
    fixed = {"plan": "fixed", "noise_multiplier": 2.0, "budget_share": None}
    p = _params(central=fixed)
    wp = plan_warmups(p, MNIST, True, True)
    free = plan_warmups(
        _params(central={"plan": "fixed", "budget_share": 0.0001}), MNIST, True, True
    )
    assert wp.frequency.share < free.frequency.share
