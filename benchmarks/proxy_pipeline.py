"""The pipeline's methods end to end on a PUBLIC proxy at the default's scale, to choose defaults.

The default data has N = 4,000 training images; scikit-learn's digits (the public proxy of
``benchmarks/cpu_budget.py`` and the warm-up planner) have 1,797, so at the default epsilon their
releases carry 2-3x the noise per image and the planner turns FETA-Pro's frequency release off. This
benchmark writes ``--per-class`` (default 500) augmented digits per class as a class-per-folder
source (``easyhard.proxy.augmented_digits``: public images, public seed; ``--proxy glyphs``: font
glyphs distorted into sharper, handwriting-like strokes, ``easyhard.glyphs``), declares its N, and runs
every stage of each variant in this process on it (``data.name: folder``, the default 80/20 split,
``privacy.randomness: seeded``: public data, reproducible noise; ``--seeds`` repeats with new noise
and a new public seed each). No run output and no image of the default data is read.

A variant is ``METHOD`` or ``METHOD:key=value,key=value`` (params keys, e.g.
``fetapro:frequency.cap_fraction=0.25``). Prints per variant FID and each classifier's accuracy,
mean +- std over the seeds, writes ``--json``, and ends with one line
``easyhard proxy best=<variant by CNN accuracy> cnn=<its mean> fid=<its mean>``.

    python benchmarks/proxy_pipeline.py dpfeta fetapro fetapro:frequency.cap_fraction=0.25
    python benchmarks/proxy_pipeline.py --quick dpfeta fetapro      # smoke run, ~2 min
    python benchmarks/proxy_pipeline.py --sample-steps 10 20 dpfeta fetapro   # one model, 2 samplers
    python benchmarks/proxy_pipeline.py --guidance 1 2 dpfeta       # one model, 2 guidance scales
    python benchmarks/proxy_pipeline.py --proxy glyphs dpfeta fetapro   # handwriting-like glyphs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a script whether or not easyhard is installed
    sys.path.insert(0, str(ROOT))

from easyhard.config import Params, load_params  # noqa: E402
from easyhard.schema import from_mapping, merge, to_dict  # noqa: E402

QUICK = {
    "pretrain": {"steps": 10, "checkpoint_every": 0},
    "finetune": {"epochs": 0.1, "checkpoint_every": 0},
    "frequency": {"pretrain_steps": 5, "images_per_class": 8},
    "auxgen": {"steps": 5},
    "sample": {"count": 60, "steps": 3},
    "evaluate": {"fid_count": 30, "fid_real_count": 30, "classifier_epochs": 1},
}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``METHOD[:key=value,...]`` -> (method, nested overrides); values parsed as YAML."""
    method, _, rest = text.partition(":")
    over: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"variant {text!r}: expected key=value, got {item!r}")
        *head, last = key.split(".")
        node = over
        for h in head:
            node = node.setdefault(h, {})
        node[last] = yaml.safe_load(value)
    return method, over


#: The public proxy sources: scikit-learn's digits augmented (``easyhard.proxy.augmented_digits``)
#: or font glyphs distorted into handwriting-like strokes (``easyhard.glyphs.glyph_digits``).
SOURCES = ("digits", "glyphs")


def write_source(root: Path, per_class: int, seed: int, source: str = "digits") -> int:
    """The proxy ``source`` as PNG files ``root/<class>/<i>.png``; returns their number."""
    from PIL import Image

    if source == "digits":
        from easyhard.proxy import augmented_digits as make
    elif source == "glyphs":
        from easyhard.glyphs import glyph_digits as make
    else:
        raise ValueError(f"unknown proxy source {source!r}; choose one of {', '.join(SOURCES)}")
    x, y = make(per_class, seed=seed)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = root / str(label)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8), mode="L").save(d / f"{i}.png")
    return len(x)


def sample_settings(
    steps: list[int] | None = None, guidance: list[float] | None = None
) -> list[dict[str, Any]]:
    """The ``sample`` overrides to sample one trained model with: every (``sample.steps``,
    ``sample.guidance``) pair of the lists given (``[{}]``: the params' own settings)."""
    return [
        {k: v for k, v in (("steps", n), ("guidance", g)) if v is not None}
        for n in (steps or [None])
        for g in (guidance or [None])
    ]


def setting_label(name: str, setting: dict[str, Any]) -> str:
    """``VARIANT`` or ``VARIANT@steps=N,guidance=G`` (the keys a setting changes)."""
    if not setting:
        return name
    return name + "@" + ",".join(f"{k}={v:g}" for k, v in setting.items())


def run_variant(
    base: dict[str, Any],
    method: str,
    over: dict[str, Any],
    paths: Any,
    settings: list[dict[str, Any]] | None = None,
) -> list[dict]:
    """Every stage of ``method`` under ``base`` + ``over``; returns its ``details.json``. With
    ``settings`` (:func:`sample_settings`): the model trained once, then sampled and evaluated
    once per setting (paired: the same model and public seed; ``{}`` keeps the params'), one
    details each."""
    from easyhard.pipeline import (
        central_images,
        evaluate,
        finetune,
        frequency,
        pretrain,
        sample,
    )

    params = from_mapping(Params, merge(base, {**over, "methods": [method]}))
    for stage in (central_images, frequency, pretrain, finetune):
        stage.run(params, paths, method)
    out = []
    for setting in settings or [{}]:
        p = params
        if setting:
            p = from_mapping(Params, merge(to_dict(params), {"sample": setting}))
        for stage in (sample, evaluate):
            stage.run(p, paths, method)
        out.append(json.loads((paths.stage(method, "evaluate") / "details.json").read_text()))
    return out


def run_all(
    base: dict[str, Any],
    variants: list[tuple[str, str, dict[str, Any]]],
    work: Path,
    per_class: int,
    n_train: int,
    seeds: int,
    settings: list[dict[str, Any]] | None = None,
    source: str = "digits",
    first_seed: int = 0,
) -> list[dict[str, Any]]:
    """Write the proxy ``source`` into ``work``, prepare it once, then every (seed, variant); with
    ``settings`` every variant is also split by sample setting (``VARIANT@steps=N,guidance=G``)."""
    from easyhard.pipeline import fid_reference, prepare
    from easyhard.pipeline.paths import Paths

    n = write_source(work / "raw", per_class, seed=0, source=source)
    paths = Paths(work)
    p0 = from_mapping(Params, base)
    prepare.run(p0, paths)
    fid_reference.run(p0, paths)
    print(f"proxy: {n} {source} images, N = {n_train} declared, eps {p0.privacy.epsilon:g}")
    rows = []
    for seed in range(first_seed, first_seed + seeds):
        for name, method, over in variants:
            t = time.perf_counter()
            details = run_variant(merge(base, {"seed": seed}), method, over, paths, settings)
            seconds = time.perf_counter() - t
            for setting, d in zip(settings or [{}], details, strict=True):
                label = setting_label(name, setting)
                row = {"variant": label, "seed": seed, "seconds": seconds, "fid": d["fid"]}
                row.update({k: v for k, v in d.items() if k.endswith("_acc_mean")})
                if d.get("recognised") is not None:  # the reader trained on the proxy's test split
                    row["recognised"] = d["recognised"]
                rows.append(row)
                accs = "  ".join(
                    f"{k.removesuffix('_acc_mean')} {v:.3f}"
                    for k, v in row.items()
                    if k.endswith("_acc_mean") or k == "recognised"
                )
                print(f"seed {seed} {label}: FID {row['fid']:.1f}  {accs}  ({seconds:.0f} s)")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="METHOD or METHOD:key=value,...")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--epsilon", type=float, help="privacy.epsilon (default: params')")
    ap.add_argument("--seeds", type=int, default=2, help="repeats: seed 0, 1, ...")
    ap.add_argument(
        "--first-seed", type=int, default=0, help="start at this seed (a later stage of a study)"
    )
    ap.add_argument("--per-class", type=int, default=500, help="proxy images per class")
    ap.add_argument(
        "--proxy",
        choices=SOURCES,
        default="digits",
        help="public source: augmented scikit-learn digits, or distorted font glyphs",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny steps and counts")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--keep", help="work in this folder (kept) instead of a temporary one")
    ap.add_argument(
        "--sample-steps",
        type=int,
        nargs="+",
        help="sample each trained model once per sample.steps value (paired comparison)",
    )
    ap.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        help="sample each trained model once per sample.guidance value (paired; with "
        "--sample-steps: every pair)",
    )
    a = ap.parse_args(argv)
    try:
        variants = [(v, *parse_variant(v)) for v in a.variants]
    except ValueError as e:
        print(f"error: {e}")
        return 2
    per_class = 12 if a.quick else a.per_class
    base = to_dict(load_params(a.params))
    # the declared N: the expected training count of params' per-record hash split
    n_train = round(10 * per_class * (1.0 - base["data"]["test_fraction"]))
    base = merge(
        base,
        {
            "data": {"name": "folder", "root": "raw", "image_size": None, "max_per_class": None},
            "privacy": {"randomness": "seeded", "dataset_size": n_train},
            "audit": {"enabled": False},
            "device": "cpu",
        },
    )
    if a.epsilon is not None:
        base = merge(base, {"privacy": {"epsilon": a.epsilon}})
    if a.quick:
        base = merge(base, QUICK)
    settings = sample_settings(a.sample_steps, a.guidance)
    try:
        for _, m, over in variants:
            for setting in settings:  # refuse before any work
                from_mapping(Params, merge(base, {**over, "methods": [m], "sample": setting}))
    except Exception as e:  # a ConfigError names the key
        print(f"error: {e}")
        return 2
    rows: list[dict[str, Any]] = []
    old_store = os.environ.get("EASYHARD_SPEND_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        os.environ["EASYHARD_SPEND_DIR"] = str(work / "spend")  # never the user's own store
        try:
            rows = run_all(
                base,
                variants,
                work,
                per_class,
                n_train,
                a.seeds,
                settings,
                source=a.proxy,
                first_seed=a.first_seed,
            )
        finally:
            if old_store is None:
                os.environ.pop("EASYHARD_SPEND_DIR", None)
            else:
                os.environ["EASYHARD_SPEND_DIR"] = old_store
    summary = summarise(rows)
    for s in summary:
        cells = "  ".join(f"{k} {v[0]:.3f} ± {v[1]:.3f}" for k, v in s.items() if k != "variant")
        print(f"{s['variant']}: {cells}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    best = max(summary, key=lambda s: s["cnn"][0] if "cnn" in s else -s["fid"][0])
    cnn = f"{best['cnn'][0]:.3f}" if "cnn" in best else "nan"
    print(f"easyhard proxy best={best['variant']} cnn={cnn} fid={best['fid'][0]:.1f}")
    return 0


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant (in order of first appearance): each metric's (mean, std over seeds)."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        s: dict[str, Any] = {"variant": name}
        keys = [k for k in mine[0] if k.endswith("_acc_mean") or k == "recognised"]
        for key in ["fid", *keys]:
            vals = [r[key] for r in mine]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            s[key.removesuffix("_acc_mean")] = (statistics.mean(vals), sd)
        out.append(s)
    return out


if __name__ == "__main__":
    sys.exit(main())
