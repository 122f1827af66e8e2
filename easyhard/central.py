"""Easy stage: differentially private *central images* (per-class mean or per-pixel mode).

One query = Poisson-subsample the sensitive set at rate ``q``; downsample every image by an integer
factor (area average, so pixels stay in [0, 1]); per class, release a noisy statistic; upsample.

Sensitivity (add/remove one image, any dataset): the image changes exactly one class's statistic.

* ``mean``: the released value is the per-class *sum* divided by the public constant
  ``normaliser = q * N / K`` (the expected per-class count; N is the *declared* dataset size
  ``privacy.dataset_size``, never ``len`` of the data, and K the public number of classes). One image adds a
  vector with entries in [0, 1], so the L2 sensitivity is ``sqrt(d) / normaliser`` with ``d`` the
  number of downsampled values (C*h*w). Gaussian noise has std ``noise_multiplier * sensitivity``.
* ``mode``: per class, pixel and channel, a histogram over ``bins`` equal-width bins; one image adds 1
  to exactly one bin per value, so the L2 sensitivity is ``sqrt(d)``. The released image is the
  centre of the noisy arg-max bin (post-processing).

Pixels are clipped to [0, 1] inside the mechanism, so these bounds hold whatever the caller passes.
Every Poisson mask and noise draw comes from a :class:`~easyhard.privacy.randomness.NoiseSource`
(secret by default), never from the public seed.

Each query is therefore a Poisson-subsampled Gaussian mechanism with the stated noise multiplier, and
``queries`` of them compose as one ledger entry. Clamping, upsampling, median blur and sharpening are
post-processing and cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from easyhard.config import CentralConfig, PrivacyConfig
from easyhard.privacy import Mechanism
from easyhard.privacy.plan import warmup_mechanism
from easyhard.privacy.randomness import NoiseSource


@dataclass(frozen=True)
class CentralImages:
    """Released central images (float32 NCHW in [0, 1]) with their labels, query index and the
    public constants of the release."""

    x: np.ndarray
    y: np.ndarray
    query: np.ndarray
    scale: ReleaseScale


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Area-average downsampling by an integer factor (trailing rows/cols that don't fit dropped)."""
    if factor == 1:
        return x.astype(np.float32)
    t = torch.as_tensor(x, dtype=torch.float32)
    return F.avg_pool2d(t, factor).numpy()


def upsample(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling back to ``size`` (H, W)."""
    t = torch.as_tensor(x, dtype=torch.float32)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False).clamp(0, 1).numpy()


def mean_normaliser(public_size: int, n_classes: int, sample_rate: float) -> float:
    """The public constant the per-class sums are divided by: the expected per-class count q*N/K,
    with N the *declared* dataset size (``privacy.dataset_size``), never the data's length."""
    return sample_rate * public_size / n_classes


def mean_sensitivity(d: int, normaliser: float) -> float:
    """L2 sensitivity of (per-class sum / normaliser) for values in [0, 1] of dimension ``d``."""
    return math.sqrt(d) / normaliser


def mode_sensitivity(d: int) -> float:
    """L2 sensitivity of the per-class, per-value histograms: one count per value."""
    return math.sqrt(d)


def class_sums(xd: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class sums ``[K, C, h, w]`` of downsampled images (empty classes give zeros)."""
    out = np.zeros((n_classes, *xd.shape[1:]), dtype=np.float64)
    np.add.at(out, y, xd.astype(np.float64))
    return out


def bin_index(xd: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each value in [0, 1] (1.0 falls into the last bin)."""
    return np.minimum((xd * bins).astype(np.int64), bins - 1)


def class_histograms(xd: np.ndarray, y: np.ndarray, n_classes: int, bins: int) -> np.ndarray:
    """Per-class, per-value histograms ``[K, C, h, w, bins]``."""
    idx = bin_index(xd, bins)
    out = np.zeros((n_classes, *xd.shape[1:], bins), dtype=np.float64)
    onehot = np.eye(bins)[idx]  # [N, C, h, w, bins]
    np.add.at(out, y, onehot)
    return out


def mean_statistic(xd: np.ndarray, y: np.ndarray, n_classes: int, normaliser: float) -> np.ndarray:
    """The pre-noise mean query: per-class sums divided by the public ``normaliser``."""
    return class_sums(xd, y, n_classes) / normaliser


def clip_pixels(x: np.ndarray) -> np.ndarray:
    """Any array mapped into [0, 1] (NaN -> 0, +inf -> 1): the mechanisms' input domain."""
    return np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


@dataclass(frozen=True)
class ReleaseScale:
    """The public constants that shape one query's release: known before the data is touched."""

    normaliser: float  # what the per-class sums are divided by (1 for the mode histograms)
    sensitivity: float  # L2 sensitivity of the pre-noise statistic under add/remove of one record
    std: float  # Gaussian noise std = noise_multiplier * sensitivity
    down_shape: tuple[int, int, int]  # (C, h, w) after downsampling


def release_scale(
    cfg: CentralConfig,
    noise_multiplier: float,
    public_size: int,
    n_classes: int,
    image_shape: tuple[int, int, int],
) -> ReleaseScale:
    """Normaliser, sensitivity and noise std of one query, from public values only
    (``noise_multiplier = 0``: exact statistics, for the non-private ceiling)."""
    c, h, w = image_shape
    down = (c, h // cfg.downsample, w // cfg.downsample)
    d = int(np.prod(down))
    if cfg.type == "mean":
        normaliser = mean_normaliser(public_size, n_classes, cfg.sample_rate)
        sensitivity = mean_sensitivity(d, normaliser)
    else:
        normaliser, sensitivity = 1.0, mode_sensitivity(d)
    return ReleaseScale(normaliser, sensitivity, noise_multiplier * sensitivity, down)


def noisy_statistic(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: CentralConfig,
    scale: ReleaseScale,
    source: NoiseSource,
) -> np.ndarray:
    """The mechanism itself: Poisson mask, per-class statistic, Gaussian noise (all from ``source``).

    Pixels are clipped to [0, 1] here (:func:`clip_pixels`), so the stated sensitivity holds for *any*
    input, whatever validation happened before. Returns the noisy statistic: ``[K, C, h, w]`` (mean) or
    ``[K, C, h, w, bins]`` (mode histograms), before any post-processing.
    """
    keep = source.bernoulli(len(y), cfg.sample_rate)
    xd = downsample(clip_pixels(x[keep]), cfg.downsample)
    yk = y[keep]
    if cfg.type == "mean":
        stat = mean_statistic(xd, yk, n_classes, scale.normaliser)
    else:
        stat = class_histograms(xd, yk, n_classes, cfg.bins)
    return source.gaussian(stat, scale.std)


def query_once(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: CentralConfig,
    scale: ReleaseScale,
    source: NoiseSource,
) -> np.ndarray:
    """One noisy central-image query; returns ``[K, C, H, W]`` images in [0, 1]."""
    noisy = noisy_statistic(x, y, n_classes, cfg, scale, source)
    if cfg.type == "mean":
        central = noisy.clip(0.0, 1.0)
    else:
        central = (noisy.argmax(axis=-1) + 0.5) / cfg.bins
    return postprocess(upsample(central.astype(np.float32), x.shape[2:]), cfg.postprocess)


def postprocess(x: np.ndarray, kind: str) -> np.ndarray:
    """Free post-processing: ``none``, 3x3 ``median`` blur, or unsharp-mask ``sharpen``."""
    if kind == "none":
        return x
    t = torch.as_tensor(x)
    if kind == "median":
        padded = F.pad(t, (1, 1, 1, 1), mode="replicate")
        patches = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # [N, C, H, W, 3, 3]
        return patches.reshape(*t.shape, 9).median(dim=-1).values.numpy()
    if kind == "sharpen":
        blur = F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return (t + 1.0 * (t - blur)).clamp(0, 1).numpy()
    raise ValueError(f"unknown post-processing {kind!r}")


def central_mechanism(cfg: CentralConfig, privacy: PrivacyConfig) -> Mechanism:
    """The ledger entry of ``cfg.queries`` queries (noise fixed, or calibrated from
    ``cfg.budget_share`` of ``privacy.epsilon``): known before any data is touched."""
    return warmup_mechanism(
        name=f"central_images_{cfg.type}",
        sample_rate=cfg.sample_rate,
        steps=cfg.queries,
        epsilon=privacy.epsilon,
        delta=privacy.delta,
        accountant=privacy.accountant,
        noise_multiplier=cfg.noise_multiplier,
        budget_share=cfg.budget_share,
    )


def query_central_images(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: CentralConfig,
    *,
    noise_multiplier: float,
    public_size: int,
    source: NoiseSource,
    progress: bool = True,
) -> CentralImages:
    """Run ``cfg.queries`` independent queries at ``noise_multiplier`` (from
    :func:`central_mechanism`); returns all images and the public constants of the release.

    ``public_size`` is the declared N (``privacy.dataset_size``); ``source`` supplies every Poisson
    mask and noise draw (:mod:`easyhard.privacy.randomness`: secret unless seeded on purpose).
    """
    from easyhard.progress import progress_bar

    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"central images: expected NCHW images and one label each, got {x.shape}")
    if x.shape[2] < cfg.downsample or x.shape[3] < cfg.downsample:
        raise ValueError(
            f"central.downsample={cfg.downsample} is larger than the images ({x.shape[2]}x{x.shape[3]})"
        )
    scale = release_scale(cfg, noise_multiplier, public_size, n_classes, x.shape[1:])
    imgs, labels, query = [], [], []
    for t in progress_bar(range(cfg.queries), desc="central-image queries", disable=not progress):
        imgs.append(query_once(x, y, n_classes, cfg, scale, source))
        labels.append(np.arange(n_classes))
        query.append(np.full(n_classes, t))
    return CentralImages(
        x=np.concatenate(imgs).astype(np.float32),
        y=np.concatenate(labels).astype(np.int64),
        query=np.concatenate(query).astype(np.int64),
        scale=scale,
    )
