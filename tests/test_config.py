"""Config: typed sections, unknown keys and out-of-range values refused with a message naming them."""

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from easyhard.config import Params, defaults, load_params
from easyhard.schema import ConfigError, from_mapping, merge, to_dict

DEFAULTS = defaults()  # params.yaml: the only place defaults live

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_load():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert p.methods == ("dpfeta", "dpdm", "fetapro")  # the ceiling is opt-in (docs/privacy.md)
    # round trip through a plain dict
    assert from_mapping(Params, to_dict(p)) == p


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"privacy": {"epsilonn": 1.0}},
            "unknown params key 'privacy.epsilonn' (did you mean 'privacy.epsilon'?)",
        ),
        ({"finetun": {}}, "unknown params key 'finetun' (did you mean 'finetune'?)"),
        ({"privacy": {"epsilon": 0}}, "privacy.epsilon must be > 0"),
        ({"privacy": {"epsilon": -1.0}}, "privacy.epsilon must be > 0"),
        ({"privacy": {"delta": 1.0}}, "privacy.delta must be in (0, 1)"),
        ({"privacy": {"delta": 0.0}}, "privacy.delta must be in (0, 1)"),
        ({"finetune": {"sample_rate": 1.5}}, "finetune.sample_rate must be in (0, 1]"),
        ({"finetune": {"sample_rate": 0}}, "finetune.sample_rate must be in (0, 1]"),
        ({"central": {"sample_rate": -0.1}}, "central.sample_rate must be in (0, 1]"),
        ({"central": {"type": "median"}}, "central.type must be one of mean, mode"),
        ({"frequency": {"cap_fraction": 1.0}}, "frequency.cap_fraction must be in (0, 1)"),
        ({"frequency": {"cap_fraction": 0}}, "frequency.cap_fraction must be in (0, 1)"),
        ({"methods": ["dpfeta", "dpsgd"]}, "methods must be one of dpfeta, dpdm"),
        ({"pretrain": {"steps": "ten"}}, "pretrain.steps must be an integer"),
        ({"network": {"channels": [16, 32], "attention": [False]}}, "same length"),
        ({"network": {"channels": [12, 32, 32]}}, "norm_groups=8 must divide channel 12"),
        ({"privacy": "strict"}, "privacy must be a mapping"),
    ],
)
def test_bad_params_rejected(tmp_path, override, message):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(merge(base, override)))
    with pytest.raises(ConfigError) as e:
        load_params(f)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_a_missing_key_is_refused_not_defaulted():
    raw = to_dict(DEFAULTS)
    del raw["finetune"]["clip"]
    with pytest.raises(ConfigError, match="missing params key 'finetune.clip'"):
        from_mapping(Params, raw)


def test_frozen():
    p = DEFAULTS
    with pytest.raises(AttributeError):
        p.privacy.epsilon = 3.0  # type: ignore[misc]


@given(
    eps=st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=100),
    delta=st.floats(allow_nan=False, min_value=-1, max_value=2),
    q=st.floats(allow_nan=False, min_value=-1, max_value=2),
)
def test_privacy_validation_property(eps, delta, q):
    data = {
        "privacy": {"epsilon": eps, "delta": delta, "dataset_size": 100},
        "finetune": {"sample_rate": q},
    }
    valid = eps > 0 and 0 < delta < 1 / 100 and 0 < q <= 1  # delta < 1/N, N declared
    if valid:
        p = from_mapping(Params, merge(to_dict(DEFAULTS), data))
        assert p.privacy.epsilon == eps and p.finetune.sample_rate == q
    else:
        with pytest.raises(ConfigError):
            from_mapping(Params, merge(to_dict(DEFAULTS), data))


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.integers(), min_size=1, max_size=3))
def test_unknown_top_level_keys_property(extra):
    known = {f.name for f in Params.__dataclass_fields__.values()}
    extra = {k: v for k, v in extra.items() if k not in known}
    if extra:
        with pytest.raises(ConfigError, match="unknown params key"):
            from_mapping(Params, extra)
