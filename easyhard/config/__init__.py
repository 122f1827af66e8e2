"""Typed, frozen configuration: one dataclass per ``params.yaml`` section, unknown keys rejected.

Every value is validated when loaded, so a typo or an out-of-range number fails before any data is
read or any privacy is spent. Errors are :class:`ConfigError` with one line naming the key.

``params.yaml`` is the only place defaults live: the dataclasses have none, and a missing key is an
error. :func:`load_params` (optionally with overrides) is how code gets a configuration; tests and
benchmarks start from the repository's ``params.yaml`` and ``dataclasses.replace`` what they vary.
The allowed values of every choice are the tuples below, defined here once and imported elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from easyhard.config.choices import (
    ACCOUNTANTS,
    CLASSIFIERS,
    DATASETS,
    GRAD_SAMPLERS,
    METHODS,
    OFFICIAL_SPLITS,
    PRECISIONS,
    RANDOMNESS,
    SAMPLERS,
    SHARES_RUN_OF,
    WARMUP_SECTIONS,
)
from easyhard.config.evaluation import AuditConfig, EvaluateConfig, SampleConfig
from easyhard.config.sections import (
    AuxGenConfig,
    CentralConfig,
    DataConfig,
    FrequencyConfig,
    PrivacyConfig,
)
from easyhard.config.training import (
    ComputeConfig,
    EDMConfig,
    FinetuneConfig,
    NetworkConfig,
    PretrainConfig,
)
from easyhard.schema import ConfigError, choice, from_mapping, merge

__all__ = [
    "ACCOUNTANTS",
    "CLASSIFIERS",
    "DATASETS",
    "GRAD_SAMPLERS",
    "METHODS",
    "OFFICIAL_SPLITS",
    "PRECISIONS",
    "RANDOMNESS",
    "SAMPLERS",
    "SHARES_RUN_OF",
    "WARMUP_SECTIONS",
    "AuditConfig",
    "AuxGenConfig",
    "CentralConfig",
    "ComputeConfig",
    "DataConfig",
    "EDMConfig",
    "EvaluateConfig",
    "FinetuneConfig",
    "FrequencyConfig",
    "NetworkConfig",
    "Params",
    "PretrainConfig",
    "PrivacyConfig",
    "SampleConfig",
    "defaults",
    "load_params",
]


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    seed: int
    device: str
    methods: tuple[str, ...]
    data: DataConfig
    privacy: PrivacyConfig
    central: CentralConfig
    frequency: FrequencyConfig
    auxgen: AuxGenConfig
    network: NetworkConfig
    edm: EDMConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
    audit: AuditConfig
    compute: ComputeConfig

    def __post_init__(self) -> None:
        if self.compute.precision == "bf16" and not self.device.startswith("cuda"):
            raise ConfigError(
                f"compute.precision=bf16 needs device=cuda (got device={self.device!r}); "
                "use compute.precision=auto or fp32 on CPU"
            )
        for m in self.methods:
            choice("methods", m, METHODS)
        for m in self.methods:  # the fixed warm-ups a chosen method runs share its budget
            # (planned ones are capped by privacy.warmup_tolerance, easyhard/warmup.py)
            sections = [k for k in WARMUP_SECTIONS[m] if getattr(self, k).plan == "fixed"]
            shares = [getattr(self, k).budget_share or 0.0 for k in sections]
            if sum(shares) >= 1:
                names = " + ".join(f"{k}.budget_share" for k in sections)
                raise ConfigError(
                    f"{names} = {sum(shares):g} leaves DP-SGD no privacy budget for method {m}: "
                    "the shares of the warm-ups one method runs must add up to less than 1"
                )
        if not self.methods:
            raise ConfigError("methods must list at least one of " + ", ".join(METHODS))


def load_params(
    path: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None
) -> Params:
    """Read ``params.yaml`` (plus optional section overrides, e.g. from a notebook) into
    :class:`Params`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if overrides:
        data = merge(data, overrides)
    return from_mapping(Params, data)


SECTIONS = tuple(f.name for f in dataclasses.fields(Params))

#: The repository's ``params.yaml`` (the package is used from a checkout: notebook-first).
PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"


def defaults() -> Params:
    """The repository's ``params.yaml``: what ``dvc repro`` runs (tests and benchmarks start here)."""
    return load_params(PARAMS_FILE)
