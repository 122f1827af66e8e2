"""Budget planning: warm-up noise calibrated from shares of epsilon, DP-SGD from what remains,
impossible splits refused before any query, and an independent recomputation of the total."""

from __future__ import annotations

from dataclasses import replace

import pytest

from easyhard.config import WARMUP_SECTIONS, ConfigError, Params, defaults
from easyhard.layout import public_layout
from easyhard.pipeline.methods import METHODS
from easyhard.pipeline.release import plan
from easyhard.privacy import compose_epsilon
from easyhard.privacy.plan import warmup_mechanism
from easyhard.schema import from_mapping, merge, to_dict

DEFAULTS = defaults()
LAYOUT = public_layout(DEFAULTS.data)
#: The budget mechanics of the fixed forms (the planner: tests/test_warmup.py).
FIXED = {"central": {"plan": "fixed"}, "frequency": {"plan": "fixed"}}


def _params(epsilon: float, **over) -> Params:
    base = merge(to_dict(DEFAULTS), {"privacy": {"epsilon": epsilon}, **FIXED})
    return from_mapping(Params, merge(base, over))


def _pld_epsilon(mechanisms, delta: float) -> float:
    """Google dp-accounting's PLD accountant, called directly (not through easyhard)."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    acc = PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4
    )
    for m in mechanisms:
        event = dp_accounting.GaussianDpEvent(m.noise_multiplier)
        if m.sample_rate < 1:
            event = dp_accounting.PoissonSampledDpEvent(m.sample_rate, event)
        acc.compose(event, m.steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.3])
def test_a_share_buys_that_share_of_epsilon(share):
    m = warmup_mechanism(
        name="central_images_mean",
        sample_rate=0.5,
        steps=10,
        epsilon=10.0,
        delta=1e-5,
        accountant="prv",
        budget_share=share,
    )
    alone = compose_epsilon([m], 1e-5, "prv")
    assert 0.99 * share * 10 <= alone <= share * 10


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 10.0])
def test_fetapro_release_at_every_epsilon_with_no_other_change(epsilon):
    """Only privacy.epsilon changes: central + frequency + DP-SGD, total within [0.99 eps, eps],
    and an independent PLD recomputation (dp-accounting) within 1%."""
    p = _params(epsilon)
    release = plan(p, METHODS["fetapro"], LAYOUT)
    names = [m.name for m in release.mechanisms]
    assert names == ["central_images_mean", "frequency_mmd", "dp_sgd"]
    total = compose_epsilon(list(release.mechanisms), p.privacy.delta, p.privacy.accountant)
    assert 0.99 * epsilon <= total <= epsilon
    assert _pld_epsilon(release.mechanisms, p.privacy.delta) == pytest.approx(total, rel=0.01)
    # every method plans at this epsilon too
    for name in ("dpfeta", "dpdm"):
        assert plan(p, METHODS[name], LAYOUT).dp_sgd.noise_multiplier > 0


def test_shares_that_leave_dp_sgd_nothing_are_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        _params(10.0, central={"budget_share": 0.6}, frequency={"budget_share": 0.5})
    assert "leaves DP-SGD no privacy budget" in str(e.value) and "\n" not in str(e.value)
    assert "fetapro" in str(e.value)


def test_shares_of_warmups_no_chosen_method_runs_are_not_summed():
    """DP-FETA never runs the frequency release: its share is not added to central's."""
    over = {"central": {"budget_share": 0.95}, "frequency": {"budget_share": 0.1}}
    p = _params(10.0, methods=["dpfeta"], **over)
    release = plan(p, METHODS["dpfeta"], LAYOUT)
    assert [m.name for m in release.mechanisms] == ["central_images_mean", "dp_sgd"]
    assert compose_epsilon(list(release.mechanisms), 1e-5, "prv") <= 10.0
    _params(10.0, methods=["dpdm", "nonprivate"], central={"budget_share": 0.99})
    with pytest.raises(ConfigError, match="fetapro"):  # FETA-Pro runs both: refused
        _params(10.0, methods=["dpfeta", "fetapro"], **over)


def test_the_method_table_agrees_with_the_shares_config_checks():
    for name, row in METHODS.items():
        spent = ("central",) * row.central_images + ("frequency",) * row.frequency
        assert WARMUP_SECTIONS[name] == (spent if row.private else ()) == row.warmup_sections


def test_fixed_and_shared_noise_cannot_both_be_set():
    with pytest.raises(ConfigError, match="exactly one of central.noise_multiplier"):
        replace(DEFAULTS.central, noise_multiplier=5.0)
    fixed = replace(DEFAULTS.central, noise_multiplier=5.0, budget_share=None)
    assert fixed.noise_multiplier == 5.0


def test_plan_params_ends_with_one_json_line_for_every_method(tmp_path, capsys):
    """`python -m easyhard.privacy plan --params`: the last line is JSON with each method's epsilon
    and DP-SGD noise (the ceiling: null, not a release); a DP-FETA-only file with
    central.budget_share 0.95 is planned, not refused for the frequency share it never spends."""
    import json

    import yaml

    from easyhard.privacy.__main__ import main

    over = {"methods": ["dpfeta", "nonprivate"], "central": {"plan": "fixed", "budget_share": 0.95}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(merge(to_dict(DEFAULTS), over)))
    assert main(["plan", "--params", str(path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(last) == ["dpfeta", "nonprivate"]
    assert last["nonprivate"] == {
        "epsilon": None,
        "noise_multiplier": None,
        "mechanisms": [],
        "warmups": {},
        "same_as": None,
    }
    assert 0.99 * 10 <= last["dpfeta"]["epsilon"] <= 10
    assert last["dpfeta"]["mechanisms"] == ["central_images_mean", "dp_sgd"]
    assert last["dpfeta"]["noise_multiplier"] > 0
