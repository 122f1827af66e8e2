"""Figures: image grids per class, loss curves, and the method comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from easyhard.config import CLASSIFIERS


def grid_image(x: np.ndarray, y: np.ndarray, n_classes: int, per_class: int = 8) -> np.ndarray:
    """Tile images (NCHW in [0, 1]) into one HWC array: a row per class, ``per_class`` columns."""
    c, h, w = x.shape[1:]
    canvas = np.ones((n_classes * (h + 1) + 1, per_class * (w + 1) + 1, c), dtype=np.float32)
    for k in range(n_classes):
        idx = np.flatnonzero(y == k)[:per_class]
        for j, i in enumerate(idx):
            r, s = 1 + k * (h + 1), 1 + j * (w + 1)
            canvas[r : r + h, s : s + w] = x[i].transpose(1, 2, 0)
    return canvas


def grid_figure(
    x: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    per_class: int = 8,
    title: str = "",
) -> Figure:
    """A per-class image grid with class names on the left."""
    img = grid_image(x, y, len(classes), per_class)
    h = x.shape[2] + 1
    fig, ax = plt.subplots(figsize=(0.45 * per_class + 0.6, 0.45 * len(classes) + 0.4))
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([1 + k * h + h / 2 - 1 for k in range(len(classes))], list(classes), fontsize=7)
    ax.set_xticks([])
    ax.set_title(title, fontsize=9)
    for s in ax.spines.values():
        s.set_visible(False)
    return fig


def side_by_side(
    grids: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: Sequence[str], per_class: int = 8
) -> Figure:
    """Several labelled image sets as grids next to each other (e.g. DP-FETA vs DPDM samples)."""
    n = len(grids)
    fig, axes = plt.subplots(1, n, figsize=(n * (0.4 * per_class + 0.5), 0.4 * len(classes) + 0.6))
    for ax, (name, (x, y)) in zip(np.atleast_1d(axes), grids.items(), strict=True):
        img = grid_image(x, y, len(classes), per_class)
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    return fig


def loss_figure(curves: Mapping[str, Sequence[Mapping[str, float]]], title: str = "") -> Figure:
    """Loss against step, one line per named history (rows with ``step`` and ``loss``)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, rows in curves.items():
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("EDM loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return fig


def comparison_bars(metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> Figure:
    """One bar chart per metric key, a bar per method (a missing / null value, e.g. the non-private
    ceiling's epsilon, is shown as an empty slot labelled "inf")."""
    methods = list(metrics)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        raw = [metrics[m].get(key) for m in methods]
        vals = [np.nan if v is None else float(v) for v in raw]
        bars = ax.bar(methods, vals, color=colors[: len(methods)])
        labels = ["inf" if v is None and key.startswith("epsilon") else f"{v:.3g}" for v in raw]
        ax.bar_label(bars, labels=labels, fontsize=8)
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_title(key, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def quality_vs_epsilon_figure(
    rows: Sequence[Mapping[str, object]], classifiers: Sequence[str] = CLASSIFIERS
) -> Figure:
    """FID (left) and downstream accuracy (right, mean +- std per classifier) against the target ε,
    one line per method. ``rows``: dicts with ``method``, ``target_epsilon``, ``fid`` and
    ``<classifier>_acc_mean`` / ``_acc_std`` (see :func:`easyhard.sweep.collect`)."""
    methods = sorted({str(r["method"]) for r in rows})
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v"]
    for i, m in enumerate(methods):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: float(r["target_epsilon"]))
        eps = [float(r["target_epsilon"]) for r in rs]
        c = colors[i % len(colors)]
        if any("fid" in r for r in rs):
            ax_fid.plot(eps, [float(r.get("fid", np.nan)) for r in rs], "o-", color=c, label=m)
        for j, name in enumerate(classifiers):
            key = f"{name}_acc_mean"
            if not any(key in r for r in rs):
                continue
            mean = [float(r.get(key, np.nan)) for r in rs]
            std = [float(r.get(f"{name}_acc_std", 0.0)) for r in rs]
            ax_acc.errorbar(
                eps,
                mean,
                yerr=std,
                color=c,
                marker=markers[j % len(markers)],
                capsize=3,
                ls=["-", "--", ":"][j % 3],
                label=f"{m} {name}",
            )
    for ax, label in ((ax_fid, "FID ↓"), (ax_acc, "accuracy on real test ↑")):
        ax.set_xscale("log")
        ax.set_xlabel("ε (target)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def audit_figure(
    runs: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str = "",
    xlabel: str = "canary score (its coordinate summed over the released steps)",
) -> Figure:
    """One panel per run: histograms of the scores of IN and OUT records (overlap = no measurable
    leak). ``runs`` maps a panel title to ``(scores, included)``."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.2), squeeze=False)
    for ax, (name, (scores, included)) in zip(axes[0], runs.items(), strict=True):
        bins = np.histogram_bin_edges(scores, bins=40)
        ax.hist(scores[~included], bins=bins, alpha=0.6, label=f"OUT ({int((~included).sum())})")
        ax.hist(scores[included], bins=bins, alpha=0.6, label=f"IN ({int(included.sum())})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("records")
        ax.set_title(name, fontsize=9)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
