"""The public proxy the warm-up planner (:mod:`easyhard.warmup`) simulates its releases on.

scikit-learn's digits (public), or generated shapes when the sensitive source is those digits, so
that no plan is computed from the sensitive records. Each is resized to the run's public layout;
a release is simulated as the proxy's expected statistic plus Gaussian noise, through the central
stage's own clamp / histogram arg-max, upsampling and post-processing (``easyhard.central``), and
scored against the proxy's class means at full resolution.
"""

from __future__ import annotations

import functools

import numpy as np

from easyhard.central import bin_index, downsample, postprocess, upsample
from easyhard.frequency import feature_dim, image_features, rff_frequencies
from easyhard.layout import Layout

#: Noise draws per simulated release (common random numbers across candidates).
REPS = 4


#: The public proxy the planner simulates on, per sensitive source: scikit-learn's digits, except
#: when the source *is* those digits (then generated shapes, so the plan never looks at them).
PROXIES = ("digits", "shapes")


def proxy_name(data_name: str) -> str:
    """The proxy for sensitive source ``data_name``: ``shapes`` for ``digits``, else ``digits``."""
    return "shapes" if data_name == "digits" else "digits"


def generated_shapes(
    per_class: int = 180, size: int = 28, n_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """A public synthetic dataset: class ``k`` is one of 10 shapes (disc, ring, square, frame,
    cross, plus, two bars, triangle, diagonal, dot pair) with a random centre and size from a
    fixed public seed, in [0, 1] on a dark background. ``[N, 1, size, size]`` and labels."""
    rng = np.random.default_rng(12345)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1  # [-1, 1]
    xs, ys = [], []
    for k in range(n_classes):
        for _ in range(per_class):
            cx, cy = rng.uniform(-0.2, 0.2, 2)
            r = rng.uniform(0.35, 0.6)
            dx, dy = xx - cx, yy - cy
            dist, box = np.hypot(dx, dy), np.maximum(abs(dx), abs(dy))
            shape = [
                dist < r,
                abs(dist - r) < 0.12,
                box < r,
                abs(box - r) < 0.12,
                (abs(dx - dy) < 0.15) | (abs(dx + dy) < 0.15),
                ((abs(dx) < 0.12) | (abs(dy) < 0.12)) & (box < r),
                (abs(abs(dx) - r / 2) < 0.12) & (abs(dy) < r),
                (dy > -r) & (dy < r) & (abs(dx) < (dy + r) / 2),
                (abs(dx - dy) < 0.15) & (box < r),
                (np.hypot(dx - r / 2, dy) < 0.2) | (np.hypot(dx + r / 2, dy) < 0.2),
            ][k % 10]
            xs.append(shape.astype(np.float32) * rng.uniform(0.7, 1.0))
            ys.append(k)
    return np.stack(xs)[:, None], np.asarray(ys, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def proxy_images(layout: Layout, proxy: str = "digits") -> tuple[np.ndarray, np.ndarray]:
    """The public proxy (``digits``: scikit-learn's; ``shapes``: :func:`generated_shapes`) resized
    to ``layout``'s shape, channels repeated, labels folded into ``layout.n_classes`` classes
    (``y % K``; with more than 10 classes, the proxy's 10 repeat)."""
    import torch
    import torch.nn.functional as F

    if proxy == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x0, y0 = d.images[:, None] / 16.0, d.target
    elif proxy == "shapes":
        x0, y0 = generated_shapes()
    else:
        raise ValueError(f"unknown proxy {proxy!r}; choose one of {', '.join(PROXIES)}")
    k = layout.n_classes
    if k > 10:  # each class gets a proxy class (repeating), not an empty one
        reps = -(-k // 10)
        x0, y0 = np.concatenate([x0] * reps), np.concatenate([y0 + 10 * i for i in range(reps)])
    x = torch.as_tensor(x0, dtype=torch.float32)
    c, h, w = layout.shape
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.repeat(1, c, 1, 1).numpy()
    return x, (np.asarray(y0) % k).astype(np.int64)


def proxy_split(
    layout: Layout, proxy: str = "digits", n_test: int = 360, seed: int = 2024
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The proxy split by a fixed public seed into training and ``n_test`` held-out images:
    ``(x_train, y_train, x_test, y_test)``. What the CPU-budget and sampler benchmarks tune on."""
    x, y = proxy_images(layout, proxy)
    if not 0 < n_test < len(x):
        raise ValueError(f"n_test must be in (0, {len(x)}), got {n_test}")
    order = np.random.default_rng(seed).permutation(len(x))
    te, tr = order[:n_test], order[n_test:]
    return x[tr], y[tr], x[te], y[te]


def augmented_digits(
    per_class: int, size: int = 28, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A public proxy at a sensitive source's scale: ``per_class`` images per class drawn from
    scikit-learn's digits (resized to ``size``) with a random affine each (rotation within 12
    degrees, scale 0.65-0.8, shift within 2 pixels; public ``seed``). ``[N, 1, size, size]`` in
    [0, 1] and labels. For studies that need the default's N (4,000): the digits have 1,797."""
    import torch
    import torch.nn.functional as F

    x0, y0 = proxy_images(Layout(10, (1, size, size)), "digits")
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y0 == k), per_class) for k in range(10)])
    n = len(idx)
    angle = np.deg2rad(rng.uniform(-12.0, 12.0, n))
    scale = rng.uniform(0.65, 0.8, n)  # the digit in a ~20-pixel box, as MNIST has it
    shift = rng.uniform(-2.0, 2.0, (n, 2)) * 2.0 / size  # pixels -> normalised coordinates
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack(
        [np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32), [n, 1, size, size], False)
    x = F.grid_sample(torch.as_tensor(x0[idx]), grid, align_corners=False).clamp(0, 1)
    return x.numpy().astype(np.float32), y0[idx].astype(np.int64)


def _class_means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    return np.stack(
        [x[y == i].mean(0) if np.any(y == i) else np.zeros(x.shape[1:]) for i in range(k)]
    )


def contrast(means: np.ndarray) -> float:
    """RMS over classes and pixels of (class mean - mean of the class means)."""
    return float(np.sqrt(np.mean((means - means.mean(0, keepdims=True)) ** 2)))


@functools.lru_cache(maxsize=64)
def _proxy_stats(
    layout: Layout, factor: int, bins: int, proxy: str = "digits"
) -> tuple[np.ndarray, ...]:
    x, y = proxy_images(layout, proxy)
    k = layout.n_classes
    xd = downsample(x, factor)
    hist = np.zeros((k, *xd.shape[1:], bins))
    idx = bin_index(xd, bins)  # the stage's own binning
    for i in range(k):
        sel = idx[y == i]
        for b in range(bins):
            hist[i, ..., b] = (sel == b).mean(0) if len(sel) else 0.0
    return _class_means(x, y, k), _class_means(xd, y, k), hist


#: Noise stds (pixel units) at which the proxy's SNR is simulated, log-spaced.
STD_GRID = tuple(float(v) for v in np.geomspace(1e-3, 4.0, 37))


def release_errors(
    layout: Layout,
    kind: str,
    factor: int,
    bins: int,
    post: str,
    stds: tuple[float, ...],
    proxy: str = "digits",
) -> np.ndarray:
    """RMSE on the proxy between released central images (per-pixel noise std ``stds[i]``) and the
    true class means at full resolution, through the stage's own clamp / mode, upsampling and
    post-processing; one value per std (all simulated in one batch)."""
    full, mean_d, hist = _proxy_stats(layout, factor, bins, proxy)
    rng = np.random.default_rng(0)  # public and fixed: the same draws for every candidate
    std = np.asarray(stds, dtype=np.float32).reshape(-1, 1, *([1] * mean_d.ndim))
    if kind == "mean":
        z = rng.standard_normal((1, REPS, *mean_d.shape), dtype=np.float32)
        low = np.clip(mean_d[None, None] + std * z, 0, 1)
    else:
        z = rng.standard_normal((1, REPS, *hist.shape), dtype=np.float32)
        std = std[..., None]
        low = (np.argmax(hist[None, None] + std * z, -1) + 0.5) / bins
    low = low.reshape(-1, *mean_d.shape[1:]).astype(np.float32)
    img = postprocess(upsample(low, layout.shape[1:]), post)
    img = img.reshape(len(stds), REPS, *full.shape)
    return np.sqrt(np.mean((img - full[None, None]) ** 2, axis=(1, 2, 3, 4, 5)))


@functools.lru_cache(maxsize=64)
def snr_curve(
    layout: Layout, kind: str, factor: int, bins: int, post: str, proxy: str
) -> np.ndarray:
    full = _proxy_stats(layout, factor, bins, proxy)[0]
    errs = release_errors(layout, kind, factor, bins, post, (0.0, *STD_GRID), proxy)
    return contrast(full) / np.maximum(errs, 1e-12)


def central_snr(
    layout: Layout,
    kind: str,
    factor: int,
    bins: int,
    post: str,
    std: float,
    proxy: str = "digits",
) -> float:
    """Predicted SNR of one released central image at per-pixel noise std ``std``."""
    full = _proxy_stats(layout, factor, bins, proxy)[0]
    err = release_errors(layout, kind, factor, bins, post, (std,), proxy)[0]
    return contrast(full) / max(float(err), 1e-12)


@functools.lru_cache(maxsize=16)
def frequency_signal(
    layout: Layout, features: int, lengthscale: float, factor: int, seed: int, proxy: str
) -> float:
    import torch

    x, y = proxy_images(layout, proxy)
    w = rff_frequencies(feature_dim(layout.shape, factor), features, lengthscale, seed)
    phi = image_features(torch.as_tensor(x), torch.as_tensor(w, dtype=torch.float32), factor)
    means = _class_means(phi.numpy().astype(np.float64), y, layout.n_classes)
    gaps = np.linalg.norm(means - means.mean(0, keepdims=True), axis=1)
    return float(np.sqrt(np.mean(gaps**2)))
