"""FETA-Pro frequency stage: a DP release of per-class mean embeddings of random Fourier features.

FETA-Pro (Gong, Li, Lin & Wang, arXiv 2601.06368) adds a *frequency* warm-up between DP-FETA's
central images and DP-SGD: it releases noisy per-class kernel mean embeddings of the sensitive
images in random Fourier features (the DP-MERF construction of Harder et al., AISTATS 2021), trains
an auxiliary generator to match them (``easyhard/auxgen.py``, post-processing) and warms the
diffusion model up on the generator's images.

Features. Images are clipped to [0, 1], optionally area-downsampled by an integer factor and
flattened to ``x`` in R^d. With ``m = D / 2`` frequencies ``W = (w_1 .. w_m)``, ``w_j ~ N(0, I_d /
lengthscale^2)`` drawn from the PUBLIC seed (the frequencies are data-independent and may be
published), the feature map is

    phi(x) = [cos(W x), sin(W x)] / sqrt(m)                      (D = 2m entries)

so that ``phi(x) . phi(x') = (1/m) sum_j cos(w_j . (x - x'))``, an unbiased estimate of the Gaussian
kernel ``exp(-||x - x'||^2 / (2 lengthscale^2))`` (Rahimi & Recht 2007).

Unit norm (for every x in R^d, exactly): ``||phi(x)||^2 = (1/m) sum_{j=1..m} (cos^2(w_j . x) +
sin^2(w_j . x)) = (1/m) sum_{j=1..m} 1 = 1``. (The scaling ``1/sqrt(D)`` would give norm
``1/sqrt(2)``; ``1/sqrt(m) = sqrt(2/D)`` is the one that gives exactly 1.)

Release. Poisson-subsample the sensitive set at rate ``q`` (mask from the :class:`NoiseSource`);
per class k release

    M_k = (sum_{i kept, y_i = k} phi(x_i)) / normaliser + N(0, std^2 I_D),

with the PUBLIC constant ``normaliser = q * N / K`` (the expected per-class count; ``N`` is the
record count *declared* in the parameters, never ``len(data)``). Adding or removing one record
(image + label) changes exactly one block ``M_k`` by ``phi(x) / normaliser``, a vector of L2 norm
exactly ``1 / normaliser``: that is the L2 sensitivity ``Delta``, for any dataset and any input
(pixels are clipped and NaN/inf mapped into [0, 1] inside the mechanism). With ``std =
noise_multiplier * Delta`` the release is one Poisson-subsampled Gaussian mechanism
(``Mechanism("frequency_mmd", noise_multiplier, q, steps=1)``) under add/remove adjacency.
"""

from __future__ import annotations

import math
import numbers
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from easyhard.config import FrequencyConfig, PrivacyConfig
from easyhard.privacy import Mechanism
from easyhard.privacy.plan import warmup_mechanism
from easyhard.privacy.randomness import NoiseSource

#: Ledger name of the release.
MECHANISM_NAME = "frequency_mmd"
#: Stream name mixed into the public seed for the frequencies W (and a seeded replay's noise).
STREAM = "frequency"


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"frequency.{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _positive_real(name: str, value: object) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"frequency.{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FrequencyParams:
    """Public parameters of the release (all known before any data is touched).

    ``n_records`` is the declared (public) size N of the sensitive set that fixes the normaliser
    ``q * N / K``; ``features`` is D (even), ``lengthscale`` the Gaussian kernel's length scale on
    the (downsampled, flattened) image in [0, 1]^d.
    """

    n_records: int
    features: int
    lengthscale: float
    downsample: int
    noise_multiplier: float
    sample_rate: float

    def __post_init__(self) -> None:
        _positive_int("n_records", self.n_records)
        if _positive_int("features", self.features) % 2:
            raise ValueError(f"frequency.features must be even (cos + sin), got {self.features}")
        _positive_real("lengthscale", self.lengthscale)
        _positive_int("downsample", self.downsample)
        _positive_real("noise_multiplier", self.noise_multiplier)
        q = _positive_real("sample_rate", self.sample_rate)
        if q > 1:
            raise ValueError(f"frequency.sample_rate must be in (0, 1], got {self.sample_rate!r}")


@dataclass(frozen=True)
class FrequencyRelease:
    """The released noisy embedding ``[K, D]`` with everything public needed to use it.

    ``frequencies`` (W, ``[D/2, d]``) is a function of the public seed only; ``image_shape`` is the
    (C, H, W) the features were computed for.
    """

    embedding: np.ndarray
    frequencies: np.ndarray
    downsample: int
    image_shape: tuple[int, int, int]
    normaliser: float
    sensitivity: float
    std: float
    mechanism: Mechanism

    @property
    def n_classes(self) -> int:
        return int(self.embedding.shape[0])


def feature_dim(image_shape: tuple[int, int, int], downsample: int) -> int:
    """d: entries of one image after area-downsampling by ``downsample`` and flattening."""
    c, h, w = image_shape
    if h < downsample or w < downsample:
        raise ValueError(f"frequency.downsample={downsample} is larger than the images ({h}x{w})")
    return c * (h // downsample) * (w // downsample)


def rff_frequencies(d: int, features: int, lengthscale: float, seed: int) -> np.ndarray:
    """W ``[features / 2, d]`` with i.i.d. N(0, 1 / lengthscale^2) entries, from the PUBLIC seed.

    The frequencies are not private (data-independent); seeding them makes the feature map
    reproducible from ``params.yaml`` alone.
    """
    _positive_int("features", features)
    if features % 2:
        raise ValueError(f"frequency.features must be even (cos + sin), got {features}")
    _positive_real("lengthscale", lengthscale)
    seq = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(STREAM.encode())])
    rng = np.random.default_rng(seq)
    return rng.standard_normal((features // 2, int(d))) / float(lengthscale)


def prepare_images(x: torch.Tensor, downsample: int) -> torch.Tensor:
    """Clip to [0, 1] (NaN -> 0, +inf -> 1, -inf -> 0), area-downsample, flatten: ``[N, d]``.

    Differentiable in ``x`` (the auxiliary generator's loss goes through it).
    """
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    if downsample > 1:
        x = F.avg_pool2d(x, downsample)
    return x.reshape(x.shape[0], -1)


def random_fourier_features(x_flat: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """phi(x) = [cos(W x), sin(W x)] / sqrt(m) per row of ``x_flat``: ``[N, 2m]``, unit norm."""
    m = frequencies.shape[0]
    proj = x_flat @ frequencies.T
    return torch.cat([torch.cos(proj), torch.sin(proj)], dim=1) / math.sqrt(m)


def image_features(x: torch.Tensor, frequencies: torch.Tensor, downsample: int) -> torch.Tensor:
    """phi of NCHW images (clipped, downsampled, flattened first): ``[N, D]``."""
    return random_fourier_features(prepare_images(x, downsample), frequencies)


def frequency_normaliser(n_records: int, n_classes: int, sample_rate: float) -> float:
    """The public constant the per-class sums are divided by: the expected class count q*N/K."""
    _positive_int("n_records", n_records)
    _positive_int("n_classes", n_classes)
    q = _positive_real("sample_rate", sample_rate)
    return q * n_records / n_classes


def frequency_sensitivity(normaliser: float) -> float:
    """Add/remove L2 sensitivity of (per-class sums of unit-norm phi) / normaliser."""
    return 1.0 / _positive_real("normaliser", normaliser)


def frequency_mechanism(params: FrequencyParams) -> Mechanism:
    """The release's ledger entry, from the parameters alone (before any data is touched)."""
    return Mechanism(
        name=MECHANISM_NAME,
        noise_multiplier=params.noise_multiplier,
        sample_rate=params.sample_rate,
        steps=1,
    )


def frequency_params(cfg: FrequencyConfig, privacy: PrivacyConfig) -> FrequencyParams:
    """The release's parameters from ``params.yaml``: N declared, the noise fixed or calibrated so
    that this release alone costs ``cfg.budget_share * privacy.epsilon`` (before any data)."""
    mech = warmup_mechanism(
        name=MECHANISM_NAME,
        sample_rate=cfg.sample_rate,
        steps=1,
        epsilon=privacy.epsilon,
        delta=privacy.delta,
        accountant=privacy.accountant,
        noise_multiplier=cfg.noise_multiplier,
        budget_share=cfg.budget_share,
    )
    return FrequencyParams(
        n_records=privacy.dataset_size,
        features=cfg.features,
        lengthscale=cfg.lengthscale,
        downsample=cfg.downsample,
        noise_multiplier=mech.noise_multiplier,
        sample_rate=cfg.sample_rate,
    )


def _check_data(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, n_classes: int) -> None:
    _positive_int("n_classes", n_classes)
    if x.ndim != 4:
        raise ValueError(f"frequency: images must be NCHW (4-d), got shape {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"frequency: need one label per image, got labels {tuple(y.shape)} for {len(x)} images"
        )
    y_np = np.asarray(y)
    if len(y_np) and not np.issubdtype(y_np.dtype, np.integer):
        raise ValueError(f"frequency: labels must be integers, got {y_np.dtype}")
    if len(y_np) and (y_np.min() < 0 or y_np.max() >= n_classes):
        raise ValueError(f"frequency: labels must lie in [0, {n_classes}), found a label outside")


def class_feature_sums(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    n_classes: int,
    frequencies: np.ndarray,
    downsample: int,
    chunk: int = 1024,
) -> np.ndarray:
    """Per-class sums ``[K, D]`` of phi (float64); empty classes give zero rows."""
    _check_data(x, y, n_classes)
    w = torch.as_tensor(frequencies, dtype=torch.float64)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    out = torch.zeros((n_classes, 2 * w.shape[0]), dtype=torch.float64)
    for start in range(0, len(y_t), chunk):
        xb = torch.as_tensor(np.asarray(x[start : start + chunk]), dtype=torch.float64)
        out.index_add_(0, y_t[start : start + chunk], image_features(xb, w, downsample))
    return out.numpy()


def frequency_statistic(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    n_classes: int,
    frequencies: np.ndarray,
    downsample: int,
    normaliser: float,
) -> np.ndarray:
    """The pre-noise release: per-class sums of phi divided by the public ``normaliser``."""
    sums = class_feature_sums(x, y, n_classes, frequencies, downsample)
    return sums / _positive_real("normaliser", normaliser)


def release_frequency_embedding(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    n_classes: int,
    params: FrequencyParams,
    source: NoiseSource,
    seed: int,
) -> FrequencyRelease:
    """The DP release: Poisson mask and Gaussian noise from ``source``; W from the public ``seed``.

    Returns the noisy ``[K, D]`` embedding, the public constants (normaliser, sensitivity, std)
    and the ledger entry (equal to :func:`frequency_mechanism` of ``params``).
    """
    _check_data(x, y, n_classes)
    image_shape = tuple(int(s) for s in x.shape[1:])
    d = feature_dim(image_shape, params.downsample)  # type: ignore[arg-type]
    w = rff_frequencies(d, params.features, params.lengthscale, seed)
    normaliser = frequency_normaliser(params.n_records, n_classes, params.sample_rate)
    sensitivity = frequency_sensitivity(normaliser)
    std = params.noise_multiplier * sensitivity
    x_np, y_np = np.asarray(x), np.asarray(y)
    if params.sample_rate < 1.0:
        keep = np.asarray(source.bernoulli(len(y_np), params.sample_rate), dtype=bool)
        x_np, y_np = x_np[keep], y_np[keep]
    stat = frequency_statistic(x_np, y_np, n_classes, w, params.downsample, normaliser)
    noisy = source.gaussian(stat, std)
    return FrequencyRelease(
        embedding=noisy,
        frequencies=w,
        downsample=params.downsample,
        image_shape=image_shape,  # type: ignore[arg-type]
        normaliser=normaliser,
        sensitivity=sensitivity,
        std=std,
        mechanism=frequency_mechanism(params),
    )
