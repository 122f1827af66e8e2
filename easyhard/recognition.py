"""Recognisability: how many synthetic images a reader trained on real images assigns to their class.

The downstream protocol (:mod:`easyhard.classifiers`) trains on synthetic images and tests on real
ones. This is the other direction, the number behind "are the digits recognisable": a CNN, the
*reader*, is trained on the held-out real test split (declared public, docs/privacy.md), its epoch
chosen on a validation part of that split, and then labels every synthetic image; the recognised
fraction is the share it assigns to the class the image was sampled for (chance: 1 / classes).
Its input is public (the synthetic images, the public test split), so the number is post-processing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from easyhard.classifiers import predict, train_classifier
from easyhard.data import ArrayLike, as_numpy


def recognised(
    real_x: ArrayLike,
    real_y: ArrayLike,
    synth_x: ArrayLike,
    synth_y: ArrayLike,
    n_classes: int,
    epochs: int = 15,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the reader (a CNN) on real images, then label the synthetic ones. Returns
    ``recognised`` (share of synthetic images labelled as their class), ``recognised_by_class``
    (that share per class; ``None`` for a class with no synthetic image) and the reader's own
    ``reader_val_accuracy`` on a held-out part of the real images (how good a reader it is)."""
    sy = as_numpy(synth_y).astype(np.int64).reshape(-1)
    model, info = train_classifier(
        real_x, real_y, n_classes, epochs=epochs, seed=seed, device=device, progress=progress
    )
    labels = predict(model, synth_x)
    if len(labels) != len(sy):
        raise ValueError(f"synthetic: {len(labels)} images but {len(sy)} labels")
    hit = labels == sy
    by_class = [float(hit[sy == c].mean()) if (sy == c).any() else None for c in range(n_classes)]
    return {
        "recognised": float(hit.mean()) if len(hit) else float("nan"),
        "recognised_by_class": by_class,
        "reader_val_accuracy": float(info["val_accuracy"]),
    }
