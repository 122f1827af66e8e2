"""``params.yaml`` sections of the model and its training: ``network``, ``edm``, ``pretrain``,
``finetune``, ``compute``."""

from __future__ import annotations

from dataclasses import dataclass

from easyhard.config.choices import GRAD_SAMPLERS, PRECISIONS
from easyhard.schema import (
    ConfigError,
    choice,
    in_half_open,
    in_half_open_zero,
    positive,
)


@dataclass(frozen=True)
class NetworkConfig:
    """A class-conditional diffusers ``UNet2DModel``; one entry of ``channels`` per resolution."""

    channels: tuple[int, ...]
    attention: tuple[bool, ...]
    layers_per_block: int
    norm_groups: int
    dropout: float

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.attention):
            raise ConfigError(
                f"network.channels ({len(self.channels)} levels) and network.attention "
                f"({len(self.attention)} levels) must have the same length"
            )
        for c in self.channels:
            positive("network.channels", c)
            if c % self.norm_groups:
                raise ConfigError(f"network.norm_groups={self.norm_groups} must divide channel {c}")
        positive("network.layers_per_block", self.layers_per_block)
        in_half_open_zero("network.dropout", self.dropout)


@dataclass(frozen=True)
class EDMConfig:
    """EDM (Karras et al. 2022) noise distribution, preconditioning and loss."""

    sigma_data: float
    p_mean: float
    p_std: float
    noise_multiplicity: int
    label_dropout: float

    def __post_init__(self) -> None:
        positive("edm.sigma_data", self.sigma_data)
        positive("edm.p_std", self.p_std)
        positive("edm.noise_multiplicity", self.noise_multiplicity)
        in_half_open_zero("edm.label_dropout", self.label_dropout)


@dataclass(frozen=True)
class PretrainConfig:
    """Non-private pretraining on the (already DP) central images, with augmentation."""

    steps: int
    batch_size: int
    lr: float
    ema_decay: float
    augment: bool
    log_every: int
    checkpoint_every: int

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"pretrain.steps must be >= 0, got {self.steps}")
        positive("pretrain.batch_size", self.batch_size)
        positive("pretrain.lr", self.lr)
        in_half_open_zero("pretrain.ema_decay", self.ema_decay)
        positive("pretrain.log_every", self.log_every)
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"pretrain.checkpoint_every must be >= 0, got {self.checkpoint_every}"
            )


@dataclass(frozen=True)
class FinetuneConfig:
    """DP-SGD fine-tuning on the sensitive images (Poisson sampling, per-example clipping).

    ``grad_sampler``: ``layerwise`` (per-example gradients from each layer's activations and output
    gradients, about the cost of non-private training) or ``vmap`` (``torch.func``, any layer type).
    ``processes``: data-parallel processes (``torchrun``) that share each logical batch.
    """

    sample_rate: float
    epochs: float
    clip: float
    lr: float
    physical_batch: int
    ema_decay: float
    log_every: int
    checkpoint_every: int
    grad_sampler: str
    processes: int

    def __post_init__(self) -> None:
        in_half_open("finetune.sample_rate", self.sample_rate)
        choice("finetune.grad_sampler", self.grad_sampler, GRAD_SAMPLERS)
        positive("finetune.processes", self.processes)
        positive("finetune.epochs", self.epochs)
        positive("finetune.clip", self.clip)
        positive("finetune.lr", self.lr)
        positive("finetune.physical_batch", self.physical_batch)
        in_half_open_zero("finetune.ema_decay", self.ema_decay)
        positive("finetune.log_every", self.log_every)
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"finetune.checkpoint_every must be >= 0, got {self.checkpoint_every}"
            )


@dataclass(frozen=True)
class ComputeConfig:
    """GPU speed-ups for pretraining and sampling (see :mod:`easyhard.compute`).

    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16`` (CUDA only).
    ``channels_last``: ``true``/``false``, or ``null`` for auto (on for CUDA, off on CPU).
    """

    precision: str
    channels_last: bool | None

    def __post_init__(self) -> None:
        choice("compute.precision", self.precision, PRECISIONS)
