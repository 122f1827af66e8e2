"""Image sets: the in-memory form, validation, image files, a deterministic split, storage.

Images are float32 NCHW in [0, 1] in memory and uint8 NCHW on disk (``.npz`` with ``x``, ``y`` and
``classes``); labels are int64 in ``[0, n_classes)``. Class count and resolution come from the data.
Where datasets come from is :mod:`easyhard.datasets`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from easyhard.io import savez

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """The data is missing or malformed; the message names the file or index."""


ArrayLike = np.ndarray | torch.Tensor


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view of an array or (detached, CPU) tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def nchw_images(images: ArrayLike) -> np.ndarray:
    """``images`` as a numpy NCHW array with 1 or 3 channels (ValueError otherwise)."""
    x = as_numpy(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected NCHW images with C in {{1, 3}}, got shape {x.shape}")
    return x


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


def validate(
    x: np.ndarray,
    y: np.ndarray,
    classes: tuple[str, ...],
    what: str = "dataset",
    every_class: bool = True,
) -> None:
    """Raise :class:`DataError` on anything that would make training or evaluation wrong.

    For public data (the held-out split, synthetic images). The sensitive training split is never
    refused record by record (:func:`sanitize`); ``every_class=False`` lets one of its classes be
    empty."""
    if x.ndim != 4:
        raise DataError(f"{what}: images must be NCHW (4-d), got shape {x.shape}")
    if x.shape[1] not in (1, 3):
        raise DataError(f"{what}: images must have 1 or 3 channels, got {x.shape[1]}")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(x) == 0 and every_class:
        raise DataError(f"{what}: no images")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        raise DataError(f"{what}: image {int(np.argmin(finite))} has NaN or inf values")
    lo, hi = (float(x.min()), float(x.max())) if len(x) else (0.0, 1.0)
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
    if len(empty) and every_class:
        raise DataError(f"{what}: class {classes[int(empty[0])]!r} has no images")


def to_float(x: np.ndarray, max_value: float) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) / max_value).clip(0.0, 1.0)


def fit_image(arr: np.ndarray, size: int | None) -> np.ndarray:
    """Centre-crop an HW or HWC uint8 image to a square and resize it (Lanczos) to ``size``."""
    if size is None or arr.shape[:2] == (size, size):
        return arr
    from PIL import Image

    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    im = Image.fromarray(arr[top : top + s, left : left + s])
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS))


def decode_image(source: str | Path | IO[bytes], name: str, size: int | None) -> np.ndarray:
    """Read one image file (path or open file) as uint8 CHW, grey or RGB, resized to ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            im.load()
            mode = "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            arr = np.asarray(im.convert(mode))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{name}: unreadable image ({e})") from e
    arr = fit_image(arr, size)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def stack_images(images: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Stack CHW uint8 images into float NCHW, naming the first whose shape differs."""
    shape = images[0].shape
    for arr, name in zip(images, names, strict=True):
        if arr.shape != shape:
            raise DataError(
                f"{name}: shape {tuple(arr.shape)} (C,H,W) differs from the first image's {shape}"
            )
    return to_float(np.stack(images), 255.0)


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, :data:`IMAGE_SUFFIXES`), sorted by path."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def load_image_files(folder: str | Path, image_size: int | None = None) -> np.ndarray:
    """Every image under ``folder`` (no labels) as float32 NCHW in [0, 1]; all the same shape."""
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise DataError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) found in folder {folder}")
    return stack_images(
        [decode_image(f, str(f), image_size) for f in files], [str(f) for f in files]
    )


def images_from_array(x: np.ndarray, source: str) -> np.ndarray:
    """An ``x`` array of images as NCHW float32 in [0, 1].

    Layout: [N,H,W] is grey; a 4-D array is NCHW if axis 1 has size 1 or 3, else NHWC if the last
    axis has size 1 or 3. Integer dtypes are 0..255 and divided by 255; floats must lie in [0, 1].
    """
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{source}: 'x' must be [N,H,W] or 4-D, got shape {x.shape}")
    if x.shape[1] not in (1, 3):
        if x.shape[-1] not in (1, 3):
            raise DataError(f"{source}: cannot find a channel axis of size 1 or 3 in {x.shape}")
        x = x.transpose(0, 3, 1, 2)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{source}: integer images must lie in 0..255")
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{source}: unsupported dtype {x.dtype}")
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise DataError(f"{source}: float images must lie in [0, 1] (got {x.min()}..{x.max()})")
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def load_images(path: str | Path) -> np.ndarray:
    """Unlabelled images as NCHW float32 in [0, 1]: a folder (:func:`load_image_files`) or an
    ``.npz`` with an ``x`` array (:func:`images_from_array`)."""
    p = Path(path)
    if p.is_dir():
        return load_image_files(p)
    if p.is_file() and p.suffix.lower() == ".npz":
        with np.load(p) as data:
            if "x" not in data:
                raise DataError(f"{p} has no 'x' array (keys: {sorted(data.keys())})")
            return images_from_array(data["x"], str(p))
    if not p.exists():
        raise DataError(f"{p} does not exist")
    raise DataError(f"{p} is neither an image folder nor an .npz file")


def record_hashes(ds: ImageSet, seed: int) -> np.ndarray:
    """One 64-bit keyed hash per record, a function of that record alone (its pixels as stored,
    8-bit, its label) and the public ``seed``: uniform in [0, 1) after dividing by 2^64."""
    key = int(seed).to_bytes(8, "little", signed=True)
    x8 = np.round(np.clip(np.nan_to_num(ds.x, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    out = np.empty(len(ds), dtype=np.uint64)
    for i in range(len(ds)):
        h = hashlib.blake2b(x8[i].tobytes(), digest_size=8, key=key, person=b"easyhard-split")
        h.update(int(ds.y[i]).to_bytes(8, "little", signed=True))
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def split(
    ds: ImageSet, test_fraction: float, seed: int, max_per_class: int | None = None
) -> tuple[ImageSet, ImageSet]:
    """Split into (sensitive train, held-out real test), each record by its own keyed hash.

    Record ``i`` goes to the test split when ``h_i / 2^64 < test_fraction``, with ``h_i`` =
    :func:`record_hashes` (the public seed as key): adding or removing one record of the source
    moves no other record between the splits, and the split never stops for the data's size or
    class counts (a class may end up with no training image; the mechanisms handle that). Both
    splits keep the source order. ``max_per_class`` caps the training images per class, keeping the
    smallest hashes (a development option: with it set, one added record can displace one other).
    """
    u = record_hashes(ds, seed).astype(np.float64) / 2.0**64
    test = u < test_fraction
    tr = np.flatnonzero(~test)
    if max_per_class:
        order = tr[np.argsort(u[tr], kind="stable")]
        keep = np.concatenate(
            [order[ds.y[order] == c][:max_per_class] for c in range(ds.n_classes)]
        )
        tr = np.sort(keep)
    te = np.flatnonzero(test)
    return (
        ImageSet(ds.x[tr], ds.y[tr], ds.classes),
        ImageSet(ds.x[te], ds.y[te], ds.classes),
    )


def sanitize(ds: ImageSet) -> tuple[ImageSet, dict[str, int]]:
    """Make every record of a *sensitive* source usable without stopping the run.

    A check that stops for one dataset and not for its neighbour is an exact (epsilon = infinity)
    release, so record-level problems are repaired record by record: pixels are clipped to [0, 1]
    (NaN -> 0, +-inf -> the nearest bound) and records with a label outside the classes are
    dropped. Returns the repaired set and the counts of what was done (private: an exact statistic
    of the data, for the private log only). Format problems of the whole source (not NCHW, wrong
    channel count, non-integer labels) still raise :class:`DataError`."""
    x, y = ds.x, ds.y
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) != len(y):
        validate(x, y, ds.classes, what="sensitive source")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"sensitive source: labels must be integers, got {y.dtype}")
    bad_pixels = int((~np.isfinite(x) | (x < 0) | (x > 1)).reshape(len(x), -1).any(1).sum())
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0).astype(np.float32)
    ok = (y >= 0) & (y < len(ds.classes))
    return ImageSet(x[ok], y[ok], ds.classes), {
        "records_with_pixels_repaired": bad_pixels,
        "records_dropped_for_labels": int((~ok).sum()),
    }


def save_npz(path: str | Path, ds: ImageSet) -> None:
    """Store as uint8 NCHW, atomically (temp file + rename)."""
    x8 = np.round(ds.x * 255.0).astype(np.uint8)
    savez(path, x=x8, y=ds.y, classes=np.asarray(ds.classes))


def load_npz(path: str | Path, every_class: bool = True) -> ImageSet:
    """Read an ``.npz`` written by :func:`save_npz` (or any with ``x`` in [0,1] or uint8, and ``y``).

    ``every_class=False`` for the sensitive training split, where a class may be empty."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    with np.load(path, allow_pickle=False) as f:
        x, y = f["x"], f["y"].astype(np.int64)
        classes = tuple(str(c) for c in f["classes"]) if "classes" in f else None
    x = to_float(x, 255.0) if x.dtype == np.uint8 else x.astype(np.float32)
    classes = classes or tuple(str(i) for i in range(int(y.max()) + 1))
    validate(x, y, classes, what=str(path), every_class=every_class)
    return ImageSet(x, y, classes)
