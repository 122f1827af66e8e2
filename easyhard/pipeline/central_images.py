"""Stage ``central`` (easy stage, part 1): the DP central images. A method without the easy stage
(DPDM) writes an empty image set and a ledger with nothing spent."""

from __future__ import annotations

from typing import Any

import numpy as np

from easyhard.central import query_central_images
from easyhard.config import Params
from easyhard.io import save_figure, savez
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import (
    NOT_PRIVATE,
    layout,
    new_ledger,
    noise_for,
    plan,
    record_nonprivate_use,
    record_release,
)
from easyhard.pipeline.zones import load_training
from easyhard.plots import grid_figure


def run(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Query the central images (methods with the easy stage); write images + ledger.

    The whole release is planned before the data is touched (an impossible budget split stops
    here, in one line); the query is recorded in the dataset's spend log after. The non-private
    ceiling computes the exact statistics (no noise), records that published non-private use and
    writes an empty ledger marked not private."""
    row = method_row(method)
    train = load_training(paths)  # private zone
    ledger = new_ledger(params)
    if not row.private:
        ledger.private = False
    out: dict[str, Any] = {"ledger": ledger}
    public = layout(params, paths)
    choice = row.warmup_plan(params, public).central
    out["plan"] = choice.summary()
    if row.central_images and choice.config is not None:
        cfg = choice.config  # planned from public values (central.plan), or as written
        mech = None
        if row.private:
            release = plan(params, row, public)  # the whole release: refuse before any query
            mech = next(m for m in release.warmups if m.name.startswith("central_images"))
            ledger.remaining_check(mech)
        ci = query_central_images(
            train.x,
            train.y,
            train.n_classes,
            cfg,
            noise_multiplier=mech.noise_multiplier if mech else 0.0,
            public_size=params.privacy.dataset_size,
            source=noise_for(params, "central"),
        )
        if mech is not None:
            ledger.add(mech)
            record_release(params, paths, method, "central", [mech])
        else:
            record_nonprivate_use(
                params, paths, method, "central", True, "exact central statistics, published"
            )
        out["scale"] = ci.scale
        x, y = ci.x, ci.y
        per_class = min(cfg.queries, 8)
        title = "DP central images" if mech else f"exact central statistics ({NOT_PRIVATE})"
        fig = grid_figure(x, y, train.classes, per_class, title=title)
        out["figure"] = save_figure(fig, paths.figure(method, "central", "central_images"))
    else:
        x = np.zeros((0, *train.shape), dtype=np.float32)
        y = np.zeros(0, dtype=np.int64)
    savez(paths.central(method), x=x, y=y, classes=np.asarray(train.classes))
    ledger.save(paths.central_ledger(method))
    out.update(x=x, y=y, classes=train.classes)
    return out
