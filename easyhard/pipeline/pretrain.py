"""Stage ``pretrain`` (easy stage, part 2): the EDM denoiser trained on the central images. A method
without the easy stage (DPDM) saves the freshly initialised network."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easyhard.checkpoint import Checkpointer, digest
from easyhard.config import Params, PretrainConfig
from easyhard.data import load_npz
from easyhard.edm import Denoiser
from easyhard.io import save_figure, write_json
from easyhard.modelfile import build_denoiser, save_model
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.runtime import compute_settings, device
from easyhard.plots import loss_figure
from easyhard.schema import to_dict
from easyhard.train import pretrain


def run(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Pretrain the EDM denoiser on the central images (non-private: they are already DP), with
    augmentation, then (FETA-Pro) ``frequency.pretrain_steps`` more steps on the auxiliary
    generator's images; a method without the easy stage keeps the fresh initialisation."""
    row = method_row(method)
    layout = load_npz(paths.test)  # public: only the image shape and class names are read
    torch.manual_seed(params.seed)
    den = build_denoiser(params.network, layout.shape, layout.n_classes, params.edm.sigma_data)
    den.to(device(params))
    curves: dict[str, list[dict[str, float]]] = {}
    # a warm-up the planner turned off (no signal at its share) wrote an empty image set
    central = row.central_images and _count(paths.central(method)) > 0
    frequency = row.frequency and _count(paths.frequency_images(method)) > 0
    if central:
        curves["central images"] = _phase(
            params, paths, method, den, paths.central(method), params.pretrain, "pretrain"
        )
    if frequency and params.frequency.pretrain_steps:
        cfg = replace(params.pretrain, steps=params.frequency.pretrain_steps)
        curves["generator images"] = _phase(
            params, paths, method, den, paths.frequency_images(method), cfg, "pretrain_frequency"
        )
    rows = [r for phase in curves.values() for r in phase]
    steps = params.pretrain.steps if central else 0
    if "generator images" in curves:
        steps += params.frequency.pretrain_steps
    save_model(
        paths.model(method, "pretrain"),
        den,
        params.network,
        layout.shape,
        extra={"method": method, "pretrain_steps": steps},
    )
    write_json(paths.history(method, "pretrain"), rows)
    out: dict[str, Any] = {"history": rows, "parameters": sum(p.numel() for p in den.parameters())}
    if rows:
        fig = loss_figure(curves, title="pretraining (warm-up on already-DP images)")
        out["figure"] = save_figure(fig, paths.figure(method, "pretrain", "loss"))
    return out


def _count(images: Path) -> int:
    """Number of images in a warm-up's (public) image file."""
    if not images.is_file():
        raise ValueError(f"no warm-up images at {images} (run the stage before first)")
    with np.load(images) as f:
        return len(f["y"])


def _phase(
    params: Params,
    paths: Paths,
    method: str,
    den: Denoiser,
    images: Path,
    cfg: PretrainConfig,
    tag: str,
) -> list[dict[str, float]]:
    """Train ``den`` on the labelled images in ``images`` for ``cfg.steps`` steps (crash-safe);
    ``den`` ends with the EMA weights. Returns the loss history."""
    dev = device(params)
    with np.load(images) as f:
        x = torch.as_tensor(f["x"], device=dev)
        y = torch.as_tensor(f["y"], device=dev)
    if len(x) == 0:
        raise ValueError(f"no images to pretrain on in {images} (run the stage before first)")
    ckpt = Checkpointer(
        paths.checkpoint(method, tag),
        cfg.checkpoint_every,
        digest(
            tag,
            method,
            params.seed,
            params.device,
            to_dict(cfg),
            to_dict(params.edm),
            to_dict(params.network),
            to_dict(params.compute),
            den.state_dict(),
            x,
            y,
        ),
        None,  # pretraining draws no DP noise (its images are already DP)
    )
    ema, hist = pretrain(
        den,
        x,
        y,
        cfg,
        params.edm,
        seed=params.seed,
        checkpoint=ckpt,
        compute=compute_settings(params),
    )
    den.load_state_dict(ema.model.state_dict())
    ckpt.clear()
    return hist.rows
