"""EDM (Karras et al. 2022): preconditioning and the per-example loss with noise multiplicity.

Images live in [-1, 1] inside the diffusion model (``to_model`` / ``from_model`` convert from [0, 1]).
The denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with the network ``F``.
The samplers that drive it are in :mod:`easyhard.samplers`.

Per-record randomness (DP fine-tuning). The K draws of each example's loss are public randomness,
but the DP-SGD sensitivity argument (:mod:`easyhard.dpsgd`) needs each example's draws to depend on
nothing but that example and the step. :func:`record_ids` names every record by a keyed hash of its
own content (BLAKE2b of its pixel bytes and label, keyed with the public seed), and
:func:`draw_noise_per_record` draws record ``r``'s K draws at step ``t`` from the counter-based
generator Philox4x64 (Salmon et al. 2011) keyed with ``id(r)`` at counter ``t * 2^192``: a function
of (seed, step, record) alone, whichever other records were sampled, in whatever order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
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


#: BLAKE2b personalisation of the record ids (domain separation from any other use of the seed).
RECORD_ID_PERSON = b"easyhard-record"
#: Bit position of the step in Philox's 256-bit counter: one record's draws of one step use the
#: counters ``t * 2^192 + j`` for small ``j``, so different steps never share a counter.
STEP_COUNTER_SHIFT = 192


def record_ids(x: Tensor, y: Tensor, seed: int) -> list[int]:
    """One 128-bit id per record: BLAKE2b (keyed with the public ``seed``) of the record's own
    pixel bytes (float32, C order) and label (int64).

    A function of the record's content alone: independent of its position and of every other
    record (equal records get equal ids, hence equal draws)."""
    key = int(seed).to_bytes(8, "little", signed=True)
    xs = x.detach().to("cpu", torch.float32).contiguous().numpy()
    ys = y.detach().to("cpu", torch.int64).numpy()
    out = []
    for xi, yi in zip(xs, ys, strict=True):
        h = hashlib.blake2b(digest_size=16, key=key, person=RECORD_ID_PERSON)
        h.update(xi.tobytes())
        h.update(yi.tobytes())
        out.append(int.from_bytes(h.digest(), "little"))
    return out


def record_generator(record_id: int, step: int) -> np.random.Generator:
    """Philox4x64 keyed with ``record_id`` at counter ``step * 2^192``: record ``r``'s stream at
    step ``t``, a function of (id, t) only."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    bits = np.random.Philox(key=record_id, counter=int(step) << STEP_COUNTER_SHIFT)
    return np.random.Generator(bits)


def draw_noise_per_record(
    ids: Sequence[int],
    step: int,
    shape: tuple[int, ...],
    cfg: EDMConfig,
    multiplicity: int | None = None,
) -> NoiseDraws:
    """:func:`draw_noise`'s K draws for the records ``ids`` at ``step``, row ``b`` from record
    ``ids[b]``'s own stream (:func:`record_generator`): K values ln(sigma) ~ N(P_mean, P_std^2),
    then K unit-noise images, then K label-dropout flags (uniform < ``label_dropout``)."""
    k = cfg.noise_multiplicity if multiplicity is None else multiplicity
    b = len(ids)
    ln_sigma = np.empty((b, k))
    noise = np.empty((b, k, *shape))
    uniform = np.empty((b, k))
    for row, rid in enumerate(ids):
        g = record_generator(rid, step)
        ln_sigma[row] = g.standard_normal(k)
        noise[row] = g.standard_normal((k, *shape))
        uniform[row] = g.random(k)
    sigma = torch.from_numpy(ln_sigma * cfg.p_std + cfg.p_mean).exp().float()
    drop = torch.from_numpy(uniform < cfg.label_dropout)
    return NoiseDraws(sigma, torch.from_numpy(noise).float(), drop)


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
