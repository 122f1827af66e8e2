"""Stage ``frequency`` (FETA-Pro's frequency warm-up): a DP release of per-class mean embeddings of
random Fourier features, and the auxiliary generator's images fitted to it (post-processing).

A method without the frequency warm-up passes its ledger through unchanged and writes an empty
image set. The release is planned before the data is touched and recorded in the spend log after.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from easyhard.auxgen import train_aux_generator
from easyhard.config import Params
from easyhard.frequency import MECHANISM_NAME, frequency_params, release_frequency_embedding
from easyhard.io import save_figure, savez
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import layout, noise_for, plan, record_release
from easyhard.pipeline.runtime import device
from easyhard.pipeline.zones import load_training
from easyhard.plots import grid_figure, loss_figure
from easyhard.privacy import Ledger


def run(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Release the noisy embedding, fit the generator, save its images and the ledger so far."""
    row = method_row(method)
    train = load_training(paths)  # private zone
    ledger = Ledger.load(paths.central_ledger(method))
    out: dict[str, Any] = {"ledger": ledger}
    x = np.zeros((0, *train.shape), dtype=np.float32)
    y = np.zeros(0, dtype=np.int64)
    public = layout(params, paths)
    choice = row.warmup_plan(params, public).frequency
    out["plan"] = choice.summary()
    if row.frequency and choice.config is not None:
        release = plan(params, row, public)  # the whole release fits: refuse before any query
        mech = next(m for m in release.warmups if m.name == MECHANISM_NAME)
        ledger.remaining_check(mech)
        fp = frequency_params(choice.config, params.privacy)
        release = release_frequency_embedding(
            train.x, train.y, train.n_classes, fp, noise_for(params, "frequency"), params.seed
        )
        ledger.add(release.mechanism)
        record_release(params, paths, method, "frequency", [release.mechanism])
        savez(
            paths.stage(method, "frequency") / "embedding.npz",
            embedding=release.embedding,
            frequencies=release.frequencies,
        )
        generator, losses = train_aux_generator(
            release, params.auxgen, seed=params.seed, device=device(params)
        )
        x, y = generator.generate(params.frequency.images_per_class, seed=params.seed)
        rows = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
        out["history"] = rows
        out["scale"] = {"normaliser": release.normaliser, "std": release.std}
        fig = grid_figure(x, y, train.classes, title="auxiliary generator (from the DP embedding)")
        out["figure"] = save_figure(fig, paths.figure(method, "frequency", "generator_images"))
        fig = loss_figure({"MMD to the released embedding": rows}, title="auxiliary generator")
        out["loss_figure"] = save_figure(fig, paths.figure(method, "frequency", "loss"))
    savez(paths.frequency_images(method), x=x, y=y, classes=np.asarray(train.classes))
    ledger.save(paths.frequency_ledger(method))
    out.update(x=x, y=y)
    return out
