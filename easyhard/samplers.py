"""Samplers for the EDM denoiser ``D(x; sigma)`` of :mod:`easyhard.edm` (class-conditional, with
classifier-free guidance).

Every sampler starts from the same draw ``x_0 = sigma_max * n`` and returns images in model range
[-1, 1] (not clamped). Network calls per image (NFE) are :func:`network_calls`:

* ``heun`` / ``euler``: EDM (Karras et al. 2022) Algorithm 2 on the Karras noise levels, stochastic
  when ``churn`` > 0 (S_churn spread over the steps, gamma = min(S_churn / steps, sqrt(2) - 1) at
  levels in [S_tmin, S_tmax], noise scaled by S_noise); Heun ``2 steps - 1``, Euler ``steps``.
* ``dpmsolver`` / ``sde-dpmsolver``: diffusers' ``EDMDPMSolverMultistepScheduler`` (second-order
  multistep DPM-Solver++, deterministic / stochastic); ``steps``.
* ``restart``: Restart sampling (Xu et al. 2023, Algorithm 1): deterministic Heun steps; after the
  step that reaches the main level t_min nearest ``restart_tmin``, ``restart_k`` times: add noise
  N(0, t_max^2 - t_min^2) to jump to t_max = ``restart_tmax``, then ``restart_steps`` Heun steps
  (Karras levels with the same rho) back to t_min; ``2 steps - 1 + 2 restart_k restart_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from easyhard.config import SampleConfig
from easyhard.edm import Denoiser, c_out, c_skip

DenoiseFn = Callable[[Tensor, float], Tensor]


def _karras_levels(n: int, lo: float, hi: float, rho: float) -> Tensor:
    """``n`` >= 2 noise levels from ``hi`` down to ``lo``, equally spaced in sigma^(1/rho)."""
    i = torch.arange(n, dtype=torch.float64)
    inv = 1.0 / rho
    return (hi**inv + i / (n - 1) * (lo**inv - hi**inv)) ** rho


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """EDM's time steps sigma_0 > ... > sigma_{N-1} = sigma_min, followed by sigma_N = 0."""
    if steps == 1:
        t = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        t = _karras_levels(steps, sigma_min, sigma_max, rho)
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def guided(denoiser: Denoiser, x: Tensor, sigma: Tensor, labels: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance D_u + w (D_c - D_u), both passes in one batched forward.

    ``guidance == 1`` is the plain conditional model (one pass); ``0`` the unconditional one.
    """
    sig = sigma.expand(len(x)) if sigma.dim() == 0 else sigma
    null = torch.full_like(labels, denoiser.null_label)
    if guidance == 1.0:
        return denoiser(x, sig, labels)
    if guidance == 0.0:
        return denoiser(x, sig, null)
    d = denoiser(torch.cat([x, x]), torch.cat([sig, sig]), torch.cat([labels, null]))
    d_cond, d_uncond = d.chunk(2)
    return d_uncond + guidance * (d_cond - d_uncond)


def _initial_noise(
    n: int, shape: tuple[int, int, int], sigma_max: float, generator: torch.Generator | None
) -> Tensor:
    """x_0 = sigma_max * n, n ~ N(0, I), in float64 (every sampler starts from the same draw)."""
    return torch.randn(n, *shape, generator=generator, dtype=torch.float64) * sigma_max


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like``, drawn on the CPU generator in float64 (the
    same numbers on any device), then moved to ``like``'s device."""
    return torch.randn(like.shape, generator=generator, dtype=torch.float64).to(like.device)


def _denoise_fn(denoiser: Denoiser, labels: Tensor, guidance: float) -> DenoiseFn:
    """``d(x, sigma)``: the guided denoiser on a float64 state at one noise level (float32 net)."""
    device = labels.device

    def d(x: Tensor, s: float) -> Tensor:
        sig = torch.full((len(x),), s, dtype=torch.float32, device=device)
        return guided(denoiser, x.float(), sig, labels, guidance).double()

    return d


def _heun_step(d: DenoiseFn, x: Tensor, t_cur: float, t_next: float, second: bool) -> Tensor:
    """One step of the probability-flow ODE dx/dt = (x - D(x; t)) / t from t_cur to t_next:
    Euler, plus Heun's correction when ``second`` and t_next > 0."""
    d_cur = (x - d(x, t_cur)) / t_cur
    x_next = x + (t_next - t_cur) * d_cur
    if second and t_next > 0:
        d_next = (x_next - d(x_next, t_next)) / t_next
        x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
    return x_next


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    labels: Tensor,
    shape: tuple[int, int, int],
    cfg: SampleConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw images with ``cfg.sampler`` (see the module docstring); model range [-1, 1].

    Network calls per image: :func:`network_calls` (guidance not in {0, 1} doubles the batch of
    each call, not the count). All randomness comes from ``generator`` (a CPU generator gives the
    same images on any device).
    """
    if cfg.sampler in ("dpmsolver", "sde-dpmsolver"):
        return sample_dpmsolver(denoiser, labels, shape, cfg, generator)
    if cfg.sampler == "restart":
        return sample_restart(denoiser, labels, shape, cfg, generator)
    device = next(denoiser.parameters()).device
    t = karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    x = _initial_noise(len(labels), shape, float(t[0]), generator).to(device)
    d = _denoise_fn(denoiser, labels.to(device), cfg.guidance)
    gamma_max = min(cfg.churn / cfg.steps, math.sqrt(2.0) - 1.0)
    t_max = math.inf if cfg.churn_tmax is None else cfg.churn_tmax
    for i in range(cfg.steps):
        t_cur, t_next = float(t[i]), float(t[i + 1])
        gamma = gamma_max if cfg.churn > 0 and cfg.churn_tmin <= t_cur <= t_max else 0.0
        t_hat = t_cur * (1.0 + gamma)
        if gamma > 0:
            x = x + cfg.churn_noise * math.sqrt(t_hat**2 - t_cur**2) * _randn(x, generator)
        x = _heun_step(d, x, t_hat, t_next, second=cfg.sampler == "heun")
    return x.float()


def restart_plan(cfg: SampleConfig) -> tuple[Tensor, int, Tensor]:
    """The main levels ``t`` (:func:`karras_sigmas`), the index ``j`` of the main level used as
    t_min (the one nearest ``cfg.restart_tmin`` among t_1 ... t_{steps-1} below ``restart_tmax``),
    and the ``restart_steps + 1`` levels of each restart, from ``restart_tmax`` down to t_j."""
    t = karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    inner = [j for j in range(1, cfg.steps) if float(t[j]) < cfg.restart_tmax]
    if not inner:
        raise ValueError(f"no main noise level below restart_tmax={cfg.restart_tmax}")
    j = min(inner, key=lambda k: abs(float(t[k]) - cfg.restart_tmin))
    levels = _karras_levels(cfg.restart_steps + 1, float(t[j]), cfg.restart_tmax, cfg.rho)
    return t, j, levels


@torch.no_grad()
def sample_restart(
    denoiser: Denoiser,
    labels: Tensor,
    shape: tuple[int, int, int],
    cfg: SampleConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Restart sampling (Xu et al. 2023, Algorithm 1) with Heun steps, one restart interval.

    The main ODE runs over :func:`karras_sigmas`; on reaching t_min = t_j (:func:`restart_plan`)
    it restarts ``restart_k`` times: x <- x + sqrt(t_max^2 - t_min^2) n (the forward process'
    exact transition from t_min to t_max), then Heun steps back to t_min. ``restart_k = 0`` is
    deterministic Heun.
    """
    device = next(denoiser.parameters()).device
    t, j, levels = restart_plan(cfg)
    x = _initial_noise(len(labels), shape, float(t[0]), generator).to(device)
    d = _denoise_fn(denoiser, labels.to(device), cfg.guidance)
    jump = math.sqrt(float(levels[0]) ** 2 - float(levels[-1]) ** 2)
    for i in range(cfg.steps):
        x = _heun_step(d, x, float(t[i]), float(t[i + 1]), second=True)
        if i + 1 == j:
            for _ in range(cfg.restart_k):
                x = x + jump * _randn(x, generator)
                for k in range(cfg.restart_steps):
                    x = _heun_step(d, x, float(levels[k]), float(levels[k + 1]), second=True)
    return x.float()


def dpmsolver_scheduler(cfg: SampleConfig, sigma_data: float, solver_order: int = 2):
    """diffusers' ``EDMDPMSolverMultistepScheduler`` set up for ``cfg.steps`` network calls.

    ``algorithm_type`` is ``sde-dpmsolver++`` for ``cfg.sampler == "sde-dpmsolver"``, else
    ``dpmsolver++``. Its conventions match ours: the state is the unscaled x = y + sigma n
    (``alpha_t = 1``), the noise levels are EDM's Karras schedule (``sigma_max ... sigma_min``,
    ``rho``) followed by a final sigma of 0 (``final_sigmas_type="zero"``: the last step returns
    D(x; sigma_min)), and it rebuilds D from a raw output F as ``c_skip x + c_out F`` with our
    ``c_skip`` / ``c_out`` (``prediction_type="epsilon"``; it refuses ``"sample"``), ``c_in`` and
    ``c_noise = ln(sigma)/4``.
    """
    from diffusers import EDMDPMSolverMultistepScheduler

    sched = EDMDPMSolverMultistepScheduler(
        sigma_min=cfg.sigma_min,
        sigma_max=cfg.sigma_max,
        sigma_data=sigma_data,
        sigma_schedule="karras",
        prediction_type="epsilon",
        rho=cfg.rho,
        solver_order=solver_order,
        algorithm_type="sde-dpmsolver++" if cfg.sampler == "sde-dpmsolver" else "dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    sched.set_timesteps(cfg.steps)
    sched.set_begin_index(0)
    return sched


@torch.no_grad()
def sample_dpmsolver(
    denoiser: Denoiser,
    labels: Tensor,
    shape: tuple[int, int, int],
    cfg: SampleConfig,
    generator: torch.Generator | None = None,
    solver_order: int = 2,
) -> Tensor:
    """Multistep DPM-Solver++ (diffusers' ``EDMDPMSolverMultistepScheduler``) on our denoiser.

    One (guided, batched) denoiser call per step: ``cfg.steps`` network calls per image. The
    scheduler takes the raw network output F, so the guided D is converted to
    F = (D - c_skip x) / c_out at the scheduler's own sigma (c_out > 0 at every sigma it queries);
    it recombines c_skip x + c_out F = D. Starts from the same noise as :func:`sample`. For
    ``sde-dpmsolver`` the scheduler draws each step's noise (float64, the state's dtype) from
    ``generator`` itself (``step(..., generator=)``; a CPU generator draws on the CPU).
    """
    if cfg.churn > 0:
        raise ValueError(f"sampler {cfg.sampler!r} takes no churn: sample.churn must be 0")
    device = next(denoiser.parameters()).device
    sd = denoiser.sigma_data
    sched = dpmsolver_scheduler(cfg, sd, solver_order)
    sigmas = sched.sigmas  # float32, [steps + 1], last one 0
    x = _initial_noise(len(labels), shape, float(sigmas[0]), generator).to(device)
    labels = labels.to(device)
    for i, t in enumerate(sched.timesteps):
        s = sigmas[i]  # float32 0-d, as the scheduler uses it to rebuild D
        sig = torch.full((len(x),), float(s), dtype=torch.float32, device=device)
        d = guided(denoiser, x.float(), sig, labels, cfg.guidance).double()
        f = (d - c_skip(s, sd) * x) / c_out(s, sd)
        x = sched.step(f, t, x, generator=generator, return_dict=False)[0]
    return x.float()


def network_calls(cfg: SampleConfig) -> int:
    """Network evaluations per image (NFE) of :func:`sample` (guidance doubles the batch, not NFE).

    Heun: ``2 steps - 1`` (no correction on the last step to sigma = 0); Euler, DPM-Solver and
    SDE-DPM-Solver: ``steps``; Restart: ``2 steps - 1 + 2 restart_k restart_steps``.
    """
    if cfg.sampler == "heun":
        return 2 * cfg.steps - 1
    if cfg.sampler == "restart":
        return 2 * cfg.steps - 1 + 2 * cfg.restart_k * cfg.restart_steps
    return cfg.steps
