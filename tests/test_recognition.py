"""The reader: trained on real digits, it recognises real digits and not mislabelled ones."""

from __future__ import annotations

import numpy as np
import pytest

from easyhard.recognition import load_reader, read, recognised, save_reader, train_reader


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, d.target, test_size=0.3, random_state=0, stratify=d.target)


def test_real_images_are_recognised_and_wrong_labels_are_not(digits):
    xtr, xte, ytr, yte = digits
    good = recognised(xtr, ytr, xte, yte, 10, epochs=6, seed=0, progress=False)
    assert good["recognised"] > 0.9 and good["reader_val_accuracy"] > 0.85
    assert len(good["recognised_by_class"]) == 10
    assert min(good["recognised_by_class"]) > 0.7
    # the same images sampled "for" the next class: the reader disagrees with the label
    bad = recognised(xtr, ytr, xte, (yte + 1) % 10, 10, epochs=6, seed=0, progress=False)
    assert bad["recognised"] < 0.1
    # noise images are recognised at about chance, never as well as digits
    noise = np.random.default_rng(0).random(xte.shape, dtype=np.float32)
    rnd = recognised(xtr, ytr, noise, yte, 10, epochs=6, seed=0, progress=False)
    assert rnd["recognised"] < 0.35


def test_per_class_share_and_missing_class(digits):
    xtr, xte, ytr, yte = digits
    keep = yte != 3
    res = recognised(xtr, ytr, xte[keep], yte[keep], 10, epochs=2, seed=1, progress=False)
    assert res["recognised_by_class"][3] is None
    counts = np.bincount(yte[keep], minlength=10)
    shares = [s if s is not None else 0.0 for s in res["recognised_by_class"]]
    assert np.isclose(np.dot(shares, counts) / counts.sum(), res["recognised"])


def test_deterministic_and_refuses_mismatched_labels(digits):
    xtr, xte, ytr, yte = digits
    kw = dict(n_classes=10, epochs=2, seed=2, progress=False)
    assert recognised(xtr[:300], ytr[:300], xte, yte, **kw) == recognised(
        xtr[:300], ytr[:300], xte, yte, **kw
    )
    with pytest.raises(ValueError, match="labels"):
        recognised(xtr, ytr, xte, yte[:-1], **kw)


def test_saved_reader_reads_like_the_trained_one_and_refuses_other_images(digits, tmp_path):
    xtr, xte, ytr, yte = digits
    model, meta = train_reader(xtr, ytr, 10, epochs=2, seed=3, progress=False)
    assert meta["image_shape"] == [1, 8, 8] and meta["n_classes"] == 10
    save_reader(tmp_path / "reader.pt", model, meta)
    first = (tmp_path / "reader.pt").read_bytes()
    save_reader(tmp_path / "reader.pt", model, meta)  # equal reader, equal bytes (DVC hashes it)
    assert (tmp_path / "reader.pt").read_bytes() == first
    loaded, meta2 = load_reader(tmp_path / "reader.pt")
    assert meta2 == meta
    assert read(loaded, meta2, xte, yte) == read(model, meta, xte, yte)
    # the pipeline's two steps give what one call gives
    assert read(model, meta, xte, yte) == recognised(
        xtr, ytr, xte, yte, 10, epochs=2, seed=3, progress=False
    )
    with pytest.raises(ValueError, match="differ from the reader"):
        read(model, meta, np.zeros((4, 1, 16, 16), np.float32), yte[:4])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        read(model, meta, xte[:4], np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="synthetic: 4 images but 3 labels"):
        read(model, meta, xte[:4], yte[:3])
    with pytest.raises(FileNotFoundError, match="fid_reference"):
        load_reader(tmp_path / "absent.pt")
