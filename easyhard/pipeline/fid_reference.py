"""Stage ``fid_reference``: Inception features of held-out real images, the real side of every FID."""

from __future__ import annotations

from typing import Any

import numpy as np

from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.fid import inception_features, save_features
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.runtime import device


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Inception features of held-out real *test* images, computed once and cached for every FID.

    Evaluation never looks at the sensitive training images: FID, precision and recall compare the
    synthetic images with the held-out test split."""
    test = load_npz(paths.test)
    n = min(params.evaluate.fid_real_count, len(test))
    idx = np.sort(np.random.default_rng(params.seed).permutation(len(test))[:n])
    feats = inception_features(
        test.x[idx], batch_size=params.evaluate.batch_size, device=device(params)
    )
    save_features(paths.fid_real, feats)
    return {"count": n, "features": feats}
