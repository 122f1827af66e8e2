"""Data: loaders on generated files in the real on-disk formats, validation, deterministic split."""

import struct
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from easyhard.config import defaults
from easyhard.data import DataError, ImageSet, load_npz, sanitize, save_npz, split, validate
from easyhard.datasets import load_dataset, load_folder, load_torchvision

DEFAULTS = defaults()  # params.yaml: the only place defaults live


def test_mnist_offline_split_is_deterministic_and_keyed_per_record():
    ds = load_dataset(DEFAULTS.data)
    assert ds.x.shape == (5000, 1, 28, 28) and ds.n_classes == 10
    a_tr, a_te = split(ds, 0.2, seed=0)
    b_tr, b_te = split(ds, 0.2, seed=0)
    assert np.array_equal(a_tr.x, b_tr.x) and np.array_equal(a_te.y, b_te.y)
    assert len(a_tr) + len(a_te) == 5000
    assert abs(len(a_te) - 1000) < 4 * np.sqrt(5000 * 0.2 * 0.8)  # Bin(5000, 0.2)
    assert abs(len(a_tr) - DEFAULTS.privacy.dataset_size) <= 0.05 * 4000  # the declared N
    # train and test are disjoint: no test image appears in train
    tr = {a.tobytes() for a in a_tr.x}
    assert sum(a.tobytes() in tr for a in a_te.x) <= 2  # MNIST has a few exact duplicates at most
    c_tr, _ = split(ds, 0.2, seed=1)  # another public seed, another split
    assert not np.array_equal(a_tr.y, c_tr.y)


def _rows(ds: ImageSet) -> list[bytes]:
    return [x.tobytes() + bytes([int(y)]) for x, y in zip(ds.x, ds.y, strict=True)]


@pytest.mark.parametrize("where", [0, 777, 5000])
def test_neighbouring_sources_give_splits_that_differ_only_in_that_record(where):
    """Adding one record anywhere in the source moves no other record between the splits."""
    ds = load_dataset(replace(DEFAULTS.data, name="digits"))
    star = np.full((1, *ds.shape), 0.5, np.float32)
    at = min(where, len(ds))
    plus = ImageSet(
        np.concatenate([ds.x[:at], star, ds.x[at:]]),
        np.concatenate([ds.y[:at], [4], ds.y[at:]]),
        ds.classes,
    )
    for test_fraction in (0.2, 0.5):
        tr, te = split(ds, test_fraction, seed=0)
        tr2, te2 = split(plus, test_fraction, seed=0)
        star_row = star.tobytes() + bytes([4])
        for small, big in ((tr, tr2), (te, te2)):
            extra = list(_rows(big))
            if len(big) == len(small) + 1:
                assert star_row in extra
                extra.remove(star_row)
            assert extra == _rows(small)  # the same records, in the same order
        assert len(tr2) + len(te2) == len(plus)


def test_split_never_stops_for_the_data():
    """Tiny classes, an empty class, one record: the split assigns records, it never refuses."""
    x = np.random.default_rng(0).random((3, 1, 4, 4)).astype(np.float32)
    ds = ImageSet(x, np.array([0, 0, 2]), ("a", "b", "c"))  # class b has no record
    tr, te = split(ds, 0.2, seed=0)
    assert len(tr) + len(te) == 3
    one = ImageSet(x[:1], np.array([1]), ("a", "b"))
    assert sum(map(len, split(one, 0.9, seed=3))) == 1


def test_sanitize_repairs_records_one_by_one():
    x = np.zeros((4, 1, 2, 2), np.float32)
    x[1, 0, 0, 0], x[2, 0, 0, 0] = np.nan, 7.0
    ds = ImageSet(x, np.array([0, 1, 9, 1]), ("0", "1"))
    out, done = sanitize(ds)
    assert done == {"records_with_pixels_repaired": 2, "records_dropped_for_labels": 1}
    assert len(out) == 3 and out.x.min() >= 0 and out.x.max() <= 1
    assert out.x[1, 0, 0, 0] == 0.0  # NaN -> 0; record 2 (label 9) dropped
    with pytest.raises(DataError, match="NCHW"):
        sanitize(ImageSet(np.zeros((2, 4, 4), np.float32), np.array([0, 1]), ("0", "1")))


def test_npz_roundtrip(tmp_path):
    ds = load_dataset(replace(DEFAULTS.data, name="digits"))
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
        ("empty", "no images in any class folder"),
        ("mixed_size", "differs from the first image"),
        ("corrupt", "unreadable image"),
    ],
)
def test_folder_errors(tmp_path, setup, message):
    root = tmp_path / "imgs"
    if setup != "missing":
        root.mkdir()
    if setup == "empty":
        (root / "b").mkdir()
    if setup in ("mixed_size", "corrupt"):
        (root / "a").mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "0.png")
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


# ------------------------------------------- paper-scale datasets, generated in their real formats
def _write_idx_gz(path, arr, magic):
    """IDX compressed as distributed (train-images-idx3-ubyte.gz, ...)."""
    import gzip

    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def make_idx_gz(root, folder="MNIST", n_train=30, n_test=20, seed=0):
    """torchvision's raw folder holding only the four .gz archives."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28))
        labels = np.arange(n) % 10
        _write_idx_gz(raw / f"{part}-images-idx3-ubyte.gz", imgs, 2051)
        _write_idx_gz(raw / f"{part}-labels-idx1-ubyte.gz", labels, 2049)
        out[part] = (imgs, labels)
    return out


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_gz_archives_official_split(tmp_path, name, folder):
    from easyhard.datasets import load_official_split

    made = make_idx_gz(tmp_path, folder)
    cfg = replace(DEFAULTS.data, name=name, root=str(tmp_path), download=False, split="official")
    train, test = load_official_split(cfg)
    assert train.x.shape == (30, 1, 28, 28) and test.x.shape == (20, 1, 28, 28)
    assert np.allclose(train.x[7, 0] * 255, made["train"][0][7], atol=1e-3)
    assert test.y.tolist() == made["t10k"][1].tolist()
    if name == "fashion_mnist":
        assert train.classes[0] == "T-shirt/top"


def make_cifar10(root, n_per_batch=4, n_test=10, seed=0):
    """cifar-10-batches-py/ as torchvision extracts it: pickled dicts (str keys, as the original
    Python 2 pickles load), rows of 3072 uint8 (CHW)."""
    import pickle

    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name, n in [
        *((f"data_batch_{i}", n_per_batch) for i in range(1, 6)),
        ("test_batch", n_test),
    ]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        labels[:10] = list(range(min(n, 10)))[: len(labels[:10])]
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "filenames": ["x.png"] * n}, f)
        batches[name] = (data, labels)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f)
    return batches


def test_cifar10_pickle_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    # the generated files cannot match torchvision's md5 sums of the real archive
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    batches = make_cifar10(tmp_path)
    train = load_torchvision("cifar10", tmp_path, download=False, train=True)
    test = load_torchvision("cifar10", tmp_path, download=False, train=False)
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (10, 3, 32, 32)
    data, labels = batches["data_batch_2"]
    assert np.allclose(train.x[4] * 255, data[0].reshape(3, 32, 32), atol=1e-3)  # CHW rows
    assert train.y[4:8].tolist() == labels
    assert train.classes[9] == "truck"


ATTRS = ["5_o_Clock_Shadow", "Eyeglasses", "Male", "Smiling", "Young"]


def make_celeba(root, n=12, seed=0):
    """torchvision's CelebA layout: 178x218 aligned JPEGs, attribute and partition files."""
    d = root / "celeba"
    (d / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    male = np.array([i % 2 for i in range(n)])
    part = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2][:n])
    lines = [str(n), " ".join(ATTRS) + " "]
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        img = np.zeros((218, 178, 3), np.uint8)
        img[:, :] = (200, 30, 30)  # red bands above and below the centre square
        img[20:198] = (30, 200, 30) if male[i] else (30, 30, 200)
        Image.fromarray(img).save(d / "img_align_celeba" / name, quality=95)
        vals = [int(v) for v in rng.choice([-1, 1], len(ATTRS))]
        vals[ATTRS.index("Male")] = 1 if male[i] else -1
        lines.append(name + "".join(f" {v:2d}" for v in vals))
    (d / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (d / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(part))
    )
    return male, part


def test_celeba_male_32_centre_cropped(tmp_path):
    from easyhard.datasets import load_celeba, load_official_split

    male, part = make_celeba(tmp_path)
    ds = load_celeba(tmp_path, "Male", 32)
    assert ds.x.shape == (12, 3, 32, 32) and ds.classes == ("not_Male", "Male")
    assert ds.y.tolist() == male.tolist()
    # centre crop 178x178 drops the red bands; what is left is green (male) or blue (female)
    red = ds.x[:, 0].mean(axis=(1, 2))
    assert red.max() < 0.2
    assert np.all(ds.x[male == 1, 1].mean(axis=(1, 2)) > 0.7)
    train, test = load_official_split(
        replace(DEFAULTS.data, name="celeba", root=str(tmp_path), image_size=32, split="official")
    )
    assert len(train) == int((part == 0).sum()) and len(test) == int((part == 2).sum())
    with pytest.raises(DataError, match="attribute 'Bald' not in"):
        load_celeba(tmp_path, "Bald", 32)


def _patch(rng, tumor):
    img = rng.integers(0, 120, (96, 96, 3), dtype=np.uint8)
    if tumor:
        img[..., 0] = 250
    return img


def make_camelyon_zips(root, n=8, seed=0):
    """DPImageBench's train_32.zip / test_32.zip: PNGs plus dataset.json {"labels": [[path, y]]}."""
    import io
    import json
    import zipfile

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = {}
    for part in ("train", "test"):
        entries = []
        with zipfile.ZipFile(root / f"{part}_32.zip", "w") as z:
            for i in range(n):
                rel = f"{i // 4:05d}/img{i:08d}.png"
                buf = io.BytesIO()
                Image.fromarray(_patch(rng, i % 2)[:32, :32]).save(buf, format="PNG")
                z.writestr(rel, buf.getvalue())
                entries.append([rel, i % 2])
            z.writestr("dataset.json", json.dumps({"labels": entries}))
        labels[part] = [y for _, y in entries]
    return labels


def test_camelyon_dpimagebench_zips(tmp_path):
    from easyhard.datasets import load_camelyon, load_labelled, load_official_split

    labels = make_camelyon_zips(tmp_path / "cam")
    train, test = load_official_split(
        replace(
            DEFAULTS.data,
            name="camelyon",
            root=str(tmp_path / "cam"),
            image_size=32,
            split="official",
        )
    )
    assert train.x.shape == (8, 3, 32, 32) and train.classes == ("normal", "tumor")
    assert train.y.tolist() == labels["train"] and test.y.tolist() == labels["test"]
    assert np.all(train.x[train.y == 1, 0] > 0.95)  # tumor patches were drawn red
    assert len(load_camelyon(tmp_path / "cam", 32)) == 16  # random split: everything
    assert len(load_labelled(tmp_path / "cam" / "test_32.zip", 32)) == 8
    with pytest.raises(DataError, match="no test"):
        (tmp_path / "cam" / "test_32.zip").unlink()
        load_camelyon(tmp_path / "cam", 32, "test")


def make_wilds_camelyon(root, seed=0):
    """WILDS camelyon17_v1.0: metadata.csv + patches/patient_XXX_node_N/patch_..._x_X_y_Y.png."""
    rng = np.random.default_rng(seed)
    d = root / "camelyon17_v1.0"
    rows = ["idx,patient,node,x_coord,y_coord,tumor,slide,center,split"]
    centers = [0, 0, 3, 4, 1, 2, 2, 2]
    for i, c in enumerate(centers):
        patient, node, x, y, tumor = 4 + c, i % 5, 100 * i, 200 + i, i % 2
        folder = d / "patches" / f"patient_{patient:03d}_node_{node}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"patch_patient_{patient:03d}_node_{node}_x_{x}_y_{y}.png"
        Image.fromarray(_patch(rng, tumor)).save(folder / name)
        rows.append(f"{i},{patient},{node},{x},{y},{tumor},{c},{c},0")
    (d / "metadata.csv").write_text("\n".join(rows) + "\n")
    return np.array(centers)


def test_camelyon_wilds_layout_resized_and_split_by_hospital(tmp_path):
    from easyhard.datasets import load_official_split

    centers = make_wilds_camelyon(tmp_path)
    cfg = replace(
        DEFAULTS.data, name="camelyon", root=str(tmp_path), image_size=32, split="official"
    )
    train, test = load_official_split(cfg)
    assert train.x.shape == (int(np.isin(centers, [0, 3, 4]).sum()), 3, 32, 32)
    assert len(test) == int((centers == 2).sum())
    assert (
        len(
            load_dataset(replace(DEFAULTS.data, name="camelyon", root=str(tmp_path), image_size=32))
        )
        == 8
    )


def test_labelled_folder_and_bad_label_file(tmp_path):
    import json

    from easyhard.datasets import load_labelled

    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
            tmp_path / "a" / f"{i}.png"
        )
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": [[f"a/{i}.png", i % 2] for i in range(4)]})
    )
    ds = load_labelled(tmp_path, 16)
    assert ds.x.shape == (4, 3, 16, 16) and ds.y.tolist() == [0, 1, 0, 1]
    (tmp_path / "dataset.json").write_text('{"label": []}')
    with pytest.raises(DataError, match="dataset.json"):
        load_labelled(tmp_path, 16)


@pytest.mark.parametrize("name", ["../outside.png", "a/../../outside.png", "/etc/passwd"])
@pytest.mark.parametrize("as_zip", [False, True])
def test_label_file_names_must_stay_inside_the_data_root(tmp_path, name, as_zip):
    """A dataset.json naming a file outside the data folder is refused with one error line."""
    import json
    import zipfile

    from easyhard.datasets import load_labelled

    img = tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "0.png")
    labels = json.dumps({"labels": [["a/0.png", 0], [name, 1]]})
    (root / "dataset.json").write_text(labels)
    source = root
    if as_zip:
        source = tmp_path / "set.zip"
        with zipfile.ZipFile(source, "w") as z:
            z.write(root / "a" / "0.png", "a/0.png")
            z.writestr("dataset.json", labels)
    with pytest.raises(DataError) as e:
        load_labelled(source)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and repr(name) in message


def test_celeba_names_must_stay_inside_the_image_folder(tmp_path):
    from easyhard.datasets import load_celeba

    make_celeba(tmp_path, 6)
    attr = tmp_path / "celeba" / "list_attr_celeba.txt"
    lines = attr.read_text().split("\n")
    lines[2] = "../../secret.jpg" + lines[2][lines[2].index(" ") :]
    attr.write_text("\n".join(lines))
    (tmp_path / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="points outside the data folder"):
        load_celeba(tmp_path, "Male", 8)


def test_folder_resized_to_image_size(tmp_path):
    rng = np.random.default_rng(0)
    for cls, shape in (("a", (40, 30, 3)), ("b", (64, 64, 3))):
        (tmp_path / cls).mkdir()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / cls / "0.png")
    ds = load_dataset(replace(DEFAULTS.data, name="folder", root=str(tmp_path), image_size=32))
    assert ds.x.shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match="differs from the first"):
        load_dataset(replace(DEFAULTS.data, name="folder", root=str(tmp_path)))


def test_official_split_refused_for_datasets_without_one():
    from easyhard.schema import ConfigError

    with pytest.raises(ConfigError, match="data.split=official needs"):
        replace(DEFAULTS.data, name="folder", split="official")
