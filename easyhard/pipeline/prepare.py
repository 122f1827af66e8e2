"""Stage ``prepare`` (private zone): the sensitive training split and the held-out test split.

Writes the training split into the private zone (``private/prepared/train.npz``), the held-out test
split (declared public: evaluation only) and the keyed fingerprint of the training split that the
stages reading it depend on (``data/prepared/``, public). Nothing here stops for the data: records
with bad pixels are repaired and records with an unknown label dropped, one by one
(:func:`easyhard.data.sanitize`); a size far from the declared ``privacy.dataset_size`` is a
warning in this stage's private notebook.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from easyhard.config import Params
from easyhard.data import sanitize, save_npz, split, validate
from easyhard.datasets import load_dataset, load_official_split
from easyhard.io import save_figure, write_json
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import NOT_PRIVATE, size_warning, training_fingerprint
from easyhard.plots import grid_figure


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Load the dataset, split it by each record's keyed hash (sensitive train / held-out test),
    save both and the training split's keyed fingerprint. Returns private diagnostics too (this
    stage's notebook is in the private zone)."""
    data_root = Path(params.data.root)
    if not data_root.is_absolute():  # relative to the repository, wherever the notebook runs
        data_root = paths.root / data_root
    cfg = replace(params.data, root=str(data_root))
    if cfg.split == "official":
        train, test = load_official_split(cfg)
        train, repairs = sanitize(train)
    else:
        source, repairs = sanitize(load_dataset(cfg))
        train, test = split(source, cfg.test_fraction, cfg.split_seed, cfg.max_per_class)
    validate(test.x, test.y, test.classes, what="held-out test split (public)", every_class=False)
    save_npz(paths.train, train)
    save_npz(paths.test, test)
    write_json(paths.fingerprint, {"training_split": training_fingerprint(params, paths)})
    fig = grid_figure(
        train.x,
        train.y,
        train.classes,
        title=f"real sensitive training images: local view only, {NOT_PRIVATE}",
    )
    return {
        "train": train,
        "test": test,
        "repairs": repairs,
        "size_warning": size_warning(params, len(train)),
        "figure": save_figure(fig, paths.private / "prepared" / "train_grid.png"),
    }
