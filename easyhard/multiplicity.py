"""Noise multiplicity (Dockhorn et al. 2022): K noise draws per example, and their row layout.

DP-SGD with noise multiplicity clips, per example, the gradient of the EDM loss *averaged over K
noise draws* (:func:`easyhard.edm.edm_loss` does the averaging). The network sees the ``K * B`` rows
of a batch of B examples **draw-major**: row ``k * B + b`` is draw ``k`` of example ``b``. This module
is the one place that contract lives:

* :func:`draw_major` / :func:`example_major` reorder the small input and output images;
* :func:`draws_view` views any ``[K * B, ...]`` activation as ``[K, B, ...]`` without a copy (what
  :mod:`easyhard.grad_sample` contracts over to form per-example gradients);
* :class:`PerExampleLoss` is the module DP-SGD differentiates: ``forward(x, y, sigma, noise, drop)``
  returns the ``[B]`` per-example K-draw EDM losses, running the denoiser on draw-major rows.
"""

from __future__ import annotations

from torch import Tensor, nn

from easyhard.compute import FP32, Compute, autocast
from easyhard.edm import Denoiser, NoiseDraws, edm_loss


def draw_major(t: Tensor, batch: int) -> Tensor:
    """Rows ``b * K + k`` (example-major) -> rows ``k * B + b`` (draw-major)."""
    return t.reshape(batch, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def example_major(t: Tensor, batch: int) -> Tensor:
    """Inverse of :func:`draw_major`."""
    return t.reshape(-1, batch, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def draws_view(t: Tensor, batch: int) -> Tensor:
    """Draw-major ``[K * B, ...]`` rows as ``[K, B, ...]`` (a view when ``t`` is contiguous)."""
    if t.shape[0] % batch:
        raise ValueError(
            f"per-example gradients: {t.shape[0]} rows do not split into {batch} examples"
        )
    return t.reshape(t.shape[0] // batch, batch, *t.shape[1:])


class PerExampleLoss(nn.Module):
    """The per-example loss DP-SGD differentiates: ``forward(x, y, sigma, noise, drop) -> [B]``.

    Each example's EDM loss is averaged over its K noise draws (``sigma``/``drop`` are ``[B, K]``,
    ``noise`` is ``[B, K, C, H, W]``). The denoiser sees the ``B * K`` rows draw-major; only the
    small input and output images are permuted. Under bf16 autocast (GPUs) the losses come back in
    float32.
    """

    def __init__(self, denoiser: Denoiser, compute: Compute = FP32) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.compute = compute

    def forward(self, x: Tensor, y: Tensor, sigma: Tensor, noise: Tensor, drop: Tensor) -> Tensor:
        d, b = self.denoiser, len(x)

        def denoise(xx: Tensor, ss: Tensor, ll: Tensor) -> Tensor:
            out = d(draw_major(xx, b), draw_major(ss, b), draw_major(ll, b))
            return example_major(out, b)

        with autocast(self.compute):
            loss = edm_loss(
                denoise, x, y, NoiseDraws(sigma, noise, drop), d.sigma_data, d.null_label
            )
        return loss.float() if self.compute.dtype is not None else loss
