"""Data: loaders on generated files in the real on-disk formats, validation, deterministic split."""

import struct

import numpy as np
import pytest
from PIL import Image

from easyhard.config import DataConfig
from easyhard.data import (
    DataError,
    ImageSet,
    load_dataset,
    load_folder,
    load_npz,
    load_torchvision,
    save_npz,
    split,
    validate,
)


def test_mnist_offline_split_is_deterministic_and_stratified():
    ds = load_dataset(DataConfig())
    assert ds.x.shape == (5000, 1, 28, 28) and ds.n_classes == 10
    a_tr, a_te = split(ds, 0.2, seed=0)
    b_tr, b_te = split(ds, 0.2, seed=0)
    assert np.array_equal(a_tr.x, b_tr.x) and np.array_equal(a_te.y, b_te.y)
    assert len(a_tr) == 4000 and len(a_te) == 1000
    assert np.bincount(a_te.y).tolist() == [100] * 10
    # train and test are disjoint: no test image appears in train
    tr = {a.tobytes() for a in a_tr.x}
    assert sum(a.tobytes() in tr for a in a_te.x) <= 2  # MNIST has a few exact duplicates at most


def test_npz_roundtrip(tmp_path):
    ds = load_dataset(DataConfig(name="digits"))
    save_npz(tmp_path / "d.npz", ds)
    back = load_npz(tmp_path / "d.npz")
    assert back.classes == ds.classes
    assert np.abs(back.x - ds.x).max() <= 0.5 / 255 + 1e-6


def _write_idx(path, arr, magic):
    """IDX as torchvision keeps it after download (the .gz archives extracted)."""
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in arr.shape:
            f.write(struct.pack(">I", d))
        f.write(arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_generated_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(20, 28, 28))
    labels = np.arange(20) % 10
    _write_idx(raw / "train-images-idx3-ubyte", imgs, 2051)
    _write_idx(raw / "train-labels-idx1-ubyte", labels, 2049)
    _write_idx(raw / "t10k-images-idx3-ubyte", imgs[:10], 2051)
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[:10], 2049)
    ds = load_torchvision("mnist", tmp_path, download=False)
    assert ds.x.shape == (20, 1, 28, 28)
    assert np.allclose(ds.x[3, 0] * 255, imgs[3], atol=1e-3)
    assert ds.y.tolist() == labels.tolist()


def test_torchvision_missing_without_download_is_clear(tmp_path):
    with pytest.raises(DataError, match="mnist: cannot load"):
        load_torchvision("mnist", tmp_path, download=False)


def test_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png"
            )
    ds = load_folder(tmp_path)
    assert ds.classes == ("cat", "dog") and ds.x.shape == (6, 3, 8, 8)
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "data folder not found"),
        ("no_classes", "no class sub-folders"),
        ("empty_class", "class folder has no images"),
        ("mixed_size", "differs from the first image"),
        ("corrupt", "unreadable image"),
    ],
)
def test_folder_errors(tmp_path, setup, message):
    root = tmp_path / "imgs"
    if setup != "missing":
        root.mkdir()
    if setup in ("empty_class", "mixed_size", "corrupt"):
        (root / "a").mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "0.png")
    if setup == "empty_class":
        (root / "b").mkdir()
    if setup == "mixed_size":
        Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "a" / "1.png")
    if setup == "corrupt":
        (root / "a" / "1.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=message):
        load_folder(root)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, y: (x.__setitem__((2, 0, 0, 0), np.nan), y), "image 2 has NaN or inf"),
        (lambda x, y: (x.__setitem__((1, 0, 0, 0), 1.5), y), "must lie in \\[0, 1\\]"),
        (lambda x, y: (x, y.__setitem__(3, 7)), "label 7 at index 3"),
        (lambda x, y: (x, y.__setitem__(slice(None), 0)), "class '1' has no images"),
    ],
)
def test_validation(mutate, message):
    x = np.zeros((6, 1, 4, 4), np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    mutate(x, y)
    with pytest.raises(DataError, match=message):
        validate(x, y, ("0", "1"))


def test_imageset_properties():
    s = ImageSet(np.zeros((4, 3, 5, 6), np.float32), np.array([0, 1, 2, 0]), ("a", "b", "c"))
    assert s.shape == (3, 5, 6) and s.n_classes == 3 and len(s) == 4


def test_label_count_mismatch_and_wrong_layout():
    with pytest.raises(DataError, match="5 images but 4 labels"):
        validate(np.zeros((5, 1, 4, 4), np.float32), np.zeros(4, np.int64), ("0",))
    with pytest.raises(DataError, match="1 or 3 channels"):
        validate(np.zeros((5, 2, 4, 4), np.float32), np.zeros(5, np.int64), ("0",))
    with pytest.raises(DataError, match="labels must be integers"):
        validate(np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.float32), ("0",))
