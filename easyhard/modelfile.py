"""Model files: the EMA denoiser plus everything needed to rebuild it (config, shape, classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from easyhard.config import NetworkConfig
from easyhard.edm import Denoiser
from easyhard.io import save_torch
from easyhard.networks import build_unet
from easyhard.schema import from_mapping, to_dict


def build_denoiser(
    network: NetworkConfig, image_shape: tuple[int, int, int], n_classes: int, sigma_data: float
) -> Denoiser:
    """A fresh (randomly initialised) EDM denoiser."""
    return Denoiser(build_unet(network, image_shape, n_classes), sigma_data, n_classes)


def save_model(
    path: str | Path,
    denoiser: Denoiser,
    network: NetworkConfig,
    image_shape: tuple[int, int, int],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the denoiser's weights and its construction arguments, atomically."""
    save_torch(
        path,
        {
            "state_dict": denoiser.state_dict(),
            "network": to_dict(network),
            "image_shape": list(image_shape),
            "n_classes": denoiser.n_classes,
            "sigma_data": denoiser.sigma_data,
            "extra": extra or {},
        },
    )


def load_model(path: str | Path, device: str = "cpu") -> tuple[Denoiser, dict[str, Any]]:
    """Rebuild a denoiser saved by :func:`save_model`; returns it (eval mode) and the file's dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    blob = torch.load(path, map_location=device, weights_only=True)
    network = from_mapping(NetworkConfig, blob["network"], prefix="network")
    den = build_denoiser(network, tuple(blob["image_shape"]), blob["n_classes"], blob["sigma_data"])
    den.load_state_dict(blob["state_dict"])
    return den.to(device).eval(), blob
