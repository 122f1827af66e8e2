"""What the warm-up planner may know of a dataset before any record is read: its public layout
(number of classes and image shape), from a table of the named datasets or, for a ``folder``
source, from the held-out split (declared public)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from easyhard.config import DataConfig
from easyhard.data import DataError, load_npz


@dataclass(frozen=True)
class Layout:
    """What the planner may know of a dataset before any record is read: class count and shape."""

    n_classes: int
    shape: tuple[int, int, int]  # (C, H, W)


#: Public layouts of the named datasets (``data.image_size`` replaces H and W when set).
PUBLIC_LAYOUTS = {
    "mnist_offline": Layout(10, (1, 28, 28)),
    "digits": Layout(10, (1, 8, 8)),
    "mnist": Layout(10, (1, 28, 28)),
    "fashion_mnist": Layout(10, (1, 28, 28)),
    "cifar10": Layout(10, (3, 32, 32)),
    "celeba": Layout(2, (3, 218, 178)),  # as stored (aligned crops); profiles resize to 32
    "camelyon": Layout(2, (3, 96, 96)),
}


def public_layout(cfg: DataConfig, test_split: str | Path | None = None) -> Layout:
    """The layout the warm-up planner uses: the named dataset's public layout, or (``folder``)
    the class names and shape of the held-out split, declared public (``data/prepared/test.npz``,
    written by the prepare stage)."""
    if cfg.name in PUBLIC_LAYOUTS:
        layout = PUBLIC_LAYOUTS[cfg.name]
        if cfg.image_size is not None:
            layout = Layout(layout.n_classes, (layout.shape[0], cfg.image_size, cfg.image_size))
        return layout
    if test_split is None or not Path(test_split).is_file():
        raise DataError(
            f"data.name={cfg.name}: the warm-up planner needs the public layout from the held-out "
            f"split {test_split}; run `dvc repro prepare` first"
        )
    test = load_npz(test_split, every_class=False)
    return Layout(test.n_classes, test.shape)
