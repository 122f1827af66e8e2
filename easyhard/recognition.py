"""Recognisability: the share of synthetic images that a reader trained on real ones calls right.

The downstream protocol (:mod:`easyhard.classifiers`) trains on synthetic images and tests on real
ones. This is the other direction, the number behind "are the digits recognisable": a CNN, the
*reader*, is trained on the held-out real test split (declared public, docs/privacy.md), its epoch
chosen on a validation part of that split, and then labels every synthetic image; the recognised
fraction is the share it assigns to the class the image was sampled for (chance: 1 / classes).
Its input is public (the synthetic images, the public test split), so the number is post-processing.

The reader is the same for every method, so the pipeline trains it once, in the ``fid_reference``
stage beside the split's Inception features (:func:`train_reader`, :func:`save_reader`), and each
``evaluate`` stage loads it (:func:`load_reader`) and reads its method's images (:func:`read`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from easyhard.classifiers import build_classifier, labelled_images, predict, train_classifier
from easyhard.data import ArrayLike
from easyhard.io import save_torch

#: The reader's network (:func:`easyhard.classifiers.build_classifier`).
ARCH = "cnn"


def train_reader(
    real_x: ArrayLike,
    real_y: ArrayLike,
    n_classes: int,
    epochs: int = 15,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the reader on real images; returns it (eval mode) and ``{"image_shape", "n_classes",
    "reader_val_accuracy"}`` (its accuracy on a held-out part of the real images: how good a
    reader it is)."""
    model, info = train_classifier(
        real_x, real_y, n_classes, epochs=epochs, seed=seed, device=device, progress=progress
    )
    meta = {
        "image_shape": list(info["image_shape"]),
        "n_classes": int(n_classes),
        "reader_val_accuracy": float(info["val_accuracy"]),
    }
    return model, meta


def save_reader(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write the reader's weights and :func:`train_reader`'s metadata, atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(path, {"state_dict": state, **meta})


def load_reader(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The reader saved by :func:`save_reader` (eval mode) and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reader file not found: {path} (run the fid_reference stage)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    c, h, w = blob["image_shape"]
    model = build_classifier(ARCH, c, h, w, blob["n_classes"])
    model.load_state_dict(blob["state_dict"])
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model.to(torch.device(device)).eval(), meta


def read(
    model: nn.Module, meta: dict[str, Any], synth_x: ArrayLike, synth_y: ArrayLike
) -> dict[str, Any]:
    """Label every synthetic image with the reader. Returns ``recognised`` (share labelled as
    their class), ``recognised_by_class`` (that share per class; ``None`` for a class with no
    synthetic image) and the reader's ``reader_val_accuracy``."""
    n_classes = int(meta["n_classes"])
    sx, sy = labelled_images(synth_x, synth_y, n_classes, "synthetic")
    if list(sx.shape[1:]) != list(meta["image_shape"]):
        raise ValueError(
            f"synthetic images {tuple(sx.shape[1:])} differ from the reader's "
            f"{tuple(meta['image_shape'])}"
        )
    hit = predict(model, sx) == sy
    by_class = [float(hit[sy == c].mean()) if (sy == c).any() else None for c in range(n_classes)]
    return {
        "recognised": float(hit.mean()) if len(hit) else float("nan"),
        "recognised_by_class": by_class,
        "reader_val_accuracy": float(meta["reader_val_accuracy"]),
    }


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
    """:func:`train_reader` on the real images, then :func:`read` the synthetic ones."""
    model, meta = train_reader(
        real_x, real_y, n_classes, epochs=epochs, seed=seed, device=device, progress=progress
    )
    return read(model, meta, synth_x, synth_y)
