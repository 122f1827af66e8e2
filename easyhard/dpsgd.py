"""DP-SGD with noise multiplicity (Dockhorn et al. 2022; Abadi et al. 2016).

One logical step on a Poisson batch ``B`` (each record kept with probability ``q``):

1. per example ``i``, the gradient ``g_i`` of its loss averaged over K noise draws
   (one gradient per *example*, so the sensitivity is still one clipped gradient);
2. clip: ``g_i * min(1, C / ||g_i||)``;
3. sum over the batch, processed in physical chunks (virtual batches) so memory stays bounded;
4. add Gaussian noise ``N(0, (noise_multiplier * C)^2)`` once per logical batch;
5. divide by the *expected* batch size ``q * N`` (a public constant, never the realised ``|B|``).

Per-example gradients come from ``torch.func`` (``vmap`` of ``grad``): exact for every layer type, no
hooks, no silent skips. Poisson batches come from opacus' ``UniformWithReplacementSampler``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap

# loss_fn(model, params_and_buffers, x, y, draws_i) -> scalar loss of ONE example
ExampleLoss = Callable[..., Tensor]


def poisson_batches(
    n: int, sample_rate: float, steps: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """``steps`` Poisson batches of indices into ``range(n)`` (opacus' sampler; sizes ~ Bin(n, q))."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(
        num_samples=n, sample_rate=sample_rate, generator=generator, steps=steps
    )
    for idx in sampler:
        yield torch.as_tensor(idx, dtype=torch.long)


def expected_batch_size(n: int, sample_rate: float) -> float:
    """The public normaliser q * N of the noisy gradient sum."""
    return sample_rate * n


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """Detached trainable parameters by name."""
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def per_example_grads(
    model: nn.Module, example_loss: ExampleLoss, *batch: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    """Gradient (keyed by parameter) and value of ``example_loss`` for each example of ``batch``.

    ``example_loss(model, params, *example)`` must compute the loss of one example from its slices
    (with whatever K-fold noise averaging it does inside) via ``functional_call(model, params, ...)``.
    """
    params = trainable(model)
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_of(p: dict[str, Tensor], *example: Tensor) -> Tensor:
        return example_loss(model, {**p, **buffers}, *example)

    in_dims = (None,) + (0,) * len(batch)
    return vmap(grad_and_value(loss_of), in_dims=in_dims, randomness="different")(params, *batch)


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

    The caller runs ``optimizer.step()`` afterwards; ``noise_generator`` makes the noise reproducible.
    """

    def __init__(
        self,
        model: nn.Module,
        example_loss: ExampleLoss,
        noise_multiplier: float,
        clip: float,
        expected_batch: float,
        physical_batch: int,
        noise_generator: torch.Generator,
    ) -> None:
        if noise_multiplier < 0 or clip <= 0 or expected_batch <= 0 or physical_batch <= 0:
            raise ValueError("DPSGD: noise_multiplier >= 0, clip > 0, batch sizes > 0 required")
        self.model = model
        self.example_loss = example_loss
        self.noise_multiplier = noise_multiplier
        self.clip = clip
        self.expected_batch = expected_batch
        self.physical_batch = physical_batch
        self.noise_generator = noise_generator

    def noise_std(self) -> float:
        """Std of the Gaussian noise added to the clipped sum: noise_multiplier * C."""
        return self.noise_multiplier * self.clip

    def private_gradient(self, *batch: Tensor) -> tuple[dict[str, Tensor], StepStats]:
        """Noisy, normalised gradient of a logical batch (any size, including empty)."""
        params = trainable(self.model)
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        n = len(batch[0])
        norms_all, losses = [], []
        for start in range(0, n, self.physical_batch):
            chunk = tuple(t[start : start + self.physical_batch] for t in batch)
            grads, loss = per_example_grads(self.model, self.example_loss, *chunk)
            summed, norms = clipped_sum(grads, self.clip)
            for k in total:
                total[k] += summed[k]
            norms_all.append(norms)
            losses.append(loss.detach())
        std = self.noise_std()
        noisy = {
            k: (v + std * torch.randn(v.shape, generator=self.noise_generator).to(v))
            / self.expected_batch
            for k, v in total.items()
        }
        norms = torch.cat(norms_all) if norms_all else torch.zeros(0)
        stats = StepStats(
            batch_size=n,
            loss=float(torch.cat(losses).mean()) if n else float("nan"),
            grad_norm_mean=float(norms.mean()) if n else float("nan"),
            clipped_fraction=float((norms > self.clip).float().mean()) if n else float("nan"),
        )
        return noisy, stats

    def step_gradients(self, *batch: Tensor) -> StepStats:
        """Compute the private gradient and store it in each parameter's ``.grad``."""
        noisy, stats = self.private_gradient(*batch)
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                p.grad = noisy[name].to(p.dtype)
        return stats
