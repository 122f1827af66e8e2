"""Stage ``central`` (easy stage, part 1): the DP central images. A method without the easy stage
(DPDM) writes an empty image set and a ledger with nothing spent."""

from __future__ import annotations

from typing import Any

import numpy as np

from easyhard.central import query_central_images
from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.io import save_figure, savez
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import check_dataset_size, new_ledger, noise_for, record_release
from easyhard.plots import grid_figure


def run(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Query the DP central images (methods with the easy stage); write images + ledger.

    The ledger entry is checked against the budget *before* the data is touched; the release is
    recorded in the dataset's spend log after."""
    train = load_npz(paths.train)
    check_dataset_size(params, len(train))
    ledger = new_ledger(params)
    out: dict[str, Any] = {"ledger": ledger}
    if method_row(method).central_images:
        cfg = params.central
        for mech in method_row(method).warmups(params):
            ledger.remaining_check(mech)  # refuse before touching the data
        ci = query_central_images(
            train.x,
            train.y,
            train.n_classes,
            cfg,
            public_size=params.privacy.dataset_size,
            source=noise_for(params, "central"),
        )
        ledger.add(ci.mechanism)
        record_release(params, paths, method, "central", [ci.mechanism])
        out["scale"] = ci.scale
        x, y = ci.x, ci.y
        per_class = min(cfg.queries, 8)
        fig = grid_figure(x, y, train.classes, per_class, title="DP central images")
        out["figure"] = save_figure(fig, paths.figure(method, "central", "central_images"))
    else:
        x = np.zeros((0, *train.shape), dtype=np.float32)
        y = np.zeros(0, dtype=np.int64)
    savez(paths.central(method), x=x, y=y, classes=np.asarray(train.classes))
    ledger.save(paths.central_ledger(method))
    out.update(x=x, y=y, classes=train.classes)
    return out
