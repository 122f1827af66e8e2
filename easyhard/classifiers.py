"""Downstream utility: classifiers trained on synthetic images, tested once on real ones.

A small CNN, a small ResNet and multinomial logistic regression. Each is trained on the (synthetic)
training data only; its epoch (networks) or regularisation ``C`` (logistic regression) is chosen on
a validation split of that same synthetic data, and the chosen model is evaluated once on the real
test set. :func:`utility` runs every listed classifier over several seeds and reports mean and std.
Images are NCHW float arrays/tensors in [0, 1] with C in {1, 3}; labels are int64.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from easyhard.config import CLASSIFIERS
from easyhard.data import ArrayLike, as_numpy, nchw_images
from easyhard.progress import progress_bar


class SmallCNN(nn.Module):
    """Two conv blocks (conv-BN-ReLU-maxpool) and a two-layer head, for NCHW images."""

    def __init__(
        self, channels: int, height: int, width: int, n_classes: int, width_mult: int = 32
    ):
        super().__init__()
        c1, c2 = width_mult, 2 * width_mult
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = c2 * (height // 4) * (width // 4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, n_classes]."""
        return self.head(self.features(x))


class _ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class SmallResNet(nn.Module):
    """A small ResNet: a conv stem at full resolution, three residual blocks (widths w, 2w, 4w),
    each halving the resolution (28 -> 14 -> 7 -> 4; 32 -> 16 -> 8 -> 4), global average pooling and a
    linear head. Any image size, 1 or 3 channels; ~2.6 MFLOP per 28x28 image at w = 16."""

    def __init__(self, channels: int, n_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            _ResidualBlock(w, w, 2),
            _ResidualBlock(w, 2 * w, 2),
            _ResidualBlock(2 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, n_classes]."""
        return self.head(self.features(x))


NETWORKS = ("cnn", "resnet")


def build_classifier(
    arch: str, channels: int, height: int, width: int, n_classes: int
) -> nn.Module:
    """A fresh downstream network: ``"cnn"`` (:class:`SmallCNN`) or ``"resnet"`` (:class:`SmallResNet`)."""
    if arch == "cnn":
        return SmallCNN(channels, height, width, n_classes)
    if arch == "resnet":
        return SmallResNet(channels, n_classes)
    raise ValueError(f"unknown classifier network {arch!r}; choose one of {', '.join(NETWORKS)}")


def labelled_images(
    x: ArrayLike, y: ArrayLike, n_classes: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` as float32 NCHW in [0, 1] and int64, or a one-line ``ValueError``
    naming ``name`` (count mismatch, a label outside ``[0, n_classes)``, bad images)."""
    xa = nchw_images(x).astype(np.float32)
    ya = as_numpy(y).astype(np.int64).reshape(-1)
    if len(xa) != len(ya):
        raise ValueError(f"{name}: {len(xa)} images but {len(ya)} labels")
    if len(ya) and (ya.min() < 0 or ya.max() >= n_classes):
        raise ValueError(f"{name}: labels must lie in [0, {n_classes})")
    return xa, ya


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    return perm[n_val:], perm[:n_val]


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean()) if len(y) else 0.0


def train_classifier(
    train_x: ArrayLike,
    train_y: ArrayLike,
    n_classes: int,
    epochs: int = 20,
    seed: int = 0,
    val_fraction: float = 0.1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 128,
    lr: float = 1e-3,
    arch: str = "cnn",
) -> tuple[nn.Module, dict[str, float]]:
    """Train a network (``arch``: ``"cnn"`` or ``"resnet"``, see :func:`build_classifier`).

    The epoch is chosen by accuracy on a held-out ``val_fraction`` of the *training* data (last
    epoch if ``val_fraction == 0``); that checkpoint is returned, in eval mode, with
    ``{"val_accuracy", "best_epoch", "image_shape"}`` (epochs counted from 1; the CHW shape it
    takes). The global RNG is untouched.
    """
    tx, ty = labelled_images(train_x, train_y, n_classes, "train")
    tr_idx, va_idx = _split(len(tx), val_fraction, seed)
    dev = torch.device(device)
    xtr, ytr = torch.from_numpy(tx[tr_idx]).to(dev), torch.from_numpy(ty[tr_idx]).to(dev)
    xva, yva = tx[va_idx], ty[va_idx]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(arch, tx.shape[1], tx.shape[2], tx.shape[3], n_classes).to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_epoch, best_state = -1.0, 0, None
    bar = progress_bar(range(1, epochs + 1), desc=arch, disable=not progress, file=sys.stderr)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(xtr), generator=gen).to(dev)
        for s in range(0, len(xtr), batch_size):
            idx = order[s : s + batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        if len(va_idx):
            acc = _accuracy(model, xva, yva)
            bar.set_postfix(val_acc=f"{acc:.3f}")
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch
                best_state = copy.deepcopy(model.state_dict())
    if best_state is None:
        best_acc, best_epoch = float("nan"), epochs
    else:
        model.load_state_dict(best_state)
    model.eval()
    shape = [int(d) for d in tx.shape[1:]]
    return model, {"val_accuracy": best_acc, "best_epoch": best_epoch, "image_shape": shape}


def predict(model: nn.Module, x: ArrayLike, batch_size: int = 512) -> np.ndarray:
    """Class predictions (int64) of a trained classifier for NCHW images in [0, 1]."""
    xs = torch.from_numpy(nchw_images(x).astype(np.float32))
    dev = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(xs), batch_size):
            out.append(model(xs[s : s + batch_size].to(dev)).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def classifier_accuracy(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    n_classes: int,
    epochs: int = 20,
    seed: int = 0,
    val_fraction: float = 0.1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 128,
    lr: float = 1e-3,
    arch: str = "cnn",
) -> dict[str, float]:
    """Train a network (:func:`train_classifier`) on (synthetic) data, evaluate on real test data.

    The epoch is chosen by accuracy on a held-out ``val_fraction`` of the *training* data (last
    epoch if ``val_fraction == 0``); only that checkpoint is evaluated, once, on the test set.
    Returns ``{"accuracy", "val_accuracy", "best_epoch"}`` (epochs counted from 1).
    """
    tx, _ = labelled_images(train_x, train_y, n_classes, "train")
    ex, ey = labelled_images(test_x, test_y, n_classes, "test")
    if tx.shape[1:] != ex.shape[1:]:
        raise ValueError(f"train images {tx.shape[1:]} and test images {ex.shape[1:]} differ")
    model, info = train_classifier(
        tx,
        train_y,
        n_classes,
        epochs=epochs,
        seed=seed,
        val_fraction=val_fraction,
        device=device,
        progress=progress,
        batch_size=batch_size,
        lr=lr,
        arch=arch,
    )
    test_acc = _accuracy(model, ex, ey)
    return {
        "accuracy": test_acc,
        "val_accuracy": info["val_accuracy"],
        "best_epoch": info["best_epoch"],
    }


def logistic_regression_accuracy(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    n_classes: int,
    seed: int = 0,
    val_fraction: float = 0.1,
    cs: Sequence[float] = (0.01, 0.1, 1.0),
    max_iter: int = 500,
    progress: bool = True,
) -> dict[str, float]:
    """Multinomial logistic regression on flattened pixels; same contract as the CNN.

    The inverse regularisation ``C`` is chosen from ``cs`` by accuracy on a held-out split of the
    training data (the first ``C`` if ``val_fraction == 0``); that fitted model is evaluated once
    on the test set. Returns ``{"accuracy", "val_accuracy", "best_C"}``.
    """
    from sklearn.linear_model import LogisticRegression

    tx, ty = labelled_images(train_x, train_y, n_classes, "train")
    ex, ey = labelled_images(test_x, test_y, n_classes, "test")
    if tx.shape[1:] != ex.shape[1:]:
        raise ValueError(f"train images {tx.shape[1:]} and test images {ex.shape[1:]} differ")
    tr_idx, va_idx = _split(len(tx), val_fraction, seed)
    ftr, fva = tx[tr_idx].reshape(len(tr_idx), -1), tx[va_idx].reshape(len(va_idx), -1)
    grid = list(cs) if len(va_idx) else list(cs)[:1]
    best_acc, best_c, best_clf = -1.0, grid[0], None
    for c in progress_bar(grid, desc="logreg", disable=not progress, file=sys.stderr):
        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        clf.fit(ftr, ty[tr_idx])
        acc = float((clf.predict(fva) == ty[va_idx]).mean()) if len(va_idx) else float("nan")
        if best_clf is None or acc > best_acc:
            best_acc, best_c, best_clf = acc, c, clf
    test_acc = float((best_clf.predict(ex.reshape(len(ex), -1)) == ey).mean())
    return {"accuracy": test_acc, "val_accuracy": best_acc, "best_C": best_c}


def utility(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    n_classes: int,
    classifiers: Sequence[str] = CLASSIFIERS,
    seeds: int = 3,
    epochs: int = 15,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Downstream utility protocol.

    Every classifier in ``classifiers`` (``cnn``, ``resnet``: ``epochs`` epochs; ``logreg``) is
    trained on the (synthetic) training data once per seed ``seed, seed + 1, ...``; each seed draws
    its own synthetic validation split and initialisation, the epoch (networks) or ``C`` (logistic
    regression) is chosen on that synthetic split, and the chosen model is tested once on the (real)
    test data. Every listed classifier is reported, never only the best.

    Returns ``(summary, runs)``: ``summary`` has flat keys ``<name>_acc_mean`` and ``<name>_acc_std``
    (population std over the seeds); ``runs`` one row per (classifier, seed) with the test accuracy,
    the synthetic validation accuracy and what was selected.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown or not classifiers:
        raise ValueError(
            f"classifiers must be among {', '.join(CLASSIFIERS)}; got {list(classifiers)}"
        )
    summary: dict[str, float] = {}
    runs: list[dict[str, Any]] = []
    for name in classifiers:
        accs = []
        for s in range(seeds):
            if name == "logreg":
                res = logistic_regression_accuracy(
                    train_x, train_y, test_x, test_y, n_classes, seed=seed + s, progress=progress
                )
            else:
                res = classifier_accuracy(
                    train_x,
                    train_y,
                    test_x,
                    test_y,
                    n_classes,
                    epochs=epochs,
                    seed=seed + s,
                    device=device,
                    progress=progress,
                    arch=name,
                )
            accs.append(float(res["accuracy"]))
            runs.append({"classifier": name, "seed": seed + s, **res})
        summary[f"{name}_acc_mean"] = float(np.mean(accs))
        summary[f"{name}_acc_std"] = float(np.std(accs))
    return summary, runs
