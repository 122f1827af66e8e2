"""Stage ``sample``: the labelled synthetic dataset, drawn from the fine-tuned model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from easyhard.compute import running
from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.edm import from_model
from easyhard.io import save_figure, savez
from easyhard.modelfile import load_model
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.runtime import compute_settings, device
from easyhard.plots import grid_figure
from easyhard.progress import progress_bar
from easyhard.samplers import network_calls, sample


def balanced_labels(count: int, n_classes: int) -> np.ndarray:
    """``count`` labels cycling through the classes, sorted (class sizes differ by at most 1)."""
    return np.sort(np.arange(count) % n_classes).astype(np.int64)


def run(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Draw ``sample.count`` class-balanced images with ``sample.sampler`` (post-processing of the
    DP model: no privacy cost). Only the class names and image shape are read from the data."""
    layout = load_npz(paths.test)  # public: only the image shape and class names are read
    den, _ = load_model(paths.model(method, "finetune"), device=device(params))
    cfg = params.sample
    labels = torch.as_tensor(balanced_labels(cfg.count, layout.n_classes))
    gen = torch.Generator().manual_seed(params.seed)
    chunks = []
    with running(den, compute_settings(params)):  # bf16 autocast / channels-last on CUDA
        for start in progress_bar(
            range(0, cfg.count, cfg.batch_size), desc=f"sampling (NFE={network_calls(cfg)})"
        ):
            lab = labels[start : start + cfg.batch_size]
            chunks.append(from_model(sample(den, lab, layout.shape, cfg, gen)).cpu())
    x = torch.cat(chunks).numpy()
    x8 = np.round(x * 255).astype(np.uint8)
    savez(paths.samples(method), x=x8, y=labels.numpy(), classes=np.asarray(layout.classes))
    fig = grid_figure(x, labels.numpy(), layout.classes, title=f"{method} synthetic samples")
    fig_path = save_figure(fig, paths.figure(method, "sample", "samples"))
    return {"x": x, "y": labels.numpy(), "figure": fig_path, "nfe": network_calls(cfg)}
