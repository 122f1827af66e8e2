"""The device and the speed-ups a stage runs with (bf16 / channels-last on CUDA only)."""

from __future__ import annotations

import torch

from easyhard.compute import Compute
from easyhard.compute import resolve as resolve_compute
from easyhard.config import Params


def device(params: Params) -> str:
    """``params.device``, refused with one line when CUDA is asked for but absent."""
    if params.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={params.device!r} requested but CUDA is not available")
    return params.device


def compute_settings(params: Params) -> Compute:
    """``params.compute`` resolved for ``params.device``."""
    return resolve_compute(device(params), params.compute)
