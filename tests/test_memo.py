"""The disk memo of noise calibrations: same answer, never a wrong one, no memo when off."""

from __future__ import annotations

import json

import pytest

from easyhard.privacy import accounting, memo
from easyhard.privacy.accounting import Mechanism, calibrate_noise_multiplier, compose_epsilon

PRIOR = [Mechanism("central_images_mean", 2.0, 1.0, 1)]
ARGS = {"sample_rate": 0.05, "steps": 40, "prior": PRIOR, "accountant": "rdp"}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(memo.ENV_DIR, str(tmp_path / "memo"))
    return tmp_path / "memo"


def _count_searches(monkeypatch) -> list[int]:
    calls: list[int] = []
    search = accounting._search_sigma

    def counted(*a, **k):
        calls.append(1)
        return search(*a, **k)

    monkeypatch.setattr(accounting, "_search_sigma", counted)
    return calls


def test_a_remembered_calibration_is_the_computed_one_without_a_second_search(folder, monkeypatch):
    calls = _count_searches(monkeypatch)
    first = calibrate_noise_multiplier(4.0, 1e-5, name="dp_sgd", **ARGS)
    again = calibrate_noise_multiplier(4.0, 1e-5, name="other_name", **ARGS)
    assert len(calls) == 1 and len(list(folder.glob("*.json"))) == 1
    assert again.noise_multiplier == first.noise_multiplier and again.name == "other_name"
    monkeypatch.setenv(memo.ENV_DIR, "off")
    fresh = calibrate_noise_multiplier(4.0, 1e-5, **ARGS)
    assert fresh.noise_multiplier == first.noise_multiplier and len(calls) == 2


def test_every_public_input_is_part_of_the_key(folder, monkeypatch):
    calls = _count_searches(monkeypatch)
    base = calibrate_noise_multiplier(4.0, 1e-5, **ARGS).noise_multiplier
    changed = [
        calibrate_noise_multiplier(6.0, 1e-5, **ARGS),
        calibrate_noise_multiplier(4.0, 1e-6, **ARGS),
        calibrate_noise_multiplier(4.0, 1e-5, **{**ARGS, "sample_rate": 0.1}),
        calibrate_noise_multiplier(4.0, 1e-5, **{**ARGS, "steps": 80}),
        calibrate_noise_multiplier(4.0, 1e-5, **{**ARGS, "prior": []}),
        calibrate_noise_multiplier(4.0, 1e-5, **ARGS, rtol=0.05),
    ]
    assert len(calls) == 7 and len(list(folder.glob("*.json"))) == 7
    assert all(m.noise_multiplier != base for m in changed[:5])


def test_a_changed_accountant_code_reads_no_old_answer(folder, monkeypatch):
    calls = _count_searches(monkeypatch)
    calibrate_noise_multiplier(4.0, 1e-5, **ARGS)
    monkeypatch.setattr(accounting, "_code_version", lambda: "another version")
    calibrate_noise_multiplier(4.0, 1e-5, **ARGS)
    assert len(calls) == 2


@pytest.mark.parametrize("tamper", ["too_little_noise", "garbage", "other_key"])
def test_a_wrong_or_unreadable_memo_is_recomputed_never_used(folder, monkeypatch, tamper):
    """A file that says less noise than the target allows (or is not a memo) is not believed:
    the result still meets the target, and the file is rewritten with the searched answer."""
    right = calibrate_noise_multiplier(4.0, 1e-5, **ARGS)
    (path,) = folder.glob("*.json")
    stored = json.loads(path.read_text())
    if tamper == "too_little_noise":
        path.write_text(json.dumps({**stored, "value": right.noise_multiplier / 2}))
    elif tamper == "garbage":
        path.write_text("{not json")
    else:
        path.write_text(json.dumps({"key": {"other": 1}, "value": right.noise_multiplier / 2}))
    calls = _count_searches(monkeypatch)
    got = calibrate_noise_multiplier(4.0, 1e-5, **ARGS)
    assert len(calls) == 1
    assert got.noise_multiplier == right.noise_multiplier
    assert compose_epsilon([*PRIOR, got], 1e-5, "rdp") <= 4.0
    assert json.loads(path.read_text())["value"] == right.noise_multiplier


def test_an_unreachable_target_stores_nothing(folder):
    with pytest.raises(accounting.PrivacyBudgetError):
        calibrate_noise_multiplier(0.5, 1e-5, **ARGS)  # the prior alone spends more
    assert not folder.exists() or not list(folder.glob("*.json"))


def test_an_unwritable_memo_folder_costs_time_not_the_answer(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(memo.ENV_DIR, str(blocker / "memo"))  # a folder under a file: unwritable
    got = calibrate_noise_multiplier(4.0, 1e-5, **ARGS)
    monkeypatch.setenv(memo.ENV_DIR, "")
    assert got == calibrate_noise_multiplier(4.0, 1e-5, **ARGS)


def test_default_folder_is_the_user_cache(monkeypatch):
    monkeypatch.delenv(memo.ENV_DIR, raising=False)
    assert memo.memo_dir().parts[-2:] == ("easyhard", "calibration")
