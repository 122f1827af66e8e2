"""Warm-up planner benchmark: predicted signal of the planned easy stage vs the old fixed default.

For each target epsilon, plans the central images (DP-FETA) and FETA-Pro's two warm-ups with
``central.plan: auto`` (easyhard/warmup.py) and prints, side by side with the previous fixed
default (share 0.1 of epsilon, 10 queries at q = 0.5, 7x7 mean; frequency share 0.1 at q = 1):
the chosen settings, the budget share, the per-pixel noise std of one released central image
(pixel units), its predicted SNR on the public proxy (scikit-learn's digits resized to 28x28),
DP-SGD's noise multiplier, and the SNR ratio planned / fixed. Public values only: no data is read.

    python benchmarks/warmup_plan.py                     # eps 1, 2, 5, 10 at the defaults
    python benchmarks/warmup_plan.py --epsilon 1 10 --dataset-size 60000

The last line is ``easyhard warmup_snr_ratio_eps1=R1 ... (planned / fixed)``.
"""

from __future__ import annotations

import argparse
import time

from easyhard.config import load_params
from easyhard.layout import public_layout
from easyhard.pipeline.methods import METHODS
from easyhard.pipeline.release import plan
from easyhard.warmup import frequency_snr, plan_warmups

OLD_FIXED = {
    "central": {
        "plan": "fixed",
        "type": "mean",
        "budget_share": 0.1,
        "noise_multiplier": None,
        "sample_rate": 0.5,
        "queries": 10,
        "downsample": 4,
    },
    "frequency": {
        "plan": "fixed",
        "budget_share": 0.1,
        "noise_multiplier": None,
        "sample_rate": 1.0,
    },
}


def _row(label: str, params, layout) -> tuple[float, str]:
    wp = plan_warmups(params, layout, True, False)
    c = wp.central
    sgd = plan(params, METHODS["dpfeta"], layout).dp_sgd.noise_multiplier
    if c.config is None:
        return 0.0, f"  {label:<8} off ({c.reason}); DP-SGD sigma {sgd:.4f}"
    cfg = c.config
    std, snr = c.noise_std, c.snr
    if std is None:  # a fixed form: predict it the same way
        from easyhard.warmup import central_choice

        fixed = central_choice(params, layout, cfg, cfg.budget_share or 0.0, "fixed")
        std, snr = fixed.noise_std, fixed.snr
    return snr, (
        f"  {label:<8} {cfg.type} {layout.shape[1] // cfg.downsample}x"
        f"{layout.shape[2] // cfg.downsample}, q={cfg.sample_rate:g}, {cfg.queries} quer"
        f"{'y' if cfg.queries == 1 else 'ies'}, share {cfg.budget_share:.3g}: noise std "
        f"{std:.4f}/pixel, SNR {snr:.2f}; DP-SGD sigma {sgd:.4f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilon", type=float, nargs="+", default=[1.0, 2.0, 5.0, 10.0])
    ap.add_argument("--dataset-size", type=int, default=None, help="declared N (default: params)")
    args = ap.parse_args()
    ratios = []
    t0 = time.perf_counter()
    for eps in args.epsilon:
        privacy = {"epsilon": eps}
        if args.dataset_size:
            privacy["dataset_size"] = args.dataset_size
        auto = load_params(overrides={"privacy": privacy})
        fixed = load_params(overrides={"privacy": privacy, **OLD_FIXED})
        layout = public_layout(auto.data)
        print(f"eps = {eps:g} (N = {auto.privacy.dataset_size}, DP-FETA's central images):")
        snr_auto, line = _row("planned", auto, layout)
        print(line)
        snr_fixed, line = _row("fixed", fixed, layout)
        print(line)
        ratio = snr_auto / snr_fixed if snr_fixed else float("inf")
        print(f"  SNR planned / fixed = {ratio:.2f}")
        fp = plan_warmups(auto, layout, True, True)
        f = fp.frequency
        old = plan(fixed, METHODS["fetapro"], layout).warmups[-1]
        old_std = (
            old.noise_multiplier * layout.n_classes / (old.sample_rate * auto.privacy.dataset_size)
        )
        old_snr = frequency_snr(fixed, layout, old_std)
        now = "off" if f.config is None else f"share {f.share:.3g}, SNR {f.snr:.2f}"
        print(f"  FETA-Pro frequency release: planned {now}; fixed share 0.1, SNR {old_snr:.2f}")
        ratios.append((eps, ratio))
    print(f"planning time {time.perf_counter() - t0:.1f} s")
    print("easyhard " + " ".join(f"warmup_snr_ratio_eps{e:g}={r:.2f}" for e, r in ratios))


if __name__ == "__main__":
    main()
