"""Sampler benchmark: FID and wall-clock cost against the number of network calls (NFE).

Loads one trained model (default: the DP-FETA fine-tuned model ``runs/dpfeta/finetune/model.pt``),
draws the same ``--count`` class-balanced images (same seed, so the same initial noise) with each
setting, and scores them with FID against the cached real Inception features
(``data/fid_reference/real_features.npz``):

* ``dpmsolver`` (diffusers' multistep DPM-Solver++) at NFE 10, 20, 35, 79;
* deterministic EDM Heun at NFE 35 (18 steps) and 79 (40 steps);
* stochastic EDM Heun with churn at NFE 35, 79, 199 and 1999 (1000 steps: the paper-faithful
  setting; EDM Algorithm 2 with DPImageBench's DP-FETA settings S_churn 10 in sigma in [0.025, 50];
  ``--churn`` etc. to change). EDM spreads S_churn over the steps (gamma = S_churn / steps per
  step, at most sqrt(2) - 1), so the total churn is comparable across step counts.

Writes ``benchmarks/results/sampling.json`` and ``sampling_fid_vs_nfe.png``, prints markdown rows for
the README table and the cheapest setting whose FID is within 5% of the most expensive one's.

    python benchmarks/sampling.py                        # full run (~15+ min on 2 CPU cores)
    python benchmarks/sampling.py --quick                # smoke test (< 90 s)
    python benchmarks/sampling.py --model runs/dpdm/finetune/model.pt --count 512
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a script whether or not easyhard is installed
    sys.path.insert(0, str(ROOT))

from easyhard.config import SampleConfig  # noqa: E402
from easyhard.edm import Denoiser, from_model, network_calls, sample  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Setting:
    """One sampler configuration of the benchmark."""

    name: str
    sampler: str
    steps: int
    churn: float = 0.0
    churn_tmin: float = 0.0
    churn_tmax: float | None = None
    churn_noise: float = 1.0

    def config(self, base: SampleConfig) -> SampleConfig:
        return replace(
            base,
            sampler=self.sampler,
            steps=self.steps,
            churn=self.churn,
            churn_tmin=self.churn_tmin,
            churn_tmax=self.churn_tmax,
            churn_noise=self.churn_noise,
        )

    @property
    def nfe(self) -> int:
        return network_calls(SampleConfig(sampler=self.sampler, steps=self.steps))


def default_settings(
    churn: float = 10.0,
    churn_tmin: float = 0.025,
    churn_tmax: float | None = 50.0,
    churn_noise: float = 1.0,
    quick: bool = False,
) -> list[Setting]:
    """The benchmark grid; ``quick``: NFE 10 / 35 and a 25-step churn reference (NFE 49).

    The stochastic defaults are DPImageBench's DP-FETA accuracy sampler for 28 px (EDM Algorithm 2,
    1000 steps, S_churn 10 applied for sigma in [0.025, 50], S_noise 1), as in ``profiles/``.
    """
    stochastic = dict(churn=churn, churn_tmin=churn_tmin, churn_tmax=churn_tmax)
    stochastic["churn_noise"] = churn_noise
    if quick:
        return [
            Setting("dpmsolver-10", "dpmsolver", 10),
            Setting("heun-18", "heun", 18),
            Setting("heun-churn-25", "heun", 25, **stochastic),
        ]
    return [
        Setting("dpmsolver-10", "dpmsolver", 10),
        Setting("dpmsolver-20", "dpmsolver", 20),
        Setting("dpmsolver-35", "dpmsolver", 35),
        Setting("dpmsolver-79", "dpmsolver", 79),
        Setting("heun-18", "heun", 18),
        Setting("heun-40", "heun", 40),
        Setting("heun-churn-18", "heun", 18, **stochastic),
        Setting("heun-churn-40", "heun", 40, **stochastic),
        Setting("heun-churn-100", "heun", 100, **stochastic),
        Setting("heun-churn-1000", "heun", 1000, **stochastic),
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
) -> dict[str, Any]:
    """Sample ``count`` class-balanced images per setting and score them.

    ``features`` maps NCHW [0, 1] images to feature rows comparable with ``real_features``
    (default: clean-fid Inception features). Returns ``{"rows": [...], "reference", "cheapest"}``:
    one row per setting (NFE, FID, seconds per 1,000 images); ``reference`` is the setting with the
    most network calls, ``cheapest`` the one with the fewest calls whose FID is within 5% of it.
    """
    from easyhard.metrics import fid_from_features, inception_features
    from easyhard.stages import balanced_labels

    if count < 2:
        raise ValueError("count must be >= 2 (FID needs a covariance)")
    feats = features or (lambda x: inception_features(x, progress=False))
    base = base or SampleConfig()
    labels = torch.as_tensor(balanced_labels(count, n_classes))
    warm = labels[:batch_size]  # one untimed call: lazy initialisation is not the sampler's cost
    draw(denoiser, warm, shape, replace(base, sampler="euler", steps=1), seed, batch_size)
    rows = []
    for s in settings:
        cfg = s.config(base)
        x, seconds = draw(denoiser, labels, shape, cfg, seed, batch_size)
        fid = fid_from_features(real_features, feats(x))
        row = {
            **asdict(s),
            "nfe": network_calls(cfg),
            "fid": fid,
            "seconds": seconds,
            "seconds_per_1000": seconds / count * 1000.0,
            "count": count,
        }
        rows.append(row)
        log(
            f"{s.name:>18}: NFE {row['nfe']:>4}  FID {fid:9.3f}  {row['seconds_per_1000']:9.1f} s/1k"
        )
    return {"rows": rows, **pick_cheapest(rows)}


def pick_cheapest(rows: Sequence[dict[str, Any]], tolerance: float = 0.05) -> dict[str, Any]:
    """The reference (most network calls) and the cheapest row with FID <= (1 + tol) * its FID."""
    ref = max(rows, key=lambda r: (r["nfe"], r["seconds"]))
    ok = [r for r in rows if r["fid"] <= (1.0 + tolerance) * ref["fid"]]
    cheapest = min(ok, key=lambda r: (r["nfe"], r["seconds"]))
    return {"reference": ref["name"], "cheapest": cheapest["name"], "tolerance": tolerance}


def markdown_rows(result: dict[str, Any]) -> list[str]:
    """Rows for README's sampling table: | setting | sampler | steps | NFE | FID | s / 1k images |."""
    out = []
    for r in result["rows"]:
        churn = f", S_churn {r['churn']:g}" if r["churn"] > 0 else ""
        out.append(
            f"| {r['name']} | {r['sampler']}{churn} | {r['steps']} | {r['nfe']} | "
            f"{r['fid']:.1f} | {r['seconds_per_1000']:.0f} |"
        )
    return out


def fid_vs_nfe_figure(result: dict[str, Any]):
    """FID against NFE (log x), one line per sampler family, the 5% band of the reference."""
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = r["sampler"] + (" + churn" if r["churn"] > 0 else "")
        families.setdefault(key, []).append(r)
    for key, rs in families.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], "o-", label=key)
    ref = next(r for r in rows if r["name"] == result["reference"])
    band = (1 + result["tolerance"]) * ref["fid"]
    ax.axhline(band, color="grey", ls="--", lw=1, label=f"{ref['name']} FID + 5%")
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in rows})
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.set_xlabel("network calls per image (NFE)")
    ax.set_ylabel(f"FID ({rows[0]['count']} images)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    from easyhard.checkpoint import load_model
    from easyhard.io import save_figure, write_json
    from easyhard.metrics import load_features
    from easyhard.stages import Paths, find_root

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="model file (default: runs/METHOD/finetune/model.pt)")
    p.add_argument("--method", default="dpfeta", help="run whose fine-tuned model to load")
    p.add_argument("--real-features", help="default: data/fid_reference/real_features.npz")
    p.add_argument("--count", type=int, default=256, help="images per setting (class-balanced)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--churn", type=float, default=10.0, help="S_churn of the NFE-1999 setting")
    p.add_argument("--churn-tmin", type=float, default=0.025, help="S_tmin")
    p.add_argument("--churn-tmax", type=float, default=50.0, help="S_tmax")
    p.add_argument("--churn-noise", type=float, default=1.0, help="S_noise")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(RESULTS), help="folder for sampling.json and the plot")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 images, NFE 10/35/49")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated setting names to (re)run; their rows replace the same-named rows "
        "of an existing sampling.json (e.g. to re-time settings measured on a busy machine)",
    )
    args = p.parse_args(argv)

    try:
        paths = Paths(find_root(ROOT))
        model = Path(args.model) if args.model else paths.model(args.method, "finetune")
        real_path = Path(args.real_features) if args.real_features else paths.fid_real
        real = load_features(real_path)
        den, blob = load_model(model, device=args.device)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e} (run `dvc repro` first, or pass --model / --real-features)")
        return 2
    count = 20 if args.quick else args.count
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
    print(
        f"model {model} ({sum(p.numel() for p in den.parameters()):,} parameters), {count} images "
        f"per setting, {len(real)} real feature rows, torch threads {torch.get_num_threads()}"
    )
    result = run_benchmark(
        den,
        tuple(blob["image_shape"]),
        blob["n_classes"],
        real,
        settings,
        count=count,
        base=SampleConfig(guidance=args.guidance),
        seed=args.seed,
        batch_size=args.batch_size,
    )
    result.update(
        model=str(model),
        real_features=str(real_path),
        quick=args.quick,
        device=args.device,
        torch_threads=torch.get_num_threads(),
        guidance=args.guidance,
    )
    out = Path(args.out)
    if args.only and (out / "sampling.json").is_file():
        old = json.loads((out / "sampling.json").read_text())
        new = {r["name"]: r for r in result["rows"]}
        rows = [new.pop(r["name"], r) for r in old["rows"]] + list(new.values())
        grid = [s.name for s in default_settings()]
        rows.sort(key=lambda r: grid.index(r["name"]) if r["name"] in grid else len(grid))
        result = {**old, "rows": rows, **pick_cheapest(rows)}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
