"""Stage ``fid_reference``: the public test split's references for every method's evaluation.

Two, both computed once from the held-out real test images (declared public): their Inception
features, the real side of every FID, and the *reader* (:mod:`easyhard.recognition`), the CNN
trained on them that labels each method's synthetic images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.fid import inception_features, save_features
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.runtime import device
from easyhard.recognition import save_reader, train_reader


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Inception features of a seeded subset of the held-out *test* images
    (``evaluate.fid_real_count``), and the reader trained on all of them
    (``evaluate.classifier_epochs``, the public seed). Returns ``count``, ``features`` and
    ``reader_val_accuracy``.

    Evaluation never looks at the sensitive training images: FID, precision and recall compare the
    synthetic images with the held-out test split, and the reader learns from it."""
    test = load_npz(paths.test)
    n = min(params.evaluate.fid_real_count, len(test))
    idx = np.sort(np.random.default_rng(params.seed).permutation(len(test))[:n])
    feats = inception_features(
        test.x[idx], batch_size=params.evaluate.batch_size, device=device(params)
    )
    save_features(paths.fid_real, feats)
    reader, meta = train_reader(
        test.x,
        test.y,
        test.n_classes,
        epochs=params.evaluate.classifier_epochs,
        seed=params.seed,
        device=device(params),
    )
    save_reader(paths.reader, reader, meta)
    return {"count": n, "features": feats, "reader_val_accuracy": meta["reader_val_accuracy"]}
