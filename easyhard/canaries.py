"""White-box one-run audit of the release's own fine-tuning: Dirac gradient canaries in dp_finetune.

The accountant says what DP-SGD *should* leak; this measures what the code *does* leak. The canaries
go through the very function that produces the release, :func:`easyhard.train.dp_finetune`, with the
release's noise source, Poisson sampler, per-layer gradient rules, clipping, normaliser, all-reduce
(``world``) and checkpoint/resume logic. Only the data and two hooks of
:class:`easyhard.dpsgd.DPSGD` are the auditor's:

* the audited dataset is ``fillers`` (public images: the held-out test split, never the training
  split) plus each of ``m`` canary records with probability 1/2 (the auditor's coin). Canary ``i``
  is a constant image of value ``1 + (i + 1) / (m + 1)``, outside the [0, 1] range of real images,
  so :func:`canary_ids` recognises it in any batch;
* ``per_example_hook`` (:class:`DiracCanaries`): after the per-example gradients of a chunk are
  computed and before clipping, a canary's gradient is replaced by ``canary_norm * C * e_c(i)``, a
  Dirac vector on its own coordinate ``c(i)`` of the real network's parameters;
* ``observer`` (:class:`StepRecorder`): the white-box adversary's view, every step's released
  noisy gradient and the noise std, C, normaliser and batch size actually used. Canary ``i``'s
  score is its coordinate of ``normaliser * released gradient`` summed over the steps.

With ``interrupt_at`` the run is stopped once after that many steps and rerun from its last
checkpoint (:class:`easyhard.checkpoint.Checkpointer`), as a crashed stage is: the steps after the
checkpoint are discarded and drawn again. ``replay`` (a copy of a seeded stream) models an attacker
who regenerates the noise and subtracts it. The one-run bound (:mod:`easyhard.privacy.audit`) turns
the scores into a lower bound on epsilon; the stage (:mod:`easyhard.pipeline.audit`) compares it
and the observed settings with the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from easyhard.checkpoint import Checkpointer
from easyhard.compute import FP32, Compute
from easyhard.config import EDMConfig, FinetuneConfig
from easyhard.dpsgd import Released
from easyhard.edm import Denoiser
from easyhard.privacy.randomness import NoiseSource
from easyhard.train import dp_finetune
from easyhard.world import SINGLE_PROCESS, World


class AuditFailure(RuntimeError):
    """The code leaks more than the ledger claims, or ran with settings the ledger does not hold."""


class _Interrupted(Exception):
    """Raised by the recorder to stop a run mid-way (a simulated crash)."""


def canary_images(m: int, shape: tuple[int, ...]) -> Tensor:
    """``m`` constant images; canary ``i`` has every pixel ``1 + (i + 1) / (m + 1)`` (> 1)."""
    values = 1.0 + torch.arange(1, m + 1, dtype=torch.float64) / (m + 1)
    return values.float().reshape(m, *([1] * len(shape))).expand(m, *shape).contiguous()


def canary_ids(x: Tensor, m: int) -> Tensor:
    """Canary index of each image of a batch in the model's [-1, 1] range (-1 = not a canary)."""
    first = (x.reshape(len(x), -1)[:, 0].double().cpu() + 1.0) / 2.0  # back to [0, 1] units
    ids = torch.round((first - 1.0) * (m + 1)).long() - 1
    return torch.where(first > 1.0 + 0.5 / (m + 1), ids, torch.full_like(ids, -1))


@dataclass(frozen=True)
class Coordinates:
    """Canary ``i``'s Dirac coordinate: flat index ``local[i]`` of parameter ``names[owner[i]]``."""

    names: tuple[str, ...]
    owner: np.ndarray
    local: np.ndarray

    @classmethod
    def spread(cls, shapes: dict[str, tuple[int, ...]], m: int, seed: int) -> Coordinates:
        """``m`` distinct coordinates drawn uniformly over all trainable parameters (public seed)."""
        names = tuple(sorted(shapes))
        sizes = np.array([int(np.prod(shapes[n])) for n in names])
        if m > sizes.sum():
            raise ValueError(
                f"audit: {m} canaries need as many parameters, the network has {sizes.sum()}"
            )
        flat = np.sort(np.random.default_rng(seed).choice(int(sizes.sum()), m, replace=False))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        owner = np.searchsorted(starts, flat, side="right") - 1
        return cls(names, owner, flat - starts[owner])

    def read(self, gradient: dict[str, Tensor]) -> np.ndarray:
        """The ``m`` canary coordinates of a gradient ``{name: tensor}`` (float64)."""
        out = np.empty(len(self.owner))
        for k, name in enumerate(self.names):
            sel = self.owner == k
            if sel.any():
                flat = gradient[name].detach().reshape(-1).double().cpu().numpy()
                out[sel] = flat[self.local[sel]]
        return out


class DiracCanaries:
    """The per-example-gradient hook: a canary's gradient becomes ``norm * e_c(i)`` before clipping;
    fillers keep their real gradients."""

    def __init__(self, m: int, norm: float, coordinates: Coordinates, prefix: str) -> None:
        self.m, self.norm, self.coordinates, self.prefix = m, norm, coordinates, prefix

    def __call__(self, grads: dict[str, Tensor], chunk: tuple[Tensor, ...]) -> dict[str, Tensor]:
        ids = canary_ids(chunk[0], self.m)
        rows = torch.nonzero(ids >= 0).squeeze(1)
        if not len(rows):
            return grads
        c, owner = self.coordinates, self.coordinates.owner[ids[rows].numpy()]
        local = torch.as_tensor(self.coordinates.local[ids[rows].numpy()])
        out = {}
        for name, g in grads.items():
            flat = g.reshape(len(g), -1).clone()
            flat[rows.to(g.device)] = 0.0
            bare = name.removeprefix(self.prefix)
            mine = torch.as_tensor(owner == c.names.index(bare)) if bare in c.names else None
            if mine is not None and mine.any():
                flat[rows[mine].to(g.device), local[mine].to(g.device)] = self.norm
            out[name] = flat.reshape(g.shape)
        return out


@dataclass
class StepRecorder:
    """The observer: per released step, the canary coordinates of ``normaliser * gradient`` (minus
    the replayed noise, with ``replay``) and the settings used. Raises once after ``interrupt_at``
    steps."""

    coordinates: Coordinates
    prefix: str
    records: int  # records in the audited dataset (the replay draws its Poisson masks)
    sample_rate: float
    replay: NoiseSource | None = None
    interrupt_at: int | None = None
    values: list[np.ndarray] = field(default_factory=list)
    settings: list[tuple[float, float, float, float]] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    replay_states: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.replay is not None:
            self.replay_states = [self.replay.state()]  # entry t: the stream after t steps

    def __call__(self, rel: Released) -> None:
        step = {
            k.removeprefix(self.prefix): v.detach().double().cpu() * rel.normaliser
            for k, v in rel.gradient.items()
        }
        if self.replay is not None:  # the attacker's copy of the stream: same masks, same noise
            self.replay.bernoulli(self.records, self.sample_rate)
            for k, v in rel.gradient.items():
                noise = self.replay.gaussian(np.zeros(tuple(v.shape)), rel.noise_std)
                step[k.removeprefix(self.prefix)] -= torch.from_numpy(noise)
            self.replay_states.append(self.replay.state())
        self.values.append(self.coordinates.read(step))
        self.settings.append((rel.noise_multiplier, rel.noise_std, rel.clip, rel.normaliser))
        self.batch_sizes.append(rel.batch_size)
        if self.interrupt_at is not None and len(self.values) == self.interrupt_at:
            self.interrupt_at = None
            raise _Interrupted

    def truncate(self, steps: int) -> None:
        """Forget the steps after ``steps`` (a resumed run releases them again)."""
        del self.values[steps:], self.settings[steps:], self.batch_sizes[steps:]
        if self.replay is not None:
            self.replay.restore(self.replay_states[steps])
            del self.replay_states[steps + 1 :]


@dataclass(frozen=True)
class CanaryRun:
    """One audited fine-tuning run: scores, the coin flips and what the observer saw."""

    scores: np.ndarray
    included: np.ndarray
    noise_multiplier: tuple[float, ...]  # distinct values seen over the steps
    noise_std: tuple[float, ...]
    clip: tuple[float, ...]
    normaliser: tuple[float, ...]
    steps: int
    records: int
    sampled: int  # records in all the released batches together
    resumed_from: int | None

    def observed(self) -> dict[str, Any]:
        """The settings actually used: one value each, or the list when they changed mid-run."""

        def one(values: tuple[float, ...]) -> float | list[float]:
            return values[0] if len(values) == 1 else list(values)

        return {
            "noise_multiplier": one(self.noise_multiplier),
            "noise_std": one(self.noise_std),
            "clip": one(self.clip),
            "normaliser": one(self.normaliser),
            "steps": self.steps,
            "sample_rate": self.sampled / (self.records * self.steps) if self.steps else None,
            "resumed_from": self.resumed_from,
        }


def audited_dataset(
    fillers_x: Tensor, fillers_y: Tensor, included: np.ndarray
) -> tuple[Tensor, Tensor]:
    """Fillers followed by the canaries whose coin came up IN (labels cycle over the fillers')."""
    m = len(included)
    images = canary_images(m, tuple(fillers_x.shape[1:]))[torch.as_tensor(included)]
    labels = fillers_y[torch.arange(len(images)) % len(fillers_y)]
    return torch.cat([fillers_x.float(), images]), torch.cat([fillers_y, labels])


def canary_finetune(
    denoiser: Denoiser,
    fillers_x: Tensor,
    fillers_y: Tensor,
    *,
    m: int,
    canary_norm: float,
    coin_seed: int,
    cfg: FinetuneConfig,
    edm: EDMConfig,
    noise_multiplier: float,
    steps: int,
    expected_batch: float,
    noise: NoiseSource,
    seed: int,
    checkpoint_path: Path | None = None,
    interrupt_at: int | None = None,
    replay: NoiseSource | None = None,
    world: World = SINGLE_PROCESS,
    compute: Compute = FP32,
) -> CanaryRun:
    """Run :func:`easyhard.train.dp_finetune` on fillers + IN canaries and score the canaries.

    Everything after the data is the release's path: ``cfg`` (q, C, physical batch, engine, lr),
    ``noise_multiplier``, ``steps``, ``expected_batch`` and ``noise`` as the fine-tuning stage gives
    them. ``coin_seed`` decides the coin flips and the canaries' coordinates; ``seed`` is the public
    seed of the diffusion draws. With ``checkpoint_path`` and ``interrupt_at`` the run is cut after
    ``interrupt_at`` steps and resumed from its last checkpoint (``cfg.checkpoint_every``).
    ``world`` and ``compute`` are passed on as the fine-tuning stage passes its own; the data go
    to the denoiser's device.
    """
    rng = np.random.default_rng(coin_seed)
    included = rng.random(m) < 0.5
    x, y = audited_dataset(fillers_x.cpu(), fillers_y.cpu(), included)
    dev = next(denoiser.parameters()).device  # the fillers and canaries go where the model is
    x, y = x.to(dev), y.to(dev)
    prefix = "denoiser."  # the loss module DP-SGD differentiates holds the denoiser under this name
    shapes = {k: tuple(p.shape) for k, p in denoiser.named_parameters() if p.requires_grad}
    coords = Coordinates.spread(shapes, m, coin_seed + 1)
    hook = DiracCanaries(m, canary_norm * cfg.clip, coords, prefix)
    recorder = StepRecorder(coords, prefix, len(x), cfg.sample_rate, replay, interrupt_at)
    ckpt = None
    if checkpoint_path is not None:
        ckpt = Checkpointer(
            checkpoint_path,
            cfg.checkpoint_every,
            f"audit-{coin_seed}-{noise_multiplier}",
            "secure" if noise.private else "seeded",
        )
        ckpt.clear()
    state = {k: v.clone() for k, v in denoiser.state_dict().items()}
    kwargs = dict(
        cfg=cfg,
        edm=edm,
        noise_multiplier=noise_multiplier,
        steps=steps,
        expected_batch=expected_batch,
        noise=noise,
        seed=seed,
        progress=False,
        checkpoint=ckpt,
        world=world,
        compute=compute,
        per_example_hook=hook,
        observer=recorder,
    )
    resumed = None
    try:
        dp_finetune(denoiser, x, y, **kwargs)
    except _Interrupted:
        blob = ckpt.load() if ckpt is not None else None
        resumed = int(blob["step"]) if blob is not None else 0
        recorder.truncate(resumed)
        if blob is None:  # no checkpoint yet: the rerun starts from the initial model
            denoiser.load_state_dict(state)
        dp_finetune(denoiser, x, y, **kwargs)
    finally:
        if ckpt is not None:
            ckpt.clear()
    values = np.stack(recorder.values) if recorder.values else np.zeros((0, m))
    noise_mult, std, clip, norm = (
        tuple(sorted(set(s))) for s in zip(*recorder.settings, strict=True)
    )
    return CanaryRun(
        scores=values.sum(0),
        included=included,
        noise_multiplier=noise_mult,
        noise_std=std,
        clip=clip,
        normaliser=norm,
        steps=len(recorder.values),
        records=len(x),
        sampled=int(sum(recorder.batch_sizes)),
        resumed_from=resumed,
    )
