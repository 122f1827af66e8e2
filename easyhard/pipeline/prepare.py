"""Stage ``prepare``: the sensitive training split and the held-out test split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from easyhard.config import Params
from easyhard.data import save_npz, split
from easyhard.datasets import load_dataset, load_official_split
from easyhard.io import save_figure
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import NOT_PRIVATE, check_dataset_size
from easyhard.plots import grid_figure


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Load the dataset, split it (sensitive train / held-out real test), save both.

    Stops (one line, nothing written) when the training split is far from the declared public
    size ``privacy.dataset_size``."""
    data_root = Path(params.data.root)
    if not data_root.is_absolute():  # relative to the repository, wherever the notebook runs
        data_root = paths.root / data_root
    cfg = replace(params.data, root=str(data_root))
    if cfg.split == "official":
        train, test = load_official_split(cfg)
    else:
        ds = load_dataset(cfg)
        train, test = split(ds, cfg.test_fraction, params.seed, cfg.max_per_class)
    check_dataset_size(params, len(train))
    save_npz(paths.train, train)
    save_npz(paths.test, test)
    fig = grid_figure(
        train.x,
        train.y,
        train.classes,
        title=f"real sensitive training images: local view only, {NOT_PRIVATE}",
    )
    return {
        "train": train,
        "test": test,
        "figure": save_figure(fig, paths.prepared / "train_grid.png"),
    }
