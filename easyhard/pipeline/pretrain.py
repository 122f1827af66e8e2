"""Stage ``pretrain`` (easy stage, part 2): the EDM denoiser trained on the central images. A method
without the easy stage (DPDM) saves the freshly initialised network."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from easyhard.checkpoint import Checkpointer, digest
from easyhard.config import Params
from easyhard.data import load_npz
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
    augmentation; a method without the easy stage keeps the fresh initialisation."""
    train = load_npz(paths.train)
    torch.manual_seed(params.seed)
    den = build_denoiser(params.network, train.shape, train.n_classes, params.edm.sigma_data)
    dev = device(params)
    den.to(dev)
    rows: list[dict[str, float]] = []
    if method_row(method).central_images:
        with np.load(paths.central(method)) as f:
            cx = torch.as_tensor(f["x"], device=dev)
            cy = torch.as_tensor(f["y"], device=dev)
        if len(cx) == 0:
            raise ValueError("no central images to pretrain on (run the central stage first)")
        ckpt = Checkpointer(
            paths.checkpoint(method, "pretrain"),
            params.pretrain.checkpoint_every,
            digest(
                "pretrain",
                params.seed,
                to_dict(params.pretrain),
                to_dict(params.edm),
                den.state_dict(),
                cx,
                cy,
            ),
        )
        ema, hist = pretrain(
            den,
            cx,
            cy,
            params.pretrain,
            params.edm,
            seed=params.seed,
            checkpoint=ckpt,
            compute=compute_settings(params),
        )
        den.load_state_dict(ema.model.state_dict())
        rows = hist.rows
    save_model(
        paths.model(method, "pretrain"),
        den,
        params.network,
        train.shape,
        extra={"method": method, "pretrain_steps": params.pretrain.steps if rows else 0},
    )
    write_json(paths.history(method, "pretrain"), rows)
    paths.checkpoint(method, "pretrain").unlink(missing_ok=True)
    out: dict[str, Any] = {"history": rows, "parameters": sum(p.numel() for p in den.parameters())}
    if rows:
        fig = loss_figure({method: rows}, title="pretraining on central images")
        out["figure"] = save_figure(fig, paths.figure(method, "pretrain", "loss"))
    return out
