"""Tests for easyhard.privacy: accountants, calibration, ledger and the planner CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import norm

import easyhard.privacy.__main__ as privacy_cli
from easyhard.privacy import (
    ACCOUNTANTS,
    Ledger,
    Mechanism,
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compose_epsilon,
    steps_for_epochs,
)

CENTRAL = Mechanism("central_images", 5.0, 0.2, 20)


def _mechs(spec: list[tuple[float, float, int]]) -> list[Mechanism]:
    return [Mechanism(f"m{i}", *s) for i, s in enumerate(spec)]


# ---------------------------------------------------------------- golden values
# (mechanisms, delta, prv epsilon measured with opacus 1.6.0, 3 significant figures)
GOLDEN = {
    "sgd": ([(1.0, 0.01, 1000)], 1e-5, 1.83),
    "central": ([(5.0, 0.2, 20)], 1e-5, 0.695),
    "gaussian": ([(0.8, 1.0, 1)], 1e-5, 5.69),
    "central+sgd": ([(5.0, 0.2, 20), (1.0, 0.01, 1000)], 1e-5, 1.97),
    "full+sgd": ([(2.0, 1.0, 3), (1.5, 0.05, 500)], 1e-6, 6.20),
    "small-eps": ([(8.0, 0.01, 1000)], 1e-5, 0.126),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_values(case: str) -> None:
    spec, delta, pinned = GOLDEN[case]
    mechs = _mechs(spec)
    prv = compose_epsilon(mechs, delta, "prv")
    pld = compose_epsilon(mechs, delta, "pld")
    rdp = compose_epsilon(mechs, delta, "rdp")
    assert prv == pytest.approx(pinned, rel=2e-3)  # 3 significant figures
    assert pld == pytest.approx(prv, rel=0.02)
    assert prv <= rdp and pld <= rdp


@pytest.mark.parametrize("case", ["gaussian", "central+sgd"])
def test_prv_accountant_package_agrees(case: str) -> None:
    prv_accountant = pytest.importorskip("prv_accountant")
    spec, delta, _ = GOLDEN[case]
    prvs = [
        prv_accountant.GaussianMechanism(sigma)
        if q == 1
        else prv_accountant.PoissonSubsampledGaussianMechanism(q, sigma)
        for sigma, q, _ in spec
    ]
    steps = [t for *_, t in spec]
    acc = prv_accountant.PRVAccountant(
        prvs=prvs, max_self_compositions=steps, eps_error=0.01, delta_error=delta / 1000
    )
    _, estimate, upper = acc.compute_epsilon(delta, steps)
    assert compose_epsilon(_mechs(spec), delta, "pld") == pytest.approx(estimate, rel=0.02)
    assert compose_epsilon(_mechs(spec), delta, "prv") == pytest.approx(upper, rel=0.02)


def _gaussian_exact_epsilon(sigma: float, delta: float) -> float:
    """Balle & Wang (2018): exact epsilon of one Gaussian mechanism with sensitivity 1."""

    def gap(eps: float) -> float:
        d = norm.cdf(-eps * sigma + 1 / (2 * sigma))
        d -= math.exp(eps) * norm.cdf(-eps * sigma - 1 / (2 * sigma))
        return d - delta

    return brentq(gap, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 0.8, 2.0, 5.0])
def test_gaussian_closed_form(sigma: float) -> None:
    delta = 1e-5
    exact = _gaussian_exact_epsilon(sigma, delta)
    mech = [Mechanism("gauss", sigma, 1.0, 1)]
    for acc in ("pld", "prv"):
        eps = compose_epsilon(mech, delta, acc)
        assert eps == pytest.approx(exact, rel=0.01), acc
        assert eps >= exact * (1 - 1e-6), f"{acc} must be an upper bound"
    assert compose_epsilon(mech, delta, "rdp") >= exact


# ---------------------------------------------------------------- composition basics
@pytest.mark.parametrize("acc", ACCOUNTANTS)
def test_empty_and_zero_steps(acc: str) -> None:
    assert compose_epsilon([], 1e-5, acc) == 0.0
    assert compose_epsilon([Mechanism("x", 1.0, 0.01, 0)], 1e-5, acc) == 0.0
    with_zero = [Mechanism("x", 0.7, 0.5, 0), CENTRAL]
    assert compose_epsilon(with_zero, 1e-5, acc) == compose_epsilon([CENTRAL], 1e-5, acc)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("x", 0.0, 0.1, 1), "noise_multiplier"),
        (("x", -1.0, 0.1, 1), "noise_multiplier"),
        (("x", float("inf"), 0.1, 1), "noise_multiplier"),
        (("x", 1.0, 0.0, 1), "sample_rate"),
        (("x", 1.0, 1.5, 1), "sample_rate"),
        (("x", 1.0, 0.1, -1), "steps"),
        (("x", 1.0, 0.1, 2.5), "steps"),
        (("", 1.0, 0.1, 1), "name"),
    ],
)
def test_mechanism_validation(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Mechanism(*args)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0])
def test_bad_delta(delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        compose_epsilon([CENTRAL], delta)


def test_bad_accountant() -> None:
    with pytest.raises(ValueError, match="accountant"):
        compose_epsilon([CENTRAL], 1e-5, "gdp")


def test_mechanism_dict_rejects_unknown_keys() -> None:
    d = CENTRAL.to_dict()
    assert Mechanism.from_dict(d) == CENTRAL
    with pytest.raises(ValueError, match="unknown"):
        Mechanism.from_dict({**d, "clip": 1.0})
    with pytest.raises(ValueError, match="missing"):
        Mechanism.from_dict({k: v for k, v in d.items() if k != "steps"})


@settings(max_examples=8, deadline=None)
@given(
    sigma=st.floats(0.5, 20.0),
    q=st.floats(1e-3, 1.0),
    steps=st.integers(1, 300),
)
def test_rdp_monotone(sigma: float, q: float, steps: int) -> None:
    eps = compose_epsilon([Mechanism("m", sigma, q, steps)], 1e-5, "rdp")
    assert compose_epsilon([Mechanism("m", sigma, q, steps + 1)], 1e-5, "rdp") >= eps
    assert compose_epsilon([Mechanism("m", sigma * 1.1, q, steps)], 1e-5, "rdp") <= eps
    m = Mechanism("m", sigma, q, steps)
    assert Mechanism.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_steps_for_epochs() -> None:
    assert steps_for_epochs(10, 0.1) == 100
    assert steps_for_epochs(1, 0.3) == 3
    assert steps_for_epochs(0, 0.5) == 0
    with pytest.raises(ValueError):
        steps_for_epochs(1, 0.0)


# ---------------------------------------------------------------- calibration
@pytest.mark.parametrize("acc", ACCOUNTANTS)
def test_calibration_band_and_smallest(acc: str) -> None:
    target, delta = 10.0, 1e-5
    mech = calibrate_noise_multiplier(
        target, delta, sample_rate=0.1, steps=200, prior=[CENTRAL], accountant=acc
    )
    assert (mech.name, mech.sample_rate, mech.steps) == ("dp_sgd", 0.1, 200)
    achieved = compose_epsilon([CENTRAL, mech], delta, acc)
    assert 0.99 * target <= achieved <= target
    smaller = Mechanism("dp_sgd", mech.noise_multiplier * 0.99, 0.1, 200)
    assert compose_epsilon([CENTRAL, smaller], delta, acc) > target


def test_calibration_monotone_in_prior() -> None:
    sigmas = [
        calibrate_noise_multiplier(
            3.0, 1e-5, sample_rate=0.05, steps=300, prior=prior, accountant="pld"
        ).noise_multiplier
        for prior in ([], [Mechanism("c", 10.0, 0.2, 20)], [CENTRAL])
    ]
    assert sigmas[0] < sigmas[1] < sigmas[2]


def test_calibration_prior_exhausts_budget() -> None:
    with pytest.raises(PrivacyBudgetError, match="central_images alone spend eps="):
        calibrate_noise_multiplier(
            0.5, 1e-5, sample_rate=0.1, steps=100, prior=[CENTRAL], accountant="pld"
        )


@pytest.mark.parametrize("target", [0.0, -1.0])
def test_calibration_bad_target(target: float) -> None:
    with pytest.raises(PrivacyBudgetError, match="target epsilon"):
        calibrate_noise_multiplier(target, 1e-5, sample_rate=0.1, steps=100)


def test_calibration_unreachable_under_rdp() -> None:
    # RDP's conversion to (eps, delta) has a floor (~ log(1/delta) / max order)
    with pytest.raises(PrivacyBudgetError, match="unreachable"):
        calibrate_noise_multiplier(0.002, 1e-5, sample_rate=0.1, steps=100, accountant="rdp")


# ---------------------------------------------------------------- ledger
def _ledger() -> Ledger:
    return Ledger(delta=1e-5, target_epsilon=5.0, accountant="pld", mechanisms=[CENTRAL])


def test_ledger_roundtrip(tmp_path: Path) -> None:
    ledger = _ledger()
    path = tmp_path / "privacy.json"
    ledger.save(path)
    data = json.loads(path.read_text())
    assert set(data) == {
        "delta",
        "target_epsilon",
        "epsilon",
        "accountant",
        "mechanisms",
        "epsilon_by_accountant",
        "private",
    }
    assert data["private"] is True
    assert set(data["epsilon_by_accountant"]) == set(ACCOUNTANTS)
    assert data["epsilon"] == data["epsilon_by_accountant"]["pld"] == ledger.epsilon()
    loaded = Ledger.load(path)
    assert loaded == ledger
    assert loaded.epsilon() == ledger.epsilon()
    assert [p.name for p in tmp_path.iterdir()] == ["privacy.json"]  # no temp files left


def test_ledger_rejects_unknown_keys() -> None:
    d = {"delta": 1e-5, "target_epsilon": 1.0, "accountant": "rdp", "mechanisms": []}
    assert Ledger.from_dict({**d, "epsilon": 123.0}).mechanisms == []  # derived: ignored
    with pytest.raises(ValueError, match="unknown ledger keys"):
        Ledger.from_dict({**d, "epsilon_total": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        Ledger.from_dict({**d, "mechanisms": [{**CENTRAL.to_dict(), "clip": 1}]})


def test_ledger_add_refuses_over_budget() -> None:
    ledger = _ledger()
    ok = Mechanism("dp_sgd", 2.0, 0.05, 100)
    ledger.add(ok)
    assert ledger.mechanisms == [CENTRAL, ok]
    too_much = Mechanism("dp_sgd", 0.6, 0.5, 100)
    with pytest.raises(PrivacyBudgetError, match="target"):
        ledger.remaining_check(too_much)
    with pytest.raises(PrivacyBudgetError):
        ledger.add(too_much)
    assert ledger.mechanisms == [CENTRAL, ok]
    assert ledger.epsilon() <= ledger.target_epsilon


def test_ledger_add_calibrated_fits_exactly() -> None:
    ledger = Ledger(1e-5, 4.0, "rdp", [CENTRAL])
    mech = calibrate_noise_multiplier(
        4.0, 1e-5, sample_rate=0.1, steps=50, prior=ledger.mechanisms, accountant="rdp"
    )
    ledger.add(mech)
    assert 0.99 * 4.0 <= ledger.epsilon() <= 4.0


def test_ledger_save_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "privacy.json"
    target.mkdir()  # a directory in the way: the final rename must fail
    with pytest.raises(OSError):
        _ledger().save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["privacy.json"]
    assert list(target.iterdir()) == []


def test_ledger_save_creates_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "m" / "ledger.json"
    _ledger().save(path)
    assert Ledger.load(path) == _ledger()


# ---------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "easyhard.privacy", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_plan_and_epsilon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ledger.json"
    plan = _cli(
        "plan", "--epsilon", "10", "--delta", "1e-5", "--central", "5,0.2,20",
        "--sample-rate", "0.1", "--epochs", "20", "--out", str(out),
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.strip().splitlines()
    assert any(line.startswith("central_images") for line in lines)
    assert any(line.startswith("dp_sgd") for line in lines)
    printed = float(lines[-1].removeprefix("epsilon="))
    assert 9.9 <= printed <= 10.0

    ledger = Ledger.load(out)
    assert ledger.accountant == "prv"
    assert [m.name for m in ledger.mechanisms] == ["central_images", "dp_sgd"]
    assert ledger.mechanisms[1].steps == 200
    assert ledger.epsilon() == printed

    # the epsilon subcommand, in-process (a second interpreter would re-import torch)
    assert privacy_cli.main(["epsilon", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"epsilon={printed!r}"


CLI_BASE = {"--epsilon": "1", "--delta": "1e-5", "--sample-rate": "0.1", "--steps": "100"}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"--epsilon": "0"}, "--epsilon"),
        ({"--epsilon": "-2"}, "--epsilon"),
        ({"--delta": "1.5"}, "--delta"),
        ({"--delta": "0"}, "--delta"),
        ({"--sample-rate": "0"}, "--sample-rate"),
        ({"--sample-rate": "1.2"}, "--sample-rate"),
        ({"--central": "5,0.2"}, "NOISE,RATE,STEPS"),
        ({"--central": "a,0.2,20"}, "NOISE,RATE,STEPS"),
        ({"--central": "5,0.2,2.5"}, "NOISE,RATE,STEPS"),
        ({"--central": "5,1.5,20"}, "sample_rate"),
        ({"--epochs": "3"}, "not allowed"),
        ({"--accountant": "gdp"}, "--accountant"),
        ({"--epsilon": "0.5", "--central": "5,0.2,20", "--accountant": "pld"}, "alone spend"),
    ],
)
def test_cli_bad_input(tmp_path: Path, overrides: dict[str, str], match: str) -> None:
    out = tmp_path / "ledger.json"
    flags = [a for kv in {**CLI_BASE, **overrides}.items() for a in kv]
    proc = _cli("plan", *flags, "--out", str(out))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert match in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no ledger, no temporary file


def test_cli_epsilon_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"delta": 1e-5, "target_epsilon": 1.0, "sigma": 3}))
    proc = _cli("epsilon", str(bad))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "unknown ledger keys" in proc.stderr


@pytest.mark.parametrize("epsilon", [0.5, 10.0])
def test_cli_plan_from_params_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], epsilon: float
) -> None:
    """`plan --params` plans every private method of a params file with the stages' planner:
    with the budget shares, only privacy.epsilon changes, down to 0.5."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["privacy"]["epsilon"] = epsilon
    params["central"]["plan"] = params["frequency"]["plan"] = "fixed"  # the shares as written
    params["methods"] = [*params["methods"], "nonprivate"]  # the ceiling is opt-in
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert privacy_cli.main(["plan", "--params", str(path)]) == 0
    out = capsys.readouterr().out
    for name in ("dpfeta", "dpdm", "fetapro"):
        assert f"\n{name} (" in out
    assert "not a release" in out  # the non-private ceiling
    totals = [float(line.split(": ")[1].split()[0]) for line in out.splitlines() if "total" in line]
    assert len(totals) == 3 and all(0.99 * epsilon <= t <= epsilon for t in totals)
    assert "frequency_mmd" in out and "central_images_mean" in out


def test_cli_plan_without_params_names_what_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert privacy_cli.main(["plan", "--epsilon", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--delta" in err and "--steps or --epochs" in err
