"""Downstream classifiers: accuracy on real digits, blind to test labels, every one reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import easyhard.classifiers as C


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, d.target, test_size=0.3, random_state=0, stratify=d.target)


def test_cnn_digits(digits):
    xtr, xte, ytr, yte = digits
    res = C.classifier_accuracy(xtr, ytr, xte, yte, 10, epochs=6, seed=0, progress=False)
    assert res["accuracy"] > 0.9
    assert 1 <= res["best_epoch"] <= 6 and 0.0 <= res["val_accuracy"] <= 1.0
    assert set(res) == {"accuracy", "val_accuracy", "best_epoch"}  # a result row, nothing else

    shuffled = np.random.default_rng(0).permutation(ytr)
    res = C.classifier_accuracy(xtr, shuffled, xte, yte, 10, epochs=3, seed=0, progress=False)
    assert res["accuracy"] < 0.3


def test_cnn_deterministic_and_blind_to_test_labels(digits):
    xtr, xte, ytr, yte = digits
    xtr, ytr = xtr[:300], ytr[:300]
    kw = dict(n_classes=10, epochs=3, seed=3, progress=False)
    state = torch.random.get_rng_state()
    a = C.classifier_accuracy(xtr, ytr, xte, yte, **kw)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    b = C.classifier_accuracy(xtr, ytr, xte, yte, **kw)
    assert a == b
    c = C.classifier_accuracy(xtr, ytr, xte, (yte + 1) % 10, **kw)
    assert (c["best_epoch"], c["val_accuracy"]) == (a["best_epoch"], a["val_accuracy"])
    assert c["accuracy"] != a["accuracy"]


def test_cnn_rgb_32():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((40, 3, 32, 32), dtype=np.float32))
    y = torch.from_numpy(np.arange(40) % 4)
    res = C.classifier_accuracy(x, y, x[:8], y[:8], 4, epochs=1, val_fraction=0.0, progress=False)
    assert res["best_epoch"] == 1 and np.isnan(res["val_accuracy"])
    with pytest.raises(ValueError):
        C.classifier_accuracy(x, y, x[:8, :1], y[:8], 4, epochs=1, progress=False)
    with pytest.raises(ValueError):
        C.classifier_accuracy(x, y + 4, x[:8], y[:8], 4, epochs=1, progress=False)


def test_logistic_regression_digits(digits):
    xtr, xte, ytr, yte = digits
    res = C.logistic_regression_accuracy(xtr, ytr, xte, yte, 10, progress=False)
    assert res["accuracy"] > 0.9 and res["best_C"] in (0.01, 0.1, 1.0)
    shuffled = np.random.default_rng(0).permutation(ytr)
    res = C.logistic_regression_accuracy(xtr, shuffled, xte, yte, 10, cs=(1.0,), progress=False)
    assert res["accuracy"] < 0.3


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 28, 28)])
def test_resnet_shapes(shape):
    net = C.build_classifier("resnet", *shape, n_classes=7)
    assert net(torch.zeros(2, *shape)).shape == (2, 7)
    with pytest.raises(ValueError, match="unknown classifier"):
        C.build_classifier("vit", *shape, n_classes=7)


def test_resnet_digits(digits):
    xtr, xte, ytr, yte = digits
    res = C.classifier_accuracy(
        xtr, ytr, xte, yte, 10, epochs=6, seed=0, progress=False, arch="resnet"
    )
    assert res["accuracy"] > 0.85 and 1 <= res["best_epoch"] <= 6


def test_utility_protocol(digits):
    """Every classifier, every seed, flat mean/std keys; selection never sees the test labels."""
    xtr, xte, ytr, yte = digits
    xtr, ytr = xtr[:300], ytr[:300]
    kw = dict(n_classes=10, seeds=2, epochs=2, seed=5, progress=False)
    summary, runs = C.utility(xtr, ytr, xte, yte, **kw)
    assert sorted(summary) == sorted(
        f"{c}_acc_{k}" for c in ("cnn", "resnet", "logreg") for k in ("mean", "std")
    )
    assert [(r["classifier"], r["seed"]) for r in runs] == [
        (c, s) for c in ("cnn", "resnet", "logreg") for s in (5, 6)
    ]
    for c in ("cnn", "resnet", "logreg"):
        accs = [r["accuracy"] for r in runs if r["classifier"] == c]
        assert summary[f"{c}_acc_mean"] == pytest.approx(np.mean(accs))
        assert summary[f"{c}_acc_std"] == pytest.approx(np.std(accs))
    # the test labels are used once, for scoring: permuting them changes nothing that was selected
    _, runs2 = C.utility(xtr, ytr, xte, (yte + 1) % 10, **kw)
    strip = [{k: v for k, v in r.items() if k != "accuracy"} for r in runs]
    assert strip == [{k: v for k, v in r.items() if k != "accuracy"} for r in runs2]
    only, _ = C.utility(xtr, ytr, xte, yte, classifiers=["logreg"], **kw)
    assert list(only) == ["logreg_acc_mean", "logreg_acc_std"]
    with pytest.raises(ValueError, match="classifiers"):
        C.utility(xtr, ytr, xte, yte, classifiers=["svm"], **kw)
