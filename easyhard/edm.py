"""EDM (Karras et al. 2022): preconditioning and the per-example loss with noise multiplicity.

Images live in [-1, 1] inside the diffusion model (``to_model`` / ``from_model`` convert from [0, 1]).
The denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with the network ``F``.
The samplers that drive it are in :mod:`easyhard.samplers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from easyhard.config import EDMConfig


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
