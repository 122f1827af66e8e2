"""A Gaussian toy for the sampler tests, with its exact denoiser, ODE endpoint and moments.

Data: y ~ N(mu_label, S^2) per pixel, independently; the exact denoiser is
D(x; sigma) = (S^2 x + sigma^2 mu) / (S^2 + sigma^2). On it every sampler is linear in its
Gaussian inputs, so its output per pixel is Gaussian with a mean and variance that
:func:`exact_moments` computes exactly (scalar recurrences from the papers' update rules, no
sampling): the discretisation error at a step count is exact_moments vs (mu, S^2).
"""

import math

import numpy as np
import torch

from easyhard.config import SampleConfig
from easyhard.samplers import karras_sigmas, restart_plan

SD = 0.5
MU, S = [0.3, -0.4, 0.1, 0.0], 0.2  # class means (the null class last) and the data std


class GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of class-conditional data y ~ N(mu_label, s^2 I):
    D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2). Records each call's batch and sigma."""

    def __init__(self, mu=MU, s=S, n_classes=3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))  # for the device lookup
        self.mu = torch.as_tensor(mu, dtype=torch.float64)  # [n_classes + 1]: the null class last
        self.s = s
        self.sigma_data = SD
        self.n_classes = n_classes
        self.batches = []
        self.sigmas = []

    @property
    def null_label(self):
        return self.n_classes

    def forward(self, x, sigma, labels):
        self.batches.append(len(x))
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        s2 = sigma.reshape(-1, 1, 1, 1).double() ** 2
        mu = self.mu[labels].reshape(-1, 1, 1, 1)
        return ((self.s**2 * x.double() + s2 * mu) / (self.s**2 + s2)).to(x.dtype)


def exact_flow(labels, shape, cfg, seed=0):
    """Where the probability-flow ODE takes the sampler's initial noise (in closed form for
    Gaussian data: x(sigma) - mu scales with sqrt(s^2 + sigma^2)), then D(.; sigma_min)."""
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(len(labels), *shape, generator=g, dtype=torch.float64) * cfg.sigma_max
    mu = torch.tensor(MU, dtype=torch.float64)[labels].reshape(-1, 1, 1, 1)
    smin2 = cfg.sigma_min**2
    x_min = mu + (x_t - mu) * math.sqrt((S**2 + smin2) / (S**2 + cfg.sigma_max**2))
    return (S**2 * x_min + smin2 * mu) / (S**2 + smin2)


def _k(t):
    """(x - D(x; t)) / t = k(t) (x - mu) for the exact denoiser."""
    return t / (S**2 + t**2)


def _heun_factor(t_cur, t_next, second=True):
    """y_next / y for one Euler / Heun step of dy/dt = k(t) y (y = x - mu)."""
    h = t_next - t_cur
    euler = 1.0 + h * _k(t_cur)
    if not second or t_next == 0:
        return euler
    return 1.0 + 0.5 * h * (_k(t_cur) + _k(t_next) * euler)


def exact_moments(cfg: SampleConfig) -> tuple[float, float]:
    """Mean offset E[x] - mu (for mu = 1) and Var[x] of one pixel's output, exactly.

    y = x - mu starts at sigma_max n - mu (mean -mu, variance sigma_max^2). Heun / Euler with churn:
    EDM Algorithm 2; restart: Xu et al. 2023 Algorithm 1; sde-dpmsolver: DPM-Solver++(2M) SDE
    (Lu et al. 2022) as diffusers runs it (first order on the first and the last step).
    """
    t = [float(v) for v in karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)]
    m, v = -1.0, t[0] ** 2
    if cfg.sampler in ("heun", "euler"):
        gamma_max = min(cfg.churn / cfg.steps, math.sqrt(2.0) - 1.0)
        t_max = math.inf if cfg.churn_tmax is None else cfg.churn_tmax
        for i in range(cfg.steps):
            on = cfg.churn > 0 and cfg.churn_tmin <= t[i] <= t_max
            t_hat = t[i] * (1.0 + (gamma_max if on else 0.0))
            v += cfg.churn_noise**2 * (t_hat**2 - t[i] ** 2)
            f = _heun_factor(t_hat, t[i + 1], second=cfg.sampler == "heun")
            m, v = f * m, f * f * v
        return m, v
    if cfg.sampler == "restart":
        _, j, levels = restart_plan(cfg)
        lv = [float(u) for u in levels]
        for i in range(cfg.steps):
            f = _heun_factor(t[i], t[i + 1])
            m, v = f * m, f * f * v
            if i + 1 == j:
                for _ in range(cfg.restart_k):
                    v += lv[0] ** 2 - lv[-1] ** 2
                    for a, b in zip(lv[:-1], lv[1:], strict=True):
                        f = _heun_factor(a, b)
                        m, v = f * m, f * f * v
        return m, v
    assert cfg.sampler == "sde-dpmsolver"
    mean = np.array([m, 0.0])  # (y at the current level, y at the previous level)
    cov = np.diag([v, 0.0])
    n = cfg.steps
    for i in range(n):
        s0, st = t[i], t[i + 1]
        r2 = (st / s0) ** 2  # exp(-2h), h = ln(s0 / st)
        a0 = S**2 / (S**2 + s0**2)  # D - mu = a0 y
        p, q = r2 + (1 - r2) * a0, 0.0
        if 0 < i < n - 1:  # second-order midpoint: + 0.5 (1 - r2) (D0 - D1) / r0
            s1 = t[i - 1]
            a1 = S**2 / (S**2 + s1**2)
            r0 = math.log(s1 / s0) / math.log(s0 / st)
            p += 0.5 * (1 - r2) * a0 / r0
            q = -0.5 * (1 - r2) * a1 / r0
        step = np.array([[p, q], [1.0, 0.0]])
        mean = step @ mean
        cov = step @ cov @ step.T + np.diag([st**2 * (1 - r2), 0.0])
    return float(mean[0]), float(cov[0, 0])
