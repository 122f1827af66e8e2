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
DP-SGD's noise multiplier by at most ``privacy.warmup_tolerance`` (:func:`warmup_cap`, for a
one-Gaussian stand-in with RDP; a fixed warm-up beside a planned one counts what it costs alone;
two planned warm-ups of one method split the rest, ``frequency.cap_fraction`` of it to the
frequency release); within its share a warm-up takes the setting (type,
downsampling, q; one query) with the highest predicted SNR. Below ``min_snr`` it is *off* and
spends nothing: DP-FETA then runs as DPDM, never below it.

Frequency release (FETA-Pro): the same rule over q, with SNR = RMS over classes of the distance of
a class's mean embedding from the mean of classes, over the norm of the noise vector (``sqrt(D)``
entries of std ``sigma * K / (qN)``), on the same proxy and the run's public frequencies. The proxy and the simulation:
:mod:`easyhard.proxy` (scikit-learn's digits; generated shapes when the source is those digits).

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

from easyhard.config import CentralConfig, FrequencyConfig, Params, PrivacyConfig
from easyhard.layout import Layout
from easyhard.privacy.accounting import (
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compose_epsilon,
)
from easyhard.proxy import STD_GRID, central_snr, frequency_signal, proxy_name, snr_curve

#: Candidate settings the planner searches (public constants).
SAMPLE_RATES = (1.0, 0.5, 0.25)
TYPES = ("mean", "mode")
CAP_SHARES = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02)
#: Largest histogram (values x bins) the planner simulates for the mode type.
MAX_MODE_VALUES = 100_000
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


# ---------------------------------------------------------------------------- central images


def _factors(layout: Layout) -> list[int]:
    h = min(layout.shape[1:])
    return [f for f in (1, 2, 3, 4, 7, 8) if h % f == 0 and h // f >= 4] or [1]


def _proxy(params: Params | PlanInputs) -> str:
    """The proxy of the run's sensitive source (:func:`proxy_name`)."""
    name = params.data_name if isinstance(params, PlanInputs) else params.data.name
    return proxy_name(name)


def central_noise_std(cfg: CentralConfig, sigma: float, layout: Layout, n: int) -> float:
    """Per-pixel noise std of a released central image in the units the proxy is simulated in:
    the stage's own :func:`easyhard.central.release_scale` (mean: pixel units; mode: histogram
    counts, divided by the expected per-class count q*N/K into the per-class fractions the proxy's
    histograms hold)."""
    from easyhard.central import mean_normaliser, release_scale

    scale = release_scale(cfg, sigma, n, layout.n_classes, layout.shape)
    if cfg.type == "mean":
        return scale.std
    return scale.std / mean_normaliser(n, layout.n_classes, cfg.sample_rate)


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
    n = p.dataset_size
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
                if kind == "mode" and d * cfg.bins > MAX_MODE_VALUES:
                    continue  # the simulated histograms would not fit in memory
                curve = snr_curve(layout, kind, f, cfg.bins, cfg.postprocess, _proxy(params))
                trial = dataclasses.replace(cfg, type=kind, downsample=f, sample_rate=q)
                snr = _snr_at(curve, central_noise_std(trial, sigma, layout, n))
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
    return central_choice(params, layout, planned, share, "highest predicted SNR at the share")


def _off(what: str, min_snr: float, share: float) -> WarmupChoice:
    if share <= 0:
        why = f"no budget left for it within the cap: {what} off, nothing spent"
    else:
        why = (
            f"no setting reaches SNR {min_snr:g} at a share of {share:.3g} of epsilon: {what} off, "
            "nothing spent"
        )
    return WarmupChoice(None, 0.0, None, None, why)


def central_choice(
    params: Params | PlanInputs, layout: Layout, cfg: CentralConfig, share: float, why: str
) -> WarmupChoice:
    """The choice with its noise and SNR at the stage's own calibration."""
    from easyhard.central import central_mechanism

    p = params.privacy
    sigma = central_mechanism(cfg, p).noise_multiplier
    std = central_noise_std(cfg, sigma, layout, p.dataset_size)
    snr = central_snr(
        layout, cfg.type, cfg.downsample, cfg.bins, cfg.postprocess, std, _proxy(params)
    )
    return WarmupChoice(cfg, share, std, snr, why)


# ---------------------------------------------------------------------------- frequency release


def frequency_snr(params: Params | PlanInputs, layout: Layout, std: float) -> float:
    """Predicted SNR of the frequency release at per-entry noise std ``std``."""
    cfg = params.frequency
    signal = frequency_signal(
        layout, cfg.features, cfg.lengthscale, cfg.downsample, params.seed, _proxy(params)
    )
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

    data_name: str
    seed: int
    privacy: PrivacyConfig
    central: CentralConfig
    frequency: FrequencyConfig
    finetune: _Sgd


def plan_warmups(params: Params, layout: Layout, central: bool, frequency: bool) -> WarmupPlan:
    """Plan the warm-ups one method runs (``central``, ``frequency``). Two planned warm-ups share
    the cap (:func:`warmup_cap`): ``frequency.cap_fraction`` of it to the frequency release, the
    rest to the central images; where that leaves one without signal, an equal split; where that
    does too, the one with signal at the whole cap gets it (the central images first)."""
    sgd = _Sgd(params.finetune.sample_rate, params.finetune.epochs)
    inputs = PlanInputs(
        params.data.name, params.seed, params.privacy, params.central, params.frequency, sgd
    )
    return _plan_warmups(inputs, layout, central, frequency)


def _fixed_share(params: PlanInputs, section: str) -> float:
    """What a fixed warm-up costs alone, as a share of epsilon: its ``budget_share``, or (a fixed
    noise multiplier) its epsilon composed with the search accountant."""
    from easyhard.central import central_mechanism
    from easyhard.frequency import frequency_mechanism, frequency_params

    cfg, p = getattr(params, section), params.privacy
    if cfg.budget_share is not None:
        return cfg.budget_share
    if section == "central":
        mech = central_mechanism(cfg, p)
    else:
        mech = frequency_mechanism(frequency_params(cfg, p))
    return compose_epsilon([mech], p.delta, SEARCH_ACCOUNTANT) / p.epsilon


@functools.lru_cache(maxsize=32)
def _plan_warmups(params: PlanInputs, layout: Layout, central: bool, frequency: bool) -> WarmupPlan:
    off = WarmupChoice(None, 0.0, None, None, "not run by this method")
    auto_c = central and params.central.plan == "auto"
    auto_f = frequency and params.frequency.plan == "auto"
    cap = warmup_cap(params) if (auto_c or auto_f) else 0.0
    fixed_c = _fixed_share(params, "central") if central and not auto_c else 0.0
    fixed_f = _fixed_share(params, "frequency") if frequency and not auto_f else 0.0
    free = max(cap - fixed_c - fixed_f, 0.0)
    both = auto_c and auto_f
    fractions = (params.frequency.cap_fraction, 0.5) if both else (0.0,)
    # the configured split; if it leaves one of them off, an equal one
    for frac in dict.fromkeys(fractions):
        c = plan_central(params, layout, round(free * (1.0 - frac), 4)) if central else off
        left = free - (c.share if auto_c else 0.0)
        f = plan_frequency(params, layout, round(left, 4)) if frequency else off
        if c.enabled and f.enabled:
            break
    if both and not (c.enabled and f.enabled):
        # the split turned one off: one warm-up gets the whole free budget, the central images
        # first (so FETA-Pro never plans less easy stage than DP-FETA at the same values)
        whole = plan_central(params, layout, round(free, 4))
        if whole.enabled:
            why = "its share went to the central images (no signal at its part of the budget)"
            c, f = whole, WarmupChoice(None, 0.0, None, None, f"frequency release off: {why}")
        else:
            f = plan_frequency(params, layout, round(free, 4))
    return WarmupPlan(central=c, frequency=f)
