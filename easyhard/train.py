"""Training loops: non-private pretraining on central images, DP-SGD fine-tuning on sensitive ones."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easyhard.checkpoint import Checkpointer, generator_states, restore_generators
from easyhard.compute import FP32, Compute, autocast, prepare_input, prepare_model
from easyhard.config import EDMConfig, FinetuneConfig, PretrainConfig
from easyhard.dpsgd import DPSGD, Observer, PerExampleHook, poisson_batches
from easyhard.edm import (
    Denoiser,
    NoiseDraws,
    draw_noise,
    draw_noise_per_record,
    edm_loss,
    record_ids,
    to_model,
)
from easyhard.multiplicity import PerExampleLoss
from easyhard.privacy.randomness import NoiseSource
from easyhard.world import SINGLE_PROCESS, World


class EMA:
    """Exponential moving average of a model's parameters (the model used for sampling)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - self.decay)


def augment(x: Tensor, generator: torch.Generator, flip: bool = False) -> Tensor:
    """Random affine (rotation +-15 deg, scale 0.85-1.15, shift +-12.5%), optional h-flip, and
    contrast jitter, per image; ``x`` in [0, 1]."""
    n = len(x)
    u = torch.rand(n, 5, generator=generator)
    angle = (u[:, 0] - 0.5) * (math.pi / 6)
    scale = 0.85 + 0.3 * u[:, 1]
    shift = (u[:, 2:4] - 0.5) * 0.25
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    if flip:
        mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        theta[:, :, 0] *= mirror[:, None]
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (0.8 + 0.4 * u[:, 4]).reshape(n, 1, 1, 1).to(x.device)
    return (out * contrast).clamp(0.0, 1.0)


@dataclass
class History:
    """Per-logged-step training records (step, loss, and for DP-SGD batch/clipping statistics)."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def log(self, **row: float) -> None:
        self.rows.append(row)


def pretrain(
    denoiser: Denoiser,
    x: Tensor,
    y: Tensor,
    cfg: PretrainConfig,
    edm: EDMConfig,
    seed: int,
    flip: bool = False,
    progress: bool = True,
    checkpoint: Checkpointer | None = None,
    compute: Compute = FP32,
) -> tuple[EMA, History]:
    """Non-private EDM training on central images with augmentation; returns the EMA and history.

    One noise draw per image (noise multiplicity only matters under per-example clipping).
    With ``checkpoint``, the state is saved every ``checkpoint.every`` steps and resumed from.
    ``compute`` (:mod:`easyhard.compute`) turns on bf16 autocast and channels-last on GPUs."""
    from easyhard.progress import progress_bar

    prepare_model(denoiser, compute)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    ema = EMA(denoiser, cfg.ema_decay)
    hist = History()
    start = _resume(checkpoint, denoiser, ema, opt, hist, (gen,))
    denoiser.train()
    bar = progress_bar(
        range(start, cfg.steps),
        desc="pretrain",
        disable=not progress,
        initial=start,
        total=cfg.steps,
    )
    running = 0.0
    for step in bar:
        idx = torch.randint(len(x), (cfg.batch_size,), generator=gen)
        xb = x[idx]
        if cfg.augment:
            xb = augment(xb, gen, flip=flip)
        d = draw_noise(len(xb), tuple(x.shape[1:]), edm, gen, multiplicity=1)  # CPU generator
        draws = NoiseDraws(d.sigma.to(x.device), d.noise.to(x.device), d.drop.to(x.device))
        xm = prepare_input(to_model(xb), compute)
        with autocast(compute):
            loss = edm_loss(denoiser, xm, y[idx], draws, edm.sigma_data, denoiser.null_label)
            loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(denoiser)
        running += float(loss.detach())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            k = (step % cfg.log_every) + 1
            hist.log(step=step + 1, loss=running / k)
            bar.set_postfix(loss=f"{running / k:.3f}")
            running = 0.0
        if checkpoint is not None and checkpoint.due(step + 1, cfg.steps):
            checkpoint.save(step + 1, _state(denoiser, ema, opt, hist, (gen,)))
    return ema, hist


def _state(
    model: nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    hist: History,
    gens: tuple[torch.Generator, ...],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "ema": ema.model.state_dict(),
        "optimizer": opt.state_dict(),
        "history": list(hist.rows),
        "rng": generator_states(*gens),
        **extra,
    }


def _resume(
    checkpoint: Checkpointer | None,
    model: nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    hist: History,
    gens: tuple[torch.Generator, ...],
    noise: NoiseSource | None = None,
) -> int:
    """Load a matching checkpoint into the live objects; returns the step to continue from."""
    blob = checkpoint.load() if checkpoint is not None else None
    if blob is None:
        return 0
    model.load_state_dict(blob["model"])
    ema.model.load_state_dict(blob["ema"])
    opt.load_state_dict(blob["optimizer"])
    hist.rows = list(blob["history"])
    restore_generators(gens, blob["rng"])
    if noise is not None:
        noise.restore(blob.get("noise"))  # seeded: continue the stream; secure: fresh draws
    return int(blob["step"])


def _per_example_only(model: nn.Module) -> None:
    """Refuse layers that make one example's loss depend on the others or on a shared stream:
    BatchNorm (batch statistics) and active dropout (torch's global generator, in batch order)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"DP fine-tuning: {name} is a BatchNorm layer (mixes examples)")
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ValueError(
                f"DP fine-tuning: {name} has dropout {m.p}, drawn from torch's global generator in"
                " batch order (each record's randomness must be its own); set network.dropout: 0"
            )


def dp_finetune(
    denoiser: Denoiser,
    x: Tensor,
    y: Tensor,
    *,
    cfg: FinetuneConfig,
    edm: EDMConfig,
    noise_multiplier: float,
    steps: int,
    expected_batch: float,
    noise: NoiseSource,
    seed: int,
    ema: EMA | None = None,
    progress: bool = True,
    checkpoint: Checkpointer | None = None,
    ledger_at: Callable[[int], dict[str, Any]] | None = None,
    world: World = SINGLE_PROCESS,
    compute: Compute = FP32,
    per_example_hook: PerExampleHook | None = None,
    observer: Observer | None = None,
) -> tuple[EMA, History]:
    """DP-SGD fine-tuning for exactly ``steps`` Poisson batches at rate ``cfg.sample_rate``.

    ``x`` is the sensitive set in [0, 1]. Each step: Poisson batch -> per-example K-averaged EDM
    loss gradients -> clip to ``cfg.clip`` -> sum + N(0, (noise_multiplier * clip)^2) -> divide by
    the public ``expected_batch`` q*N -> Adam. The caller accounts
    ``(noise_multiplier, cfg.sample_rate, steps)``.

    ``noise`` (:mod:`easyhard.privacy.randomness`) draws every Poisson mask and Gaussian noise
    vector: secret in a private run. ``seed`` (public) drives only the K diffusion noise draws,
    per record: a sampled record's sigmas, noise images and label-dropout flags at step ``t`` are a
    function of (``seed``, ``t``, that record's content) alone (:func:`easyhard.edm.record_ids`,
    :func:`easyhard.edm.draw_noise_per_record`), never of which other records were sampled or how
    many came before: the sensitivity argument of :mod:`easyhard.dpsgd` rests on it.

    With ``checkpoint``, the state (and ``ledger_at(steps_done)``, the privacy ledger so far) is
    saved every ``checkpoint.every`` steps and a rerun resumes from it. A secure ``noise`` keeps no
    state, so the steps after the last checkpoint are drawn afresh (the lost ones were never
    released); a seeded one is restored, so a seeded replay is bit-identical.

    With a multi-process ``world`` (``torchrun``), every rank runs this function with the same
    seed and the same noise stream: the Poisson batch, the noise draws and the DP noise are
    identical on all ranks, each rank clips its shard of the batch, and the clipped sums are
    all-reduced (:mod:`easyhard.distributed`). Only rank 0 saves checkpoints and shows progress.
    ``compute`` turns on bf16 autocast for the forward pass and channels-last on GPUs; per-example
    gradients, clipping and noise stay float32.
    """
    from easyhard.progress import progress_bar

    prepare_model(denoiser, compute)
    ids = record_ids(x, y, seed)  # public, per record: no shared stream, nothing to checkpoint
    opt = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    ema = ema if ema is not None else EMA(denoiser, cfg.ema_decay)
    ema.decay = cfg.ema_decay
    dp = DPSGD(
        PerExampleLoss(denoiser, compute),
        noise_multiplier=noise_multiplier,
        clip=cfg.clip,
        expected_batch=expected_batch,
        physical_batch=cfg.physical_batch,
        noise=noise,
        grad_sampler=cfg.grad_sampler,
        world=world,
        per_example_hook=per_example_hook,
        observer=observer,
    )
    hist = History()
    gens: tuple[torch.Generator, ...] = ()
    start = _resume(checkpoint, denoiser, ema, opt, hist, gens, noise)
    denoiser.train()
    if not dp.plain:
        _per_example_only(denoiser)
    batches = poisson_batches(len(x), cfg.sample_rate, steps - start, noise)
    bar = progress_bar(
        batches,
        total=steps,
        initial=start,
        desc="DP fine-tune",
        disable=not (progress and world.is_main),
    )
    for step, idx in enumerate(bar, start=start):
        draws = draw_noise_per_record([ids[i] for i in idx.tolist()], step, tuple(x.shape[1:]), edm)
        xb = prepare_input(to_model(x[idx]), compute)
        dev = xb.device
        stats = dp.step_gradients(
            xb, y[idx], draws.sigma.to(dev), draws.noise.to(dev), draws.drop.to(dev)
        )
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(denoiser)
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            hist.log(
                step=step + 1,
                loss=stats.loss,
                batch_size=stats.batch_size,
                grad_norm=stats.grad_norm_mean,
                clipped=stats.clipped_fraction,
            )
        bar.set_postfix(loss=f"{stats.loss:.3f}", B=stats.batch_size)
        if checkpoint is not None and world.is_main and checkpoint.due(step + 1, steps):
            ledger = ledger_at(step + 1) if ledger_at is not None else None
            state = _state(denoiser, ema, opt, hist, gens, ledger=ledger, noise=noise.state())
            checkpoint.save(step + 1, state)
    return ema, hist
