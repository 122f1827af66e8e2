"""DP-SGD with noise multiplicity (Dockhorn et al. 2022; Abadi et al. 2016).

One logical step on a Poisson batch ``B`` (each record kept with probability ``q``):

1. per example ``i``, the gradient ``g_i`` of its loss averaged over K noise draws
   (one gradient per *example*, so the sensitivity is still one clipped gradient);
2. clip: ``g_i * min(1, C / ||g_i||)``;
3. sum over the batch, processed in physical chunks (virtual batches) so memory stays bounded;
4. add Gaussian noise ``N(0, (noise_multiplier * C)^2)`` once per logical batch;
5. divide by the *expected* batch size ``q * N`` (a public constant, never the realised ``|B|``).

Per-example gradients come from one of two exact engines (``grad_sampler``):

* ``layerwise`` (default, :mod:`easyhard.grad_sample`): one forward/backward over the ``B * K`` rows
  with weight gradients switched off, then each layer's per-example gradient from its saved
  activations and output gradients, contracted over K and positions inside each example. Costs about
  what non-private training costs; memory ``B * P`` (not ``B * K * P``). Unsupported parametrised
  layers raise an error naming them.
* ``vmap``: ``torch.func`` ``vmap(grad)`` of the per-example loss, for any layer type (slower).

Both differentiate a *loss module*: an ``nn.Module`` whose ``forward(*batch)`` returns one loss per
example (shape ``[B]``). Poisson masks and the Gaussian noise come from a
:class:`~easyhard.privacy.randomness.NoiseSource` (secret by default, never the public seed), and
``q * N`` uses the declared dataset size N (``privacy.dataset_size``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from easyhard.config import GRAD_SAMPLERS
from easyhard.grad_sample import layerwise_grads
from easyhard.privacy.randomness import NoiseSource
from easyhard.world import SINGLE_PROCESS, World


def poisson_batches(
    n: int, sample_rate: float, steps: int, source: NoiseSource
) -> Iterator[Tensor]:
    """``steps`` Poisson batches of indices into ``range(n)``: each record is kept independently with
    probability ``sample_rate`` (sizes ~ Bin(n, q)); the masks come from ``source`` (secret)."""
    for _ in range(steps):
        yield torch.as_tensor(np.flatnonzero(source.bernoulli(n, sample_rate)), dtype=torch.long)


def expected_batch_size(public_size: int, sample_rate: float) -> float:
    """The public normaliser q * N of the noisy gradient sum (N declared, never ``len`` of data)."""
    return sample_rate * public_size


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """Detached trainable parameters by name."""
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def vmap_grads(loss_module: nn.Module, *batch: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Per-example gradients and losses via ``torch.func``: ``vmap`` over examples of ``grad``."""
    params = trainable(loss_module)
    buffers = {k: v.detach() for k, v in loss_module.named_buffers()}

    def loss_of(p: dict[str, Tensor], *example: Tensor) -> Tensor:
        one = tuple(t.unsqueeze(0) for t in example)
        return functional_call(loss_module, {**p, **buffers}, one)[0]

    in_dims = (None,) + (0,) * len(batch)
    return vmap(grad_and_value(loss_of), in_dims=in_dims, randomness="different")(params, *batch)


def per_example_grads(
    loss_module: nn.Module, *batch: Tensor, grad_sampler: str = "layerwise"
) -> tuple[dict[str, Tensor], Tensor]:
    """Gradient ``{name: [B, *shape]}`` and value ``[B]`` of each example's loss.

    ``loss_module(*batch)`` returns the ``[B]`` per-example losses (with whatever K-fold noise
    averaging it does inside); ``grad_sampler`` picks the engine (module docstring).
    """
    if grad_sampler == "layerwise":
        return layerwise_grads(loss_module, *batch)
    if grad_sampler == "vmap":
        return vmap_grads(loss_module, *batch)
    raise ValueError(f"grad_sampler must be one of {GRAD_SAMPLERS}, got {grad_sampler!r}")


def _summed_gradient(
    model: nn.Module, params: dict[str, Tensor], batch: tuple[Tensor, ...]
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Gradient of the summed per-example losses (unclipped sum), the losses, and NaN norms
    (per-example norms are not computed on this path)."""
    live = {k: p for k, p in model.named_parameters() if p.requires_grad}
    loss = model(*batch)
    grads = torch.autograd.grad(loss.sum(), list(live.values()), allow_unused=True)
    summed = {
        k: (g if g is not None else torch.zeros_like(params[k])).detach()
        for k, g in zip(live, grads, strict=True)
    }
    return summed, loss.detach(), torch.full((len(loss),), float("nan"), dtype=torch.float64)


def per_example_norms(grads: dict[str, Tensor]) -> Tensor:
    """L2 norm of each example's full gradient (all parameters together)."""
    sq = [g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()]
    return torch.stack(sq).sum(0).sqrt()


def clip_factors(norms: Tensor, clip: float) -> Tensor:
    """min(1, C / ||g_i||); a zero gradient keeps factor 1."""
    return (clip / norms.clamp_min(1e-12)).clamp(max=1.0)


def clipped_sum(grads: dict[str, Tensor], clip: float) -> tuple[dict[str, Tensor], Tensor]:
    """Sum over examples of clipped gradients, and the pre-clipping norms."""
    norms = per_example_norms(grads)
    f = clip_factors(norms, clip)
    summed = {k: torch.einsum("b,b...->...", f.to(g.dtype), g) for k, g in grads.items()}
    return summed, norms


@dataclass
class StepStats:
    """What one DP-SGD step saw: diagnostics computed from sensitive data *without* noise.

    They are logged for debugging (``finetune/loss.json``) and are not covered by the DP guarantee.
    """

    batch_size: int
    loss: float
    grad_norm_mean: float
    clipped_fraction: float


class DPSGD:
    """Computes the private gradient of one logical Poisson batch and writes it into ``p.grad``.

    ``model`` is the loss module (``forward(*batch) -> [B]`` per-example losses) whose trainable
    parameters are updated. The caller runs ``optimizer.step()`` afterwards. ``noise`` draws the
    Gaussian noise; on every rank of a ``world`` it must produce the same stream (one shared secret
    key, or the same seed in seeded mode).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        noise_multiplier: float,
        clip: float,
        expected_batch: float,
        physical_batch: int,
        noise: NoiseSource,
        grad_sampler: str = "layerwise",
        world: World = SINGLE_PROCESS,
    ) -> None:
        if grad_sampler not in GRAD_SAMPLERS:
            raise ValueError(f"grad_sampler must be one of {GRAD_SAMPLERS}, got {grad_sampler!r}")
        if noise_multiplier < 0 or clip <= 0 or expected_batch <= 0 or physical_batch <= 0:
            raise ValueError("DPSGD: noise_multiplier >= 0, clip > 0, batch sizes > 0 required")
        self.model = model
        self.grad_sampler = grad_sampler
        self.world = world
        self.noise_multiplier = noise_multiplier
        self.clip = clip
        self.expected_batch = expected_batch
        self.physical_batch = physical_batch
        self.noise = noise

    @property
    def plain(self) -> bool:
        """No clipping and no noise (the non-private ceiling): the sum of the per-example gradients
        is the ordinary gradient of the summed loss, so one backward pass gives it."""
        return math.isinf(self.clip) and self.noise_multiplier == 0

    def noise_std(self) -> float:
        """Std of the Gaussian noise added to the clipped sum: noise_multiplier * C (0 without
        noise: the non-private ceiling, where C may be infinite)."""
        return 0.0 if self.noise_multiplier == 0 else self.noise_multiplier * self.clip

    def private_gradient(self, *batch: Tensor) -> tuple[dict[str, Tensor], StepStats]:
        """Noisy, normalised gradient of a logical batch (any size, including empty).

        With a multi-process ``world`` every rank receives the same logical batch, processes its
        shard, and the clipped sums (with the diagnostics) are summed across ranks in one
        all-reduce. Every rank then adds the *same* noise draw (one shared noise stream): one
        Gaussian sample per logical batch, exactly as in a single process.
        """
        params = trainable(self.model)
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        n = len(batch[0])
        mine = self.world.shard(n)
        local = tuple(t[mine] for t in batch)
        # [examples, loss sum, norm sum, clipped count] of this rank's shard
        diag = torch.zeros(4, dtype=torch.float64)
        for start in range(0, len(local[0]), self.physical_batch):
            chunk = tuple(t[start : start + self.physical_batch] for t in local)
            if self.plain:
                summed, loss, norms = _summed_gradient(self.model, params, chunk)
            else:
                grads, loss = per_example_grads(self.model, *chunk, grad_sampler=self.grad_sampler)
                summed, norms = clipped_sum(grads, self.clip)
            for k in total:
                total[k] += summed[k]
            diag += torch.tensor(
                [
                    len(norms),
                    float(loss.sum()),
                    float(norms.sum()),
                    float((norms > self.clip).sum()),
                ],
                dtype=torch.float64,
            )
        self.world.all_reduce_sum([*total.values(), diag])
        std = self.noise_std()
        noisy = {
            k: (
                torch.from_numpy(self.noise.gaussian(v.double().cpu().numpy(), std)).to(v)
                if std
                else v
            )
            / self.expected_batch
            for k, v in total.items()
        }
        count, loss_sum, norm_sum, clipped = diag.tolist()
        nan = float("nan")
        stats = StepStats(
            batch_size=n,
            loss=loss_sum / count if count else nan,
            grad_norm_mean=norm_sum / count if count else nan,
            clipped_fraction=clipped / count if count else nan,
        )
        return noisy, stats

    def step_gradients(self, *batch: Tensor) -> StepStats:
        """Compute the private gradient and store it in each parameter's ``.grad``."""
        noisy, stats = self.private_gradient(*batch)
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                p.grad = noisy[name].to(p.dtype)
        return stats
