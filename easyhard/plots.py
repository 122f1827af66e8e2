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
    """Several labelled image sets as grids next to each other (e.g. each method's central images
    beside its samples), titled by their keys, a row per class named on the left of the first."""
    # each panel as wide as its fullest class (e.g. a few central images beside 8 samples)
    cols = [
        max(1, min(per_class, max((int(np.sum(y == k)) for k in range(len(classes))), default=1)))
        for _, y in grids.values()
    ]
    fig, axes = plt.subplots(
        1,
        len(grids),
        figsize=(0.4 * sum(cols) + 0.5 * len(grids), 0.4 * len(classes) + 0.8),
        gridspec_kw={"width_ratios": cols},
    )
    for i, (ax, (name, (x, y))) in enumerate(zip(np.atleast_1d(axes), grids.items(), strict=True)):
        img = grid_image(x, y, len(classes), cols[i])
        h = x.shape[2] + 1
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ticks = [1 + k * h + h / 2 - 1 for k in range(len(classes))]
        ax.set_yticks(ticks, list(classes) if i == 0 else [], fontsize=7)
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
    fig.tight_layout()
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


def comparison_bars(
    values: Mapping[str, Sequence[float | None]],
    errors: Mapping[str, Sequence[float | None]],
    methods: Sequence[str],
    titles: Mapping[str, str],
) -> Figure:
    """One bar chart per metric (``values[key]``: one value per method), error bars from
    ``errors[key]`` where given, titled by ``titles[key]`` (which says ↑ or ↓). A missing value
    (None) is an empty slot labelled "n/a"."""
    keys = list(values)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        raw = list(values[key])
        vals = [np.nan if v is None else float(v) for v in raw]
        err = errors.get(key)
        yerr = None if err is None else [0.0 if e is None else float(e) for e in err]
        bars = ax.bar(methods, vals, yerr=yerr, capsize=4, color=colors[: len(methods)])
        labels = ["n/a" if v is None else f"{v:.3g}" for v in raw]
        ax.bar_label(bars, labels=labels, fontsize=8, label_type="center")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.set_title(titles[key], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def quality_vs_epsilon_figure(
    rows: Sequence[Mapping[str, object]],
    classifiers: Sequence[str] = CLASSIFIERS,
    spread: str = "± over classifier seeds",
) -> Figure:
    """FID (left) and downstream accuracy (right, one line per classifier) against the target ε,
    one line per method, error bars = ``fid_std`` and ``<classifier>_sd`` (what they are over:
    ``spread``, shown in the titles); a method with no ε (the non-private ceiling) is a
    horizontal dashed line at its mean. ``rows``: :func:`easyhard.sweep.rows_from_exp_show` rows
    (``method``, ``target_epsilon``, ``epsilon``, ``fid``, ``<classifier>``, ``<classifier>_sd``)
    or the sweep's summary mapped onto those keys (:func:`easyhard.sweep.summary_figure`)."""
    methods = sorted({str(r["method"]) for r in rows})
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v"]
    for i, m in enumerate(methods):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: float(r["target_epsilon"]))
        c = colors[i % len(colors)]
        if all(r.get("epsilon") is None for r in rs):  # not private: no ε to plot against
            _ceiling_lines(ax_fid, ax_acc, rs, classifiers, c, m)
            continue
        eps = [float(r["target_epsilon"]) for r in rs]
        if any(r.get("fid") is not None for r in rs):
            ax_fid.errorbar(
                eps,
                [_num(r.get("fid")) for r in rs],
                yerr=[_num(r.get("fid_std"), 0.0) for r in rs],
                color=c,
                marker="o",
                capsize=3,
                label=m,
            )
        for j, name in enumerate(classifiers):
            if not any(r.get(name) is not None for r in rs):
                continue
            ax_acc.errorbar(
                eps,
                [_num(r.get(name)) for r in rs],
                yerr=[_num(r.get(f"{name}_sd"), 0.0) for r in rs],
                color=c,
                marker=markers[j % len(markers)],
                capsize=3,
                ls=["-", "--", ":"][j % 3],
                label=f"{m} {name}",
            )
    ax_fid.set_title(f"FID to held-out real images ↓\n({spread})", fontsize=9)
    ax_acc.set_title(f"accuracy on real test images ↑\n({spread})", fontsize=9)
    for ax, label in ((ax_fid, "FID ↓"), (ax_acc, "accuracy ↑")):
        ax.set_xscale("log")
        ax.set_xlabel("ε (target)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _num(value: object, missing: float = np.nan) -> float:
    return missing if value is None else float(value)  # type: ignore[arg-type]


def _ceiling_lines(ax_fid, ax_acc, rs, classifiers, color, name) -> None:  # noqa: ANN001
    """The non-private ceiling's means as horizontal dashed lines (it has no ε)."""
    fids = [_num(r.get("fid")) for r in rs]
    if fids:
        ax_fid.axhline(np.nanmean(fids), color=color, ls="--", label=f"{name} (not private)")
    for c in classifiers:
        accs = [_num(r.get(c)) for r in rs]
        if accs and not np.all(np.isnan(accs)):
            ax_acc.axhline(
                np.nanmean(accs), color=color, ls="--", lw=1, label=f"{name} {c} (not private)"
            )


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
