"""Mixed precision (bf16 autocast) and ``channels_last`` memory format for GPU runs.

Both are off on CPU. ``compute.precision`` / ``compute.channels_last`` in ``params.yaml`` choose;
:func:`resolve` turns them into a :class:`Compute` for one device, and the helpers below apply it:

* :func:`autocast` wraps forward passes (and the loss): matmuls and convolutions run in bf16,
  parameters, gradients and optimizer state stay fp32;
* :func:`prepare_model` / :func:`prepare_input` switch model and image batches to channels-last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from easyhard.config import ComputeConfig
from easyhard.schema import ConfigError


@dataclass(frozen=True)
class Compute:
    """Resolved settings for one device: autocast dtype (``None`` = fp32) and memory format."""

    device: str = "cpu"
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"


FP32 = Compute()


def resolve(device: str, cfg: ComputeConfig) -> Compute:
    """``auto`` becomes bf16 + channels-last on CUDA and fp32 + contiguous on CPU."""
    cuda = torch.device(device).type == "cuda"
    if cfg.precision == "bf16" and not cuda:
        raise ConfigError(f"compute.precision=bf16 needs a CUDA device, got {device!r}")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda)
    if bf16 and cuda and not torch.cuda.is_bf16_supported():
        if cfg.precision == "bf16":
            raise ConfigError(f"compute.precision=bf16: {device} does not support bfloat16")
        bf16 = False  # auto on an old GPU: stay fp32
    channels_last = cuda if cfg.channels_last is None else cfg.channels_last
    return Compute(device, torch.bfloat16 if bf16 else None, channels_last)


def autocast(compute: Compute) -> contextlib.AbstractContextManager:
    """Context for forward passes: ``torch.autocast`` in bf16, or nothing for fp32."""
    if compute.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=compute.device_type, dtype=compute.dtype)


def prepare_model(model: nn.Module, compute: Compute) -> nn.Module:
    """Move ``model``'s 4-d weights to channels-last when enabled (in place; returns it)."""
    if compute.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: Tensor, compute: Compute) -> Tensor:
    """An NCHW batch in the memory format the model expects."""
    if compute.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def running(model: nn.Module, compute: Compute) -> Iterator[nn.Module]:
    """Channels-last model and autocast for the duration of the block (e.g. sampling)."""
    prepare_model(model, compute)
    with autocast(compute):
        yield model


def describe(compute: Compute) -> str:
    """One line for logs and notebooks."""
    fmt = "channels_last" if compute.channels_last else "contiguous"
    return f"{compute.device}: {compute.precision}, {fmt}"
