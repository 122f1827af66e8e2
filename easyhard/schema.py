"""The machinery behind :mod:`easyhard.config`: typed loading of YAML mappings into frozen
dataclasses (unknown and missing keys refused, values coerced to the annotated types), one-line
validators, recursive merging and the plain-dict view. Knows nothing about the sections themselves.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A params value or key is wrong; the message names it."""


def choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def in_open(key: str, value: float, lo: float, hi: float) -> None:
    if not lo < value < hi:
        raise ConfigError(f"{key} must be in ({lo:g}, {hi:g}), got {value}")


def in_half_open(key: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"{key} must be in (0, 1], got {value}")


def in_half_open_zero(key: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{key} must be in [0, 1), got {value}")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Convert a YAML value to the annotated type, refusing what does not fit."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, inner[0], value)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def from_mapping(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'params'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(str(key), sorted(fields), n=1)
        hint = f" (did you mean '{_join(prefix, close[0])}'?)" if close else ""
        raise ConfigError(
            f"unknown params key '{_join(prefix, key)}'{hint}; known: {', '.join(sorted(fields))}"
        )
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
    if missing:
        raise ConfigError(
            f"missing params key '{_join(prefix, missing[0])}': params.yaml must set every key "
            "(it is the only place defaults live)"
        )
    kwargs = {k: _coerce(_join(prefix, k), hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` into ``base`` (sections merge key by key)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(params: Any) -> dict[str, Any]:
    """A plain-dict view (tuples as lists) suitable for YAML or JSON."""
    return _plain(dataclasses.asdict(params))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


#: The top-level keys of ``params.yaml`` (one dataclass field each), in order.
