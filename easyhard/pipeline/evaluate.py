"""Stage ``evaluate``: one method's synthetic images against held-out real ones.

Evaluation touches held-out data only: FID and precision/recall against Inception features of the
held-out real test split, downstream classifiers trained on synthetic images and tested once on
that split, and the share of synthetic images the reader trained on that split (in the
``fid_reference`` stage) recognises as their class (:mod:`easyhard.recognition`); the release's
privacy: its own epsilon and the dataset's total.

Two files: ``runs/<method>/metrics.json`` (a DVC metric) holds only the numbers a reader compares
(:func:`headline`: epsilon, whether the release is private, FID, each classifier's accuracy and its
standard deviation over classifier seeds, the recognised share, rounded), so that
``dvc metrics show`` stays one readable line per method; ``runs/<method>/evaluate/details.json``
holds everything at full precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from easyhard.classifiers import utility
from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.fid import fid_from_features, inception_features, load_features, precision_recall
from easyhard.io import write_json
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import dataset_total, finite
from easyhard.pipeline.runtime import device
from easyhard.privacy import Ledger
from easyhard.recognition import load_reader, read

#: Decimals kept in ``metrics.json`` (``details.json`` keeps full precision).
DECIMALS = {"epsilon": 3, "fid": 1, "accuracy": 3}


def _round(value: float | None, key: str) -> float | None:
    return None if value is None else round(float(value), DECIMALS[key])


def headline(details: Mapping[str, Any], classifiers: Sequence[str]) -> dict[str, Any]:
    """The handful of numbers ``metrics.json`` keeps: ``epsilon`` (null for the non-private
    ceiling, which is not a release), ``private`` (false for the ceiling and for a run whose noise
    came from the public seed), ``fid``, and per classifier ``<c>`` (mean accuracy on the real
    test set) and ``<c>_sd`` (its standard deviation over the classifier seeds); ``recognised``
    (the share of synthetic images a reader trained on real ones labels as their class) when
    the details have it."""
    out = {
        "epsilon": _round(details["epsilon"], "epsilon"),
        "private": bool(details["private"] and not details["nonprivate"]),
        "fid": _round(details["fid"], "fid"),
    }
    for c in classifiers:
        out[c] = _round(details[f"{c}_acc_mean"], "accuracy")
        out[f"{c}_sd"] = _round(details[f"{c}_acc_std"], "accuracy")
    if details.get("recognised") is not None:
        out["recognised"] = _round(details["recognised"], "accuracy")
    return out


def run(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """FID / precision / recall vs held-out real test images; downstream accuracy on them too;
    the share of synthetic images the reader trained on them recognises; the release's privacy
    (its own epsilon, and the dataset's total so far). Writes ``details.json`` (everything) and
    ``metrics.json`` (:func:`headline`)."""
    synth = load_npz(paths.samples(method))
    test = load_npz(paths.test)
    real = load_features(paths.fid_real)
    # FID / precision / recall on a class-balanced subset (every k-th of the sorted labels)
    n_fid = min(params.evaluate.fid_count, len(synth))
    fid_idx = np.linspace(0, len(synth) - 1, n_fid).round().astype(int)
    fake = inception_features(
        synth.x[fid_idx], batch_size=params.evaluate.batch_size, device=device(params)
    )
    precision, recall = precision_recall(real, fake, k=5)
    # utility: each classifier trained on synthetic images only (epoch / C chosen on a synthetic
    # validation split), tested once on the real test set; mean +- std over the seeds
    summary, runs = utility(
        synth.x,
        synth.y,
        test.x,
        test.y,
        test.n_classes,
        classifiers=params.evaluate.classifiers,
        seeds=params.evaluate.classifier_seeds,
        epochs=params.evaluate.classifier_epochs,
        seed=params.seed,
        device=device(params),
    )
    write_json(paths.stage(method, "evaluate") / "classifiers.json", runs)
    # recognisability: the reader (a CNN trained on the public test split, fid_reference stage)
    # labels every synthetic image
    reader = read(*load_reader(paths.reader, device=device(params)), synth.x, synth.y)
    ledger = Ledger.load(paths.ledger(method))
    private_method = method_row(method).private  # False: the ceiling, epsilon = infinity
    by = ledger.to_dict()
    sgd = [m for m in ledger.mechanisms if m.name == "dp_sgd"]
    details = {
        "private": ledger.private,
        "nonprivate": not private_method,
        "epsilon": by["epsilon"] if private_method else None,
        "epsilon_rdp": by["epsilon_by_accountant"]["rdp"] if private_method else None,
        "target_epsilon": ledger.target_epsilon,
        "delta": ledger.delta,
        "noise_multiplier": sgd[0].noise_multiplier if sgd else None,
        "fid": fid_from_features(real, fake),
        "precision": precision,
        "recall": recall,
        **summary,  # <classifier>_acc_mean, <classifier>_acc_std
        **reader,  # recognised, recognised_by_class, reader_val_accuracy
        "classifier_seeds": params.evaluate.classifier_seeds,
        "synthetic_count": len(synth),
        "fid_count": n_fid,
        "fid_real_count": len(real),
        "dataset_epsilon": finite(dataset_total(params, paths).epsilon),
    }
    write_json(paths.stage(method, "evaluate") / "details.json", details)
    metrics = headline(details, params.evaluate.classifiers)
    write_json(paths.metrics(method), metrics)
    return {"metrics": metrics, "details": details, "classifier_runs": runs}
