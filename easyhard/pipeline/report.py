"""Stage ``report``: every method side by side, and what the dataset has spent over every release.

Un-noised training diagnostics are not part of the DP release and stay out of the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.io import read_json, save_figure, write_json
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import dataset_total, finite
from easyhard.plots import comparison_bars, side_by_side


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Compare methods: a metrics table, bar charts, sample grids side by side, central images, and
    the privacy spent on the dataset by every release so far (``report/privacy.json``)."""
    metrics = {m: read_json(paths.metrics(m)) for m in params.methods}
    test = load_npz(paths.test)
    figs = {
        "metrics": comparison_bars(
            metrics,
            ["fid", *(f"{c}_acc_mean" for c in params.evaluate.classifiers), "epsilon"],
        ),
    }
    grids = {}
    for m in params.methods:
        s = load_npz(paths.samples(m))
        grids[m] = (s.x, s.y)
    figs["samples"] = side_by_side(grids, test.classes)
    central = {}
    for m in params.methods:
        with np.load(paths.central(m)) as f:
            if len(f["y"]):
                central[m] = (f["x"], f["y"])
    if central:
        figs["central_images"] = side_by_side(central, test.classes)
    saved = {
        name: save_figure(fig, paths.report / "figures" / f"{name}.png")
        for name, fig in figs.items()
    }
    write_json(paths.report / "summary.json", metrics)
    total = dataset_total(params, paths)
    privacy = {
        # every DP release private (the non-private ceiling is not a release)
        "private": not total.seeded
        and all(metrics[m].get("private", False) for m in params.methods if method_row(m).private),
        "dataset_epsilon": finite(total.epsilon),
        "dataset_epsilon_private_releases": total.epsilon_private,
        "dataset_releases": total.releases,
        "dataset_published_non_private_uses": total.non_private,
        "dataset_epsilon_infinite_because": list(total.reasons),
        "delta": params.privacy.delta,
        "accountant": params.privacy.accountant,
        **{f"{m}_epsilon": metrics[m]["epsilon"] for m in params.methods},
    }
    write_json(paths.report / "privacy.json", privacy)
    return {"metrics": metrics, "figures": saved, "privacy": privacy}
