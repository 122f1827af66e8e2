"""The warm-up planner (``central.plan: auto``, ``frequency.plan: auto``): each warm-up is planned
for *signal*, from public values only, before any data is touched.

Whether an easy stage helps is decided by the signal-to-noise ratio of what it releases, and that
is computable without the sensitive data: the declared N, the number of classes K and the image
shape (:class:`~easyhard.datasets.Layout`), the target (epsilon, delta) and the DP-SGD plan.

Central images. A released image of one query (mean or mode) carries Gaussian noise of per-pixel
std ``s = sigma * sqrt(d) * K / (q * N)`` in pixel units (``d`` downsampled values; the mean's
sensitivity is ``sqrt(d) / (qN/K)``, the mode's ``sqrt(d)`` on histograms of ``qN/K`` expected
counts). What it costs is the epsilon of ``T`` Poisson-subsampled Gaussians at ``(sigma, q)``. The
planner predicts the image's error on a *public proxy* (scikit-learn's digits resized to the
layout; the expected statistic plus simulated noise through the stage's own clamp, mode, upsampling
and post-processing, :func:`release_error`) and its

    SNR = contrast / RMSE,   contrast = RMS over classes and pixels of (class mean - mean of classes)

i.e. how far the released image is from the true class mean compared with what tells the classes
apart. Criterion (the issue's): the warm-ups together get the largest budget share that raises
DP-SGD's noise multiplier by at most ``privacy.warmup_tolerance`` (:func:`warmup_cap`; planned
warm-ups of one method split it equally); within its share a warm-up takes the setting (type,
downsampling, q; one query) with the highest predicted SNR. Below ``min_snr`` it is *off* and
spends nothing: DP-FETA then runs as DPDM, never below it.

Frequency release (FETA-Pro): the same rule over q, with SNR = RMS over classes of the distance of
a class's mean embedding from the mean of classes, over the norm of the noise vector (``sqrt(D)``
entries of std ``sigma * K / (qN)``), on the same proxy and the run's public frequencies.

The search ranks candidates with the RDP accountant (fast, and an upper bound of the tighter
ones); the chosen share is then calibrated by the stage with ``privacy.accountant``, which gives at
most the same noise, and the choice reports the SNR at that noise. The result depends on public values only (tests/test_warmup.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from easyhard.central import downsample, postprocess, upsample
from easyhard.config import CentralConfig, FrequencyConfig, Params, PrivacyConfig
from easyhard.datasets import Layout
from easyhard.frequency import feature_dim, image_features, rff_frequencies
from easyhard.privacy.accounting import (
    Mechanism,
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compose_epsilon,
)

#: Candidate settings the planner searches (public constants).
SAMPLE_RATES = (1.0, 0.5, 0.25)
TYPES = ("mean", "mode")
CAP_SHARES = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02)
#: Noise draws per simulated release (common random numbers across candidates).
REPS = 4
SEARCH_ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class WarmupChoice:
    """One planned warm-up: the config the stage runs (``None``: off, nothing spent) and why."""

    config: CentralConfig | FrequencyConfig | None
    share: float  # budget share given to it (0 when off; fixed forms: their own share or None)
    noise_std: float | None  # predicted per-pixel (central) / per-entry (frequency) noise std
    snr: float | None  # predicted SNR on the public proxy at that noise (None: not predicted)
    reason: str

    @property
    def enabled(self) -> bool:
        return self.config is not None

    def summary(self) -> dict[str, object]:
        cfg = self.config
        return {
            "enabled": self.enabled,
            "share": self.share,
            "noise_std": self.noise_std,
            "snr": self.snr,
            "reason": self.reason,
            "settings": None if cfg is None else dataclasses.asdict(cfg),
        }


@dataclass(frozen=True)
class WarmupPlan:
    central: WarmupChoice
    frequency: WarmupChoice


# ---------------------------------------------------------------------------- public proxy


@functools.lru_cache(maxsize=8)
def proxy_images(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (public) resized to ``layout``'s shape, channels repeated, labels
    folded into ``layout.n_classes`` classes (``y % K``)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images[:, None] / 16.0, dtype=torch.float32)
    c, h, w = layout.shape
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.repeat(1, c, 1, 1).numpy()
    return x, (d.target % layout.n_classes).astype(np.int64)


def _class_means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    return np.stack(
        [x[y == i].mean(0) if np.any(y == i) else np.zeros(x.shape[1:]) for i in range(k)]
    )


def contrast(means: np.ndarray) -> float:
    """RMS over classes and pixels of (class mean - mean of the class means)."""
    return float(np.sqrt(np.mean((means - means.mean(0, keepdims=True)) ** 2)))


@functools.lru_cache(maxsize=64)
def _proxy_stats(layout: Layout, factor: int, bins: int) -> tuple[np.ndarray, ...]:
    x, y = proxy_images(layout)
    k = layout.n_classes
    xd = downsample(x, factor)
    hist = np.zeros((k, *xd.shape[1:], bins))
    idx = np.minimum((xd * bins).astype(np.int64), bins - 1)
    for i in range(k):
        sel = idx[y == i]
        for b in range(bins):
            hist[i, ..., b] = (sel == b).mean(0) if len(sel) else 0.0
    return _class_means(x, y, k), _class_means(xd, y, k), hist


#: Noise stds (pixel units) at which the proxy's SNR is simulated, log-spaced.
STD_GRID = tuple(float(v) for v in np.geomspace(1e-3, 4.0, 37))


def release_errors(
    layout: Layout, kind: str, factor: int, bins: int, post: str, stds: tuple[float, ...]
) -> np.ndarray:
    """RMSE on the proxy between released central images (per-pixel noise std ``stds[i]``) and the
    true class means at full resolution, through the stage's own clamp / mode, upsampling and
    post-processing; one value per std (all simulated in one batch)."""
    full, mean_d, hist = _proxy_stats(layout, factor, bins)
    rng = np.random.default_rng(0)  # public and fixed: the same draws for every candidate
    std = np.asarray(stds, dtype=np.float32).reshape(-1, 1, *([1] * mean_d.ndim))
    if kind == "mean":
        z = rng.standard_normal((1, REPS, *mean_d.shape), dtype=np.float32)
        low = np.clip(mean_d[None, None] + std * z, 0, 1)
    else:
        z = rng.standard_normal((1, REPS, *hist.shape), dtype=np.float32)
        std = std[..., None]
        low = (np.argmax(hist[None, None] + std * z, -1) + 0.5) / bins
    low = low.reshape(-1, *mean_d.shape[1:]).astype(np.float32)
    img = postprocess(upsample(low, layout.shape[1:]), post)
    img = img.reshape(len(stds), REPS, *full.shape)
    return np.sqrt(np.mean((img - full[None, None]) ** 2, axis=(1, 2, 3, 4, 5)))


@functools.lru_cache(maxsize=64)
def _snr_curve(layout: Layout, kind: str, factor: int, bins: int, post: str) -> np.ndarray:
    full = _proxy_stats(layout, factor, bins)[0]
    errs = release_errors(layout, kind, factor, bins, post, (0.0, *STD_GRID))
    return contrast(full) / np.maximum(errs, 1e-12)


def central_snr(layout: Layout, kind: str, factor: int, bins: int, post: str, std: float) -> float:
    """Predicted SNR of one released central image at per-pixel noise std ``std``."""
    full = _proxy_stats(layout, factor, bins)[0]
    err = release_errors(layout, kind, factor, bins, post, (std,))[0]
    return contrast(full) / max(float(err), 1e-12)


def _largest_std(curve: np.ndarray, target: float) -> float | None:
    """Largest noise std on :data:`STD_GRID` whose simulated SNR (``curve``: at 0, then the grid)
    is at least ``target``, log-interpolated to the next grid point (None: not even at 0)."""
    if curve[0] < target:
        return None
    ok = np.flatnonzero(curve[1:] >= target)
    if len(ok) == 0:
        return None
    i = int(ok[-1])
    if i + 1 >= len(STD_GRID):
        return STD_GRID[-1]
    a, b = curve[1 + i], curve[2 + i]  # a >= target > b
    w = (a - target) / (a - b)
    return float(math.exp((1 - w) * math.log(STD_GRID[i]) + w * math.log(STD_GRID[i + 1])))


# ---------------------------------------------------------------------------- budget


@functools.lru_cache(maxsize=64)
def _sgd_sigma(epsilon: float, delta: float, q: float, steps: int, prior_share: float) -> float:
    prior = []
    if prior_share > 0:
        prior = [
            calibrate_noise_multiplier(
                prior_share * epsilon,
                delta,
                sample_rate=1.0,
                steps=1,
                accountant=SEARCH_ACCOUNTANT,
                name="warmups",
            )
        ]
    return calibrate_noise_multiplier(
        epsilon, delta, sample_rate=q, steps=steps, prior=prior, accountant=SEARCH_ACCOUNTANT
    ).noise_multiplier


def warmup_cap(params: Params | PlanInputs) -> float:
    """The largest budget share (of ``privacy.epsilon``) all warm-ups together may take: DP-SGD's
    noise multiplier with them is at most ``1 + privacy.warmup_tolerance`` times what it is alone."""
    from easyhard.privacy.accounting import steps_for_epochs

    p, ft = params.privacy, params.finetune
    steps = steps_for_epochs(ft.epochs, ft.sample_rate)
    alone = _sgd_sigma(p.epsilon, p.delta, ft.sample_rate, steps, 0.0)
    for share in CAP_SHARES:
        try:
            with_warm = _sgd_sigma(p.epsilon, p.delta, ft.sample_rate, steps, share)
        except PrivacyBudgetError:
            continue
        if with_warm <= (1 + p.warmup_tolerance) * alone:
            return share
    return 0.0


@functools.lru_cache(maxsize=4096)
def _share(sigma: float, q: float, steps: int, epsilon: float, delta: float) -> float:
    """Epsilon (RDP) of ``steps`` Poisson-subsampled Gaussians as a share of ``epsilon``; at
    ``q = 1`` from the closed form alpha * steps / (2 sigma^2), what the RDP accountant computes."""
    if q < 1:
        return (
            compose_epsilon([Mechanism("w", sigma, q, steps)], delta, SEARCH_ACCOUNTANT) / epsilon
        )
    from opacus.accountants.analysis.rdp import get_privacy_spent

    from easyhard.privacy.accounting import RDP_ALPHAS

    orders = np.asarray(RDP_ALPHAS, dtype=float)
    eps, _ = get_privacy_spent(orders=orders, rdp=orders * steps / (2 * sigma**2), delta=delta)
    return float(eps) / epsilon


# ---------------------------------------------------------------------------- central images


def _factors(layout: Layout) -> list[int]:
    h = min(layout.shape[1:])
    return [f for f in (1, 2, 3, 4, 7, 8) if h % f == 0 and h // f >= 4] or [1]


def _central_noise_std(sigma: float, d: int, k: int, q: float, n: int) -> float:
    return sigma * math.sqrt(d) * k / (q * n)


@functools.lru_cache(maxsize=64)
def _sigma_at(share: float, q: float, epsilon: float, delta: float) -> float:
    """Least noise (RDP) at which one Poisson-subsampled Gaussian at rate ``q`` costs ``share``."""
    return calibrate_noise_multiplier(
        share * epsilon, delta, sample_rate=q, steps=1, accountant=SEARCH_ACCOUNTANT, name="w"
    ).noise_multiplier


def _snr_at(curve: np.ndarray, std: float) -> float:
    """The simulated SNR curve (at 0, then :data:`STD_GRID`) at ``std``, log-interpolated."""
    grid = np.log(np.asarray(STD_GRID))
    return float(np.interp(math.log(max(std, STD_GRID[0])), grid, curve[1:]))


def plan_central(params: Params | PlanInputs, layout: Layout, share: float) -> WarmupChoice:
    """The central images' settings (``central.plan``): fixed as written, or planned for the
    highest predicted SNR at budget ``share`` over type, downsampling and q (one query: more
    queries at the same per-image noise only cost more); off below ``central.min_snr``."""
    cfg, p = params.central, params.privacy
    n, k = p.dataset_size, layout.n_classes
    if cfg.plan == "fixed":
        return WarmupChoice(cfg, cfg.budget_share or 0.0, None, None, "fixed")
    if share <= 0:
        return _off("central images", cfg.min_snr, share)
    best: tuple[float, tuple[str, int, float]] | None = None
    for q in SAMPLE_RATES:
        sigma = _sigma_at(share, q, p.epsilon, p.delta)
        for kind in TYPES:
            for f in _factors(layout):
                d = layout.shape[0] * (layout.shape[1] // f) * (layout.shape[2] // f)
                curve = _snr_curve(layout, kind, f, cfg.bins, cfg.postprocess)
                snr = _snr_at(curve, _central_noise_std(sigma, d, k, q, n))
                if best is None or snr > best[0]:
                    best = (snr, (kind, f, q))
    if best is None or best[0] < cfg.min_snr:
        return _off("central images", cfg.min_snr, share)
    kind, f, q = best[1]
    planned = dataclasses.replace(
        cfg,
        plan="fixed",
        type=kind,
        downsample=f,
        sample_rate=q,
        queries=1,
        budget_share=share,
        noise_multiplier=None,
    )
    return _central_choice(params, layout, planned, share, "highest predicted SNR at the share")


def _off(what: str, min_snr: float, share: float) -> WarmupChoice:
    return WarmupChoice(
        None,
        0.0,
        None,
        None,
        f"no setting reaches SNR {min_snr:g} at a share of {share:.3g} of epsilon: {what} off, "
        "nothing spent",
    )


def _central_choice(
    params: Params | PlanInputs, layout: Layout, cfg: CentralConfig, share: float, why: str
) -> WarmupChoice:
    """The choice with its noise and SNR at the stage's own calibration."""
    from easyhard.central import central_mechanism

    p = params.privacy
    sigma = central_mechanism(cfg, p).noise_multiplier
    c, h, w = layout.shape
    d = c * (h // cfg.downsample) * (w // cfg.downsample)
    std = _central_noise_std(sigma, d, layout.n_classes, cfg.sample_rate, p.dataset_size)
    snr = central_snr(layout, cfg.type, cfg.downsample, cfg.bins, cfg.postprocess, std)
    return WarmupChoice(cfg, share, std, snr, why)


# ---------------------------------------------------------------------------- frequency release


@functools.lru_cache(maxsize=16)
def _frequency_signal(
    layout: Layout, features: int, lengthscale: float, factor: int, seed: int
) -> float:
    import torch

    x, y = proxy_images(layout)
    w = rff_frequencies(feature_dim(layout.shape, factor), features, lengthscale, seed)
    phi = image_features(torch.as_tensor(x), torch.as_tensor(w, dtype=torch.float32), factor)
    means = _class_means(phi.numpy().astype(np.float64), y, layout.n_classes)
    gaps = np.linalg.norm(means - means.mean(0, keepdims=True), axis=1)
    return float(np.sqrt(np.mean(gaps**2)))


def frequency_snr(params: Params | PlanInputs, layout: Layout, std: float) -> float:
    """Predicted SNR of the frequency release at per-entry noise std ``std``."""
    cfg = params.frequency
    signal = _frequency_signal(layout, cfg.features, cfg.lengthscale, cfg.downsample, params.seed)
    return signal / max(std * math.sqrt(cfg.features), 1e-12)


def plan_frequency(params: Params | PlanInputs, layout: Layout, share: float) -> WarmupChoice:
    """FETA-Pro's frequency release (``frequency.plan``): fixed as written, or planned over q for
    the highest predicted SNR at budget ``share``; off below ``frequency.min_snr``."""
    cfg, p = params.frequency, params.privacy
    n, k = p.dataset_size, layout.n_classes
    if cfg.plan == "fixed":
        return WarmupChoice(cfg, cfg.budget_share or 0.0, None, None, "fixed")
    if share <= 0:
        return _off("frequency release", cfg.min_snr, share)
    rows = []
    for q in SAMPLE_RATES:
        std = _sigma_at(share, q, p.epsilon, p.delta) * k / (q * n)
        rows.append((frequency_snr(params, layout, std), q))
    snr, q = max(rows)
    if snr < cfg.min_snr:
        return _off("frequency release", cfg.min_snr, share)
    planned = dataclasses.replace(
        cfg, plan="fixed", sample_rate=q, budget_share=share, noise_multiplier=None
    )
    from easyhard.frequency import frequency_params

    fp = frequency_params(planned, p)
    std = fp.noise_multiplier * k / (fp.sample_rate * n)
    why = "highest predicted SNR at the share"
    return WarmupChoice(planned, share, std, frequency_snr(params, layout, std), why)


# ---------------------------------------------------------------------------- both


@dataclass(frozen=True)
class _Sgd:
    sample_rate: float
    epochs: float


@dataclass(frozen=True)
class PlanInputs:
    """The only ``params.yaml`` values the planner reads (so that its cache key reads no other)."""

    seed: int
    privacy: PrivacyConfig
    central: CentralConfig
    frequency: FrequencyConfig
    finetune: _Sgd


def plan_warmups(params: Params, layout: Layout, central: bool, frequency: bool) -> WarmupPlan:
    """Plan the warm-ups one method runs (``central``, ``frequency``). Planned warm-ups share the
    cap (:func:`warmup_cap`) equally; one that is off leaves its part to the other."""
    sgd = _Sgd(params.finetune.sample_rate, params.finetune.epochs)
    inputs = PlanInputs(params.seed, params.privacy, params.central, params.frequency, sgd)
    return _plan_warmups(inputs, layout, central, frequency)


@functools.lru_cache(maxsize=32)
def _plan_warmups(params: PlanInputs, layout: Layout, central: bool, frequency: bool) -> WarmupPlan:
    off = WarmupChoice(None, 0.0, None, None, "not run by this method")
    auto_c = central and params.central.plan == "auto"
    auto_f = frequency and params.frequency.plan == "auto"
    cap = warmup_cap(params) if (auto_c or auto_f) else 0.0
    fixed_f = (params.frequency.budget_share or 0.0) if frequency and not auto_f else 0.0
    fixed_c = (params.central.budget_share or 0.0) if central and not auto_c else 0.0
    free = max(cap - fixed_c - fixed_f, 0.0)
    parts = max(auto_c + auto_f, 1)
    c = plan_central(params, layout, round(free / parts, 4)) if central else off
    left = free - (c.share if auto_c else 0.0)
    f = plan_frequency(params, layout, round(left, 4)) if frequency else off
    return WarmupPlan(central=c, frequency=f)
