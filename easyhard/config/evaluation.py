"""``params.yaml`` sections of sampling and evaluation: ``sample``, ``evaluate``, ``audit``."""

from __future__ import annotations

from dataclasses import dataclass

from easyhard.config.choices import CLASSIFIERS, SAMPLERS
from easyhard.schema import ConfigError, choice, in_open, positive


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

    count: int
    sampler: str
    steps: int
    guidance: float
    churn: float
    churn_tmin: float
    churn_tmax: float | None
    churn_noise: float
    restart_k: int
    restart_steps: int
    restart_tmin: float
    restart_tmax: float
    sigma_min: float
    sigma_max: float
    rho: float
    batch_size: int

    def __post_init__(self) -> None:
        positive("sample.count", self.count)
        choice("sample.sampler", self.sampler, SAMPLERS)
        positive("sample.steps", self.steps)
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
        positive("sample.churn_noise", self.churn_noise)
        positive("sample.sigma_min", self.sigma_min)
        if not self.sigma_max > self.sigma_min:
            raise ConfigError("sample.sigma_max must be > sample.sigma_min")
        positive("sample.rho", self.rho)
        positive("sample.batch_size", self.batch_size)
        if self.restart_k < 0:
            raise ConfigError(f"sample.restart_k must be >= 0, got {self.restart_k}")
        positive("sample.restart_steps", self.restart_steps)
        positive("sample.restart_tmin", self.restart_tmin)
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
    """FID / precision / recall and downstream accuracy, all against the held-out real test set."""

    fid_real_count: int
    fid_count: int
    classifier_epochs: int
    classifier_seeds: int
    classifiers: tuple[str, ...]
    batch_size: int

    def __post_init__(self) -> None:
        if not self.classifiers:
            raise ConfigError("evaluate.classifiers must name at least one classifier")
        for i, name in enumerate(self.classifiers):
            choice(f"evaluate.classifiers[{i}]", name, CLASSIFIERS)
        if len(set(self.classifiers)) != len(self.classifiers):
            raise ConfigError(f"evaluate.classifiers has duplicates: {list(self.classifiers)}")
        positive("evaluate.fid_real_count", self.fid_real_count)
        positive("evaluate.fid_count", self.fid_count)
        positive("evaluate.classifier_epochs", self.classifier_epochs)
        positive("evaluate.classifier_seeds", self.classifier_seeds)
        positive("evaluate.batch_size", self.batch_size)


@dataclass(frozen=True)
class AuditConfig:
    """The one-run privacy audit of each method's DP-SGD fine-tuning (white-box Dirac gradient
    canaries through :func:`easyhard.train.dp_finetune`) and of its released model (black-box
    membership score); see :mod:`easyhard.pipeline.audit` and ``docs/auditing.md``.

    ``canaries`` (m) canary records and ``fillers`` held-out test images form the audited set;
    ``resolvable_epsilon`` is the budget of the second run (sigma calibrated for it, the release's
    q, T, C), which m canaries can resolve; ``channels`` / ``attention`` the audit's network (the
    release's layer types, ``network``'s other keys); ``resume``: each run is cut once mid-way and
    resumed from its last checkpoint (``finetune.checkpoint_every``; from the start without one).
    """

    enabled: bool
    canaries: int
    fillers: int
    confidence: float
    canary_norm: float
    resolvable_epsilon: float
    channels: tuple[int, ...]
    attention: tuple[bool, ...]
    resume: bool
    blackbox_count: int

    def __post_init__(self) -> None:
        positive("audit.canaries", self.canaries)
        positive("audit.fillers", self.fillers)
        in_open("audit.confidence", self.confidence, 0.0, 1.0)
        if not self.canary_norm >= 1:
            raise ConfigError(
                f"audit.canary_norm must be >= 1 (x the clip C), got {self.canary_norm}"
            )
        positive("audit.resolvable_epsilon", self.resolvable_epsilon)
        if not self.channels or len(self.channels) != len(self.attention):
            raise ConfigError(
                f"audit.channels ({len(self.channels)} levels) and audit.attention "
                f"({len(self.attention)}) must have the same, non-zero length"
            )
        for i, c in enumerate(self.channels):
            positive(f"audit.channels[{i}]", c)
        positive("audit.blackbox_count", self.blackbox_count)
