"""Sampler benchmark: FID against the held-out real test images, per number of network calls (NFE).

Loads one trained model (default: the DP-FETA fine-tuned model ``runs/dpfeta/finetune/model.pt``),
draws the same ``--count`` class-balanced images (same seed, so the same initial noise) with each
setting, and scores them with FID against the Inception features of the held-out REAL TEST images
(``data/prepared/test.npz``, computed here with ``easyhard.fid.inception_features``; never the
training images nor ``data/fid_reference``, which the pipeline's own FID uses):

* the reference: EDM stochastic Heun, 1000 steps (NFE 1999), S_churn 10 at sigma in [0.025, 50]
  (DPImageBench's DP-FETA accuracy sampler; ``--churn`` etc. to change), and stochastic Heun at
  100 / 40 steps (NFE 199 / 79);
* few-step (NFE 10-35): stochastic Heun at 10 / 14 / 18 steps (same S_churn 10: with that few steps
  gamma sits at EDM's sqrt(2) - 1 cap throughout the window, the most churn Algorithm 2 allows),
  diffusers' SDE-DPM-Solver++(2M) at 10 / 20 / 35 steps, and Restart (Xu et al. 2023) with a few
  main Heun steps plus K restarts, incl. the paper's interval [0.06, 0.30] (and its NFE-43 CIFAR-10
  setting for comparison);
* deterministic baselines: DPM-Solver++ at NFE 10 / 20 / 35 and Heun at NFE 35 / 79.

Writes ``benchmarks/results/sampling.json`` and ``sampling_fid_vs_nfe.png``, prints markdown rows
for the README table, optionally a run-to-run check (``--repeat NAME``: that setting again with the
next seed), and ends with exactly one line ``easyhard fewstep_nfe=N fid_ratio=R``: the cheapest
setting whose FID is within 5% of the NFE-1999 reference's (R = FID / reference FID).

    python benchmarks/sampling.py                        # full run
    python benchmarks/sampling.py --quick                # smoke test (< 90 s)
    python benchmarks/sampling.py --model runs/dpdm/finetune/model.pt --count 512
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a script whether or not easyhard is installed
    sys.path.insert(0, str(ROOT))

from easyhard.config import SampleConfig, defaults  # noqa: E402
from easyhard.edm import Denoiser, from_model  # noqa: E402
from easyhard.samplers import network_calls, sample  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 0.05


@dataclass(frozen=True)
class Setting:
    """One sampler configuration of the benchmark: these keys on top of a base ``sample`` section
    (params.yaml's, where count, guidance, sigma range and batch size come from)."""

    name: str
    sampler: str
    steps: int
    churn: float = 0.0
    churn_tmin: float = 0.0
    churn_tmax: float | None = None
    churn_noise: float = 1.0
    restart_k: int = 2
    restart_steps: int = 2
    restart_tmin: float = 0.06
    restart_tmax: float = 0.3

    def config(self, base: SampleConfig) -> SampleConfig:
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self)[1:]})

    @property
    def nfe(self) -> int:
        return network_calls(self.config(defaults().sample))


def restart(name: str, steps: int, k: int, n: int, tmin: float, tmax: float) -> Setting:
    """A Restart setting: ``steps`` main Heun steps, ``k`` restarts of ``n`` Heun steps."""
    kw = dict(restart_k=k, restart_steps=n, restart_tmin=tmin, restart_tmax=tmax)
    return Setting(name, "restart", steps, **kw)


def default_settings(
    churn: float = 10.0,
    churn_tmin: float = 0.025,
    churn_tmax: float | None = 50.0,
    churn_noise: float = 1.0,
    quick: bool = False,
) -> list[Setting]:
    """The benchmark grid, the reference (most network calls) last; ``quick``: NFE 10-49."""
    sto = dict(churn=churn, churn_tmin=churn_tmin, churn_tmax=churn_tmax, churn_noise=churn_noise)
    if quick:
        return [
            Setting("dpmsolver-10", "dpmsolver", 10),
            Setting("sde-dpmsolver-10", "sde-dpmsolver", 10),
            restart("restart-7-k2x4", 7, 2, 4, 0.1, 1.0),
            Setting("heun-churn-25", "heun", 25, **sto),
        ]
    return [
        Setting("dpmsolver-10", "dpmsolver", 10),
        Setting("dpmsolver-20", "dpmsolver", 20),
        Setting("dpmsolver-35", "dpmsolver", 35),
        Setting("heun-18", "heun", 18),
        Setting("heun-40", "heun", 40),
        Setting("sde-dpmsolver-10", "sde-dpmsolver", 10),
        Setting("sde-dpmsolver-20", "sde-dpmsolver", 20),
        Setting("sde-dpmsolver-35", "sde-dpmsolver", 35),
        Setting("heun-churn-10", "heun", 10, **sto),
        Setting("heun-churn-14", "heun", 14, **sto),
        Setting("heun-churn-18", "heun", 18, **sto),
        # Restart: few main steps + K restarts; chosen for strong error contraction at moderate
        # discretisation error on Gaussian toys (exact moments; see tests/gaussian_toy.py)
        restart("restart-10-k2x2", 10, 2, 2, 0.06, 0.3),  # the paper's interval, NFE 27
        restart("restart-7-k2x4", 7, 2, 4, 0.1, 1.0),  # NFE 29
        restart("restart-8-k2x4", 8, 2, 4, 0.1, 1.0),  # NFE 31
        restart("restart-10-k2x4", 10, 2, 4, 0.1, 1.0),  # NFE 35
        restart("restart-10-k4x2", 10, 4, 2, 0.1, 0.5),  # NFE 35
        restart("restart-10-k2x4-wide", 10, 2, 4, 0.1, 2.0),  # NFE 35
        restart("restart-18-k2x2", 18, 2, 2, 0.06, 0.3),  # Xu et al.'s CIFAR-10 setting, NFE 43
        Setting("heun-churn-40", "heun", 40, **sto),
        Setting("heun-churn-100", "heun", 100, **sto),
        Setting("heun-churn-1000", "heun", 1000, **sto),
    ]


def draw(
    denoiser: Denoiser,
    labels: torch.Tensor,
    shape: tuple[int, int, int],
    cfg: SampleConfig,
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, float]:
    """Images in [0, 1] (NCHW float32) and the wall-clock seconds the sampling took."""
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    start = time.perf_counter()
    for i in range(0, len(labels), batch_size):
        chunks.append(from_model(sample(denoiser, labels[i : i + batch_size], shape, cfg, gen)))
    seconds = time.perf_counter() - start
    return torch.cat(chunks).cpu().numpy(), seconds


def score(
    denoiser: Denoiser,
    labels: torch.Tensor,
    shape: tuple[int, int, int],
    real_features: np.ndarray,
    setting: Setting,
    base: SampleConfig,
    seed: int,
    batch_size: int,
    features: Callable[[np.ndarray], np.ndarray],
) -> dict[str, Any]:
    """One row: the setting's keys, NFE, FID vs ``real_features``, seconds (per 1,000 images)."""
    from easyhard.fid import fid_from_features

    cfg = setting.config(base)
    x, seconds = draw(denoiser, labels, shape, cfg, seed, batch_size)
    return {
        **asdict(setting),
        "nfe": network_calls(cfg),
        "fid": fid_from_features(real_features, features(x)),
        "seconds": seconds,
        "seconds_per_1000": seconds / len(labels) * 1000.0,
        "count": len(labels),
        "seed": seed,
    }


def run_benchmark(
    denoiser: Denoiser,
    shape: tuple[int, int, int],
    n_classes: int,
    real_features: np.ndarray,
    settings: Sequence[Setting],
    count: int = 256,
    base: SampleConfig | None = None,
    seed: int = 0,
    batch_size: int = 128,
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    log: Callable[[str], None] = print,
    repeat: str | None = None,
) -> dict[str, Any]:
    """Sample ``count`` class-balanced images per setting and score them.

    ``features`` maps NCHW [0, 1] images to feature rows comparable with ``real_features``
    (default: clean-fid Inception features). Returns ``{"rows": [...], "reference", "cheapest",
    "fid_ratio", ...}`` (:func:`pick_cheapest`). ``repeat``: a setting name, or ``"cheapest"``,
    to draw again with ``seed + 1`` (``"run_to_run"``: both FIDs and their relative difference).
    """
    from easyhard.fid import inception_features
    from easyhard.pipeline.sample import balanced_labels

    if count < 2:
        raise ValueError("count must be >= 2 (FID needs a covariance)")
    feats = features or (lambda x: inception_features(x, progress=False))
    base = base or defaults().sample
    labels = torch.as_tensor(balanced_labels(count, n_classes))
    warm = labels[:batch_size]  # one untimed call: lazy initialisation is not the sampler's cost
    draw(denoiser, warm, shape, replace(base, sampler="euler", steps=1), seed, batch_size)
    common = (denoiser, labels, shape, real_features)
    rows = []
    for s in settings:
        row = score(*common, s, base, seed, batch_size, feats)
        rows.append(row)
        nfe, fid, per_1k = row["nfe"], row["fid"], row["seconds_per_1000"]
        log(f"{s.name:>22}: NFE {nfe:>4}  FID {fid:9.3f}  {per_1k:9.1f} s/1k")
    result = {"rows": rows, **pick_cheapest(rows)}
    if repeat is not None:
        name = result["cheapest"] if repeat == "cheapest" else repeat
        first = next(r for r in rows if r["name"] == name)
        s = next(s for s in settings if s.name == name)
        again = score(*common, s, base, seed + 1, batch_size, feats)
        result["run_to_run"] = run_to_run(first, again)
        log(
            f"run-to-run {name}: FID {first['fid']:.3f} (seed {seed}) vs {again['fid']:.3f} "
            f"(seed {seed + 1}): {100 * result['run_to_run']['rel_diff']:.1f}% apart"
        )
    return result


def run_to_run(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two rows of one setting with different seeds: their FIDs and |a - b| / mean."""
    fids = [a["fid"], b["fid"]]
    return {
        "name": a["name"],
        "seeds": [a["seed"], b["seed"]],
        "fid": fids,
        "rel_diff": abs(fids[0] - fids[1]) / (0.5 * (fids[0] + fids[1])),
    }


def pick_cheapest(rows: Sequence[dict[str, Any]], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The reference (most network calls) and the cheapest row with FID <= (1 + tol) * its FID:
    the fewest network calls, the lower FID among rows with as many (their seconds differ by
    timing noise only: a call is the cost); ``fid_ratio`` = that row's FID / the reference FID."""
    ref = max(rows, key=lambda r: (r["nfe"], r["seconds"]))
    ok = [r for r in rows if r["fid"] <= (1.0 + tolerance) * ref["fid"]]
    cheapest = min(ok, key=lambda r: (r["nfe"], r["fid"]))
    return {
        "reference": ref["name"],
        "cheapest": cheapest["name"],
        "tolerance": tolerance,
        "fid_ratio": cheapest["fid"] / ref["fid"],
    }


def summary_line(result: dict[str, Any]) -> str:
    """The benchmark's last line: ``easyhard fewstep_nfe=N fid_ratio=R``."""
    best = next(r for r in result["rows"] if r["name"] == result["cheapest"])
    return f"easyhard fewstep_nfe={best['nfe']} fid_ratio={result['fid_ratio']:.3f}"


def describe(r: dict[str, Any]) -> str:
    """The sampler column of the README table."""
    if r["sampler"] == "restart":
        k, n, lo, hi = (r[f"restart_{x}"] for x in ("k", "steps", "tmin", "tmax"))
        return f"restart, K={k} x {n} Heun steps in [{lo:g}, {hi:g}]"
    return r["sampler"] + (f", S_churn {r['churn']:g}" if r["churn"] > 0 else "")


def markdown_rows(result: dict[str, Any]) -> list[str]:
    """README's sampling table rows: | setting | sampler | steps | NFE | FID | s / 1k images |."""
    return [
        f"| {r['name']} | {describe(r)} | {r['steps']} | {r['nfe']} | "
        f"{r['fid']:.1f} | {r['seconds_per_1000']:.0f} |"
        for r in result["rows"]
    ]


def family(r: dict[str, Any]) -> str:
    return r["sampler"] + (" + churn" if r["churn"] > 0 else "")


def fid_vs_nfe_figure(result: dict[str, Any]):
    """FID against NFE (log x), one line per sampler family, the 5% band of the reference."""
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(family(r), []).append(r)
    for key, rs in families.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        style = "o" if key == "restart" else "o-"  # restart settings differ in more than NFE
        ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], style, label=key)
    ref = next(r for r in rows if r["name"] == result["reference"])
    band = (1 + result["tolerance"]) * ref["fid"]
    ax.axhline(band, color="grey", ls="--", lw=1, label=f"{ref['name']} FID + 5%")
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in rows})
    ax.set_xticks(nfes, [str(n) for n in nfes], fontsize=7, rotation=90)
    ax.minorticks_off()
    ax.set_xlabel("network calls per image (NFE)")
    ax.set_ylabel(f"FID vs real test images ({rows[0]['count']} samples)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def test_features(path: Path, count: int | None, seed: int) -> np.ndarray:
    """Inception features of the held-out real test images (``count``: a seeded random subset)."""
    from easyhard.data import load_npz
    from easyhard.fid import inception_features

    x = load_npz(path).x
    if count is not None and count < len(x):
        x = x[np.sort(np.random.default_rng(seed).permutation(len(x))[:count])]
    return inception_features(x, progress=False)


def proxy_inputs(
    params: str, real_count: int | None, seed: int, quick: bool
) -> tuple[Denoiser, tuple[int, int, int], int, np.ndarray, str, str]:
    """``--proxy``: the model and reference features from PUBLIC data only. The model is
    ``benchmarks/cpu_budget.py``'s DP-FETA-like proxy release (pretrained on noisy class means of
    the proxy's training images, then DP-SGD on them at ``privacy.epsilon``; ``quick``: 20 + 2
    steps); the reference is the Inception features of the proxy's 360 held-out images."""
    import importlib.util

    from easyhard.config import load_params
    from easyhard.fid import inception_features
    from easyhard.layout import Layout
    from easyhard.proxy import proxy_split

    # a file beside this one, loaded by path: an installed package named `benchmarks` may shadow it
    spec = importlib.util.spec_from_file_location(
        "cpu_budget", Path(__file__).with_name("cpu_budget.py")
    )
    assert spec is not None and spec.loader is not None
    cpu_budget = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_budget)
    p = load_params(params)
    if quick:
        p = replace(
            p,
            pretrain=replace(p.pretrain, steps=20),
            finetune=replace(p.finetune, epochs=2 * p.finetune.sample_rate),
        )
    t = time.perf_counter()
    den = cpu_budget.proxy_release_model(p, seed=seed)
    print(f"proxy model trained in {time.perf_counter() - t:.0f} s", flush=True)
    x_test = np.asarray(proxy_split(Layout(10, (1, 28, 28)), "digits")[2])
    if real_count is not None and real_count < len(x_test):
        x_test = x_test[np.sort(np.random.default_rng(seed).permutation(len(x_test))[:real_count])]
    real = inception_features(x_test, progress=False)
    where = "proxy: scikit-learn digits (easyhard.proxy.proxy_split)"
    return den, (1, 28, 28), 10, real, f"{where}, DP-SGD at eps {p.privacy.epsilon:g}", where


def main(argv: Sequence[str] | None = None) -> int:
    from easyhard.io import save_figure, write_json
    from easyhard.modelfile import load_model
    from easyhard.pipeline.paths import Paths, find_root

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="model file (default: runs/METHOD/finetune/model.pt)")
    p.add_argument("--method", default="dpfeta", help="run whose fine-tuned model to load")
    p.add_argument(
        "--real-images", help="held-out real test images (default: data/prepared/test.npz)"
    )
    p.add_argument("--real-count", type=int, help="use a random subset of this many test images")
    p.add_argument("--count", type=int, default=256, help="images per setting (class-balanced)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--churn", type=float, default=10.0, help="S_churn of the stochastic Heun rows")
    p.add_argument("--churn-tmin", type=float, default=0.025, help="S_tmin")
    p.add_argument("--churn-tmax", type=float, default=50.0, help="S_tmax")
    p.add_argument("--churn-noise", type=float, default=1.0, help="S_noise")
    p.add_argument(
        "--proxy",
        action="store_true",
        help="tune on the PUBLIC proxy (how the default is chosen): a DP-FETA-like model trained "
        "here on scikit-learn's digits (params.yaml's recipe, seeded noise), FID against the "
        "proxy's held-out images; no run output and no image of the default data is read",
    )
    p.add_argument("--params", default=str(ROOT / "params.yaml"), help="recipe for --proxy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(RESULTS), help="folder for sampling.json and the plot")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 images, NFE 10-49")
    p.add_argument(
        "--repeat",
        default="cheapest",
        help="run this setting again with --seed + 1 to state run-to-run noise "
        "(default 'cheapest': the chosen setting; 'none': skip)",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated setting names to (re)run; their rows replace the same-named rows "
        "of an existing sampling.json (e.g. to re-time settings measured on a busy machine)",
    )
    args = p.parse_args(argv)

    count = 20 if args.quick else args.count
    real_count = args.real_count or (50 if args.quick else None)
    if args.proxy:
        den, shape, n_classes, real, model, real_path = proxy_inputs(
            args.params, real_count, args.seed, args.quick
        )
    else:
        try:
            paths = Paths(find_root(ROOT))
            model = Path(args.model) if args.model else paths.model(args.method, "finetune")
            real_path = Path(args.real_images) if args.real_images else paths.test
            den, blob = load_model(model, device=args.device)
            real = test_features(real_path, real_count, args.seed)
        except (FileNotFoundError, ValueError, KeyError) as e:
            print(f"error: {e} (run `dvc repro` first, or pass --model / --real-images / --proxy)")
            return 2
        shape, n_classes = tuple(blob["image_shape"]), blob["n_classes"]
    settings = default_settings(
        args.churn, args.churn_tmin, args.churn_tmax, args.churn_noise, quick=args.quick
    )
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {s.name for s in settings})
        if unknown:
            print(f"error: unknown setting(s) {', '.join(unknown)}")
            return 2
        settings = [s for s in settings if s.name in wanted]
    repeat = None if args.repeat == "none" else args.repeat
    if repeat not in (None, "cheapest", *(s.name for s in settings)):
        print(f"error: --repeat {repeat} is not one of the settings run")
        return 2
    print(
        f"model {model} ({sum(p.numel() for p in den.parameters()):,} parameters), {count} images "
        f"per setting, FID vs {len(real)} real test images ({real_path}), "
        f"torch threads {torch.get_num_threads()}"
    )
    result = run_benchmark(
        den,
        shape,
        n_classes,
        real,
        settings,
        count=count,
        base=replace(defaults().sample, guidance=args.guidance),
        seed=args.seed,
        batch_size=args.batch_size,
        repeat=repeat,
    )
    result.update(
        model=str(model),
        proxy=args.proxy,
        real_images=str(real_path),
        real_count=len(real),
        quick=args.quick,
        device=args.device,
        torch_threads=torch.get_num_threads(),
        guidance=args.guidance,
    )
    out = Path(args.out)
    if args.only and (out / "sampling.json").is_file():
        old = json.loads((out / "sampling.json").read_text())
        same = ("model", "real_images", "real_count", "guidance")
        if any(old.get(k) != result[k] for k in same) or old["rows"][0]["count"] != count:
            print(f"error: {out / 'sampling.json'} was scored with other settings; rerun all")
            return 2
        new = {r["name"]: r for r in result["rows"]}
        rows = [new.pop(r["name"], r) for r in old["rows"]] + list(new.values())
        grid = [s.name for s in default_settings()]
        rows.sort(key=lambda r: grid.index(r["name"]) if r["name"] in grid else len(grid))
        result = {**old, **result, "rows": rows, **pick_cheapest(rows)}
    write_json(out / "sampling.json", result)
    save_figure(fid_vs_nfe_figure(result), out / "sampling_fid_vs_nfe.png")
    ref = next(r for r in result["rows"] if r["name"] == result["reference"])
    best = next(r for r in result["rows"] if r["name"] == result["cheapest"])
    print("\nREADME table rows (| setting | sampler | steps | NFE | FID | s / 1k images |):")
    print("\n".join(markdown_rows(result)))
    print(
        f"\ncheapest within 5% of {ref['name']} (FID {ref['fid']:.2f}): {best['name']} "
        f"(NFE {best['nfe']}, FID {best['fid']:.2f}, {best['seconds_per_1000']:.0f} s / 1k images)"
    )
    print(f"wrote {out / 'sampling.json'} and {out / 'sampling_fid_vs_nfe.png'}")
    print(summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
