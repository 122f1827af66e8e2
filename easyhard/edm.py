"""EDM (Karras et al. 2022): preconditioning, the per-example loss with noise multiplicity, samplers.

Images live in [-1, 1] inside the diffusion model (``to_model`` / ``from_model`` convert from [0, 1]).
The denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with the network ``F``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from easyhard.config import EDMConfig, SampleConfig


def to_model(x: Tensor) -> Tensor:
    """[0, 1] images to the model's [-1, 1] range."""
    return x * 2.0 - 1.0


def from_model(x: Tensor) -> Tensor:
    """Model-range images back to [0, 1] (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def c_skip(sigma: Tensor, sigma_data: float) -> Tensor:
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: Tensor, sigma_data: float) -> Tensor:
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def c_in(sigma: Tensor, sigma_data: float) -> Tensor:
    return 1.0 / (sigma**2 + sigma_data**2).sqrt()


def c_noise(sigma: Tensor) -> Tensor:
    return sigma.log() / 4.0


def loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class Denoiser(nn.Module):
    """EDM-preconditioned denoiser around a class-conditional ``UNet2DModel``."""

    def __init__(self, unet: nn.Module, sigma_data: float, n_classes: int) -> None:
        super().__init__()
        self.unet = unet
        self.sigma_data = sigma_data
        self.n_classes = n_classes

    @property
    def null_label(self) -> int:
        return self.n_classes

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        sigma = sigma.reshape(-1).to(x.dtype)
        s = sigma.reshape(-1, 1, 1, 1)
        f = self.unet(c_in(s, self.sigma_data) * x, c_noise(sigma), class_labels=labels).sample
        return c_skip(s, self.sigma_data) * x + c_out(s, self.sigma_data) * f


@dataclass(frozen=True)
class NoiseDraws:
    """The randomness of K loss evaluations per example: sigma [B, K], noise [B, K, C, H, W],
    and which labels are dropped to the null class [B, K]."""

    sigma: Tensor
    noise: Tensor
    drop: Tensor


def draw_noise(
    batch: int,
    shape: tuple[int, ...],
    cfg: EDMConfig,
    generator: torch.Generator | None = None,
    multiplicity: int | None = None,
) -> NoiseDraws:
    """Draw ln(sigma) ~ N(P_mean, P_std^2), unit noise, and label dropout, K times per example."""
    k = cfg.noise_multiplicity if multiplicity is None else multiplicity
    ln_sigma = torch.randn(batch, k, generator=generator) * cfg.p_std + cfg.p_mean
    noise = torch.randn(batch, k, *shape, generator=generator)
    drop = torch.rand(batch, k, generator=generator) < cfg.label_dropout
    return NoiseDraws(ln_sigma.exp(), noise, drop)


def edm_loss(
    denoise: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    labels: Tensor,
    draws: NoiseDraws,
    sigma_data: float,
    null_label: int,
) -> Tensor:
    """Per-example EDM loss averaged over the K noise draws: returns shape [B].

    ``x`` is [B, C, H, W] in model range; each example is repeated K times, noised with
    ``sigma * noise``, and the weighted squared error is averaged over pixels and the K draws.
    """
    b, k = draws.sigma.shape
    xk = x.unsqueeze(1).expand(b, k, *x.shape[1:])
    sigma = draws.sigma.to(x.dtype)
    s = sigma.reshape(b, k, *([1] * (x.dim() - 1)))
    noisy = xk + s * draws.noise.to(x.dtype)
    lab = torch.where(
        draws.drop,
        torch.full_like(draws.drop, null_label, dtype=labels.dtype),
        labels.unsqueeze(1).expand(b, k),
    )
    d = denoise(noisy.reshape(b * k, *x.shape[1:]), sigma.reshape(b * k), lab.reshape(b * k))
    err = (d.reshape(b, k, *x.shape[1:]) - xk) ** 2
    per_draw = loss_weight(sigma, sigma_data) * err.flatten(2).mean(-1)
    return per_draw.mean(1)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """EDM's time steps sigma_0 > ... > sigma_{N-1} = sigma_min, followed by sigma_N = 0."""
    i = torch.arange(steps, dtype=torch.float64)
    if steps == 1:
        t = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        inv = 1.0 / rho
        t = (sigma_max**inv + i / (steps - 1) * (sigma_min**inv - sigma_max**inv)) ** rho
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


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    labels: Tensor,
    shape: tuple[int, int, int],
    cfg: SampleConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw images with ``cfg.sampler``: EDM Heun / Euler (Karras et al. 2022, Algorithm 2, with
    optional churn) or diffusers' multistep DPM-Solver++ (``dpmsolver``).

    Returns images in model range [-1, 1] (not clamped). Network calls per image: see
    :func:`network_calls` (guidance not in {0, 1} doubles the batch of each call, not the count).
    """
    if cfg.sampler == "dpmsolver":
        return sample_dpmsolver(denoiser, labels, shape, cfg, generator)
    device = next(denoiser.parameters()).device
    t = karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    x = _initial_noise(len(labels), shape, float(t[0]), generator).to(device)
    labels = labels.to(device)
    gamma_max = min(cfg.churn / cfg.steps, math.sqrt(2.0) - 1.0)
    t_max = math.inf if cfg.churn_tmax is None else cfg.churn_tmax

    def d(xx: Tensor, s: float) -> Tensor:
        sig = torch.full((len(xx),), s, dtype=torch.float32, device=device)
        return guided(denoiser, xx.float(), sig, labels, cfg.guidance).double()

    for i in range(cfg.steps):
        t_cur, t_next = float(t[i]), float(t[i + 1])
        gamma = gamma_max if cfg.churn > 0 and cfg.churn_tmin <= t_cur <= t_max else 0.0
        t_hat = t_cur * (1.0 + gamma)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(device)
            x = x + cfg.churn_noise * math.sqrt(t_hat**2 - t_cur**2) * eps
        d_cur = (x - d(x, t_hat)) / t_hat
        x_next = x + (t_next - t_hat) * d_cur
        if cfg.sampler == "heun" and t_next > 0:
            d_next = (x_next - d(x_next, t_next)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.float()


def dpmsolver_scheduler(cfg: SampleConfig, sigma_data: float, solver_order: int = 2):
    """diffusers' ``EDMDPMSolverMultistepScheduler`` set up for ``cfg.steps`` network calls.

    Its conventions match ours: the state is the unscaled x = y + sigma n (``alpha_t = 1``), the
    noise levels are EDM's Karras schedule (``sigma_max ... sigma_min``, ``rho``) followed by a
    final sigma of 0 (``final_sigmas_type="zero"``: the last step returns D(x; sigma_min)), and
    it rebuilds D from a raw output F as ``c_skip x + c_out F`` with our ``c_skip`` / ``c_out``
    (``prediction_type="epsilon"``; it refuses ``"sample"``), ``c_in`` and ``c_noise = ln(sigma)/4``.
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
        algorithm_type="dpmsolver++",
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
    it recombines c_skip x + c_out F = D. Starts from the same noise as :func:`sample`.
    """
    if cfg.churn > 0:
        raise ValueError("sampler 'dpmsolver' is deterministic: sample.churn must be 0")
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
        x = sched.step(f, t, x, return_dict=False)[0]
    return x.float()


def network_calls(cfg: SampleConfig) -> int:
    """Network evaluations per image (NFE) of :func:`sample` (guidance doubles the batch, not NFE).

    Heun: ``2 * steps - 1`` (no correction on the last step to sigma = 0); Euler and DPM-Solver:
    ``steps``.
    """
    return 2 * cfg.steps - 1 if cfg.sampler == "heun" else cfg.steps
