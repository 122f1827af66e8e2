"""Privacy planner CLI.

python -m easyhard.privacy plan --params params.yaml [--method fetapro]
python -m easyhard.privacy plan --epsilon 10 --delta 1e-5 --central 5,0.2,20 \\
    --sample-rate 0.1 --epochs 20 [--accountant prv|pld|rdp] [--out ledger.json]
python -m easyhard.privacy epsilon ledger.json [--accountant prv|pld|rdp]
python -m easyhard.privacy total [--root .] [--delta D] [--accountant A] [--per-record]
python -m easyhard.privacy audit --sigma S --sample-rate Q --steps T --clip C --dataset-size N \
    [--canaries 1000] [--fillers 40] [--image-size 8] [--delta 1e-5] [--confidence 0.95]

Bad input prints one error line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from easyhard.config import GRAD_SAMPLERS
from easyhard.io import write_json
from easyhard.privacy.accounting import (
    ACCOUNTANTS,
    Mechanism,
    compose_epsilon,
)
from easyhard.privacy.ledger import Ledger
from easyhard.privacy.plan import plan_release
from easyhard.privacy.spend_report import print_total

PROG = "python -m easyhard.privacy"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _central(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NOISE,RATE,STEPS (e.g. 5.0,0.2,20), got {text!r}"
        ) from None


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Plan and check DP budgets for easyhard runs.")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser(
        "plan",
        help="calibrate the DP-SGD noise after the warm-ups (from --params, or given by hand)",
    )
    plan.add_argument(
        "--params",
        metavar="FILE",
        help="plan every private method of this params.yaml (the stages' own planner); "
        "the other options are then not used",
    )
    plan.add_argument("--method", help="with --params: only this method")
    plan.add_argument("--epsilon", type=float, help="target total epsilon")
    plan.add_argument("--delta", type=float, help="target delta")
    plan.add_argument(
        "--central",
        type=_central,
        action="append",
        default=[],
        metavar="NOISE,RATE,STEPS",
        help="a central-images query (repeatable; absent = none)",
    )
    plan.add_argument("--sample-rate", type=float, help="DP-SGD Poisson rate q")
    length = plan.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="DP-SGD steps")
    length.add_argument("--epochs", type=float, help="DP-SGD epochs (steps = round(epochs/q))")
    plan.add_argument("--accountant", choices=ACCOUNTANTS, default="prv")
    plan.add_argument(
        "--dataset-size", type=int, default=None, help="declared N: checks that q*N >= 1"
    )
    plan.add_argument("--out", help="write the ledger JSON here")

    eps = sub.add_parser("epsilon", help="recompute the epsilon of a ledger file")
    eps.add_argument("ledger", help="ledger JSON file")
    eps.add_argument("--accountant", choices=ACCOUNTANTS, default=None)

    tot = sub.add_parser(
        "total",
        help="the published total of each data source: every release recorded for it, composed",
    )
    tot.add_argument(
        "--root", default=".", help="repository root: its params.yaml's delta, accountant, data"
    )
    tot.add_argument("--delta", type=float, default=None, help="default: params.yaml's")
    tot.add_argument("--accountant", choices=ACCOUNTANTS, default=None)
    tot.add_argument(
        "--per-record",
        action="store_true",
        help="also the owner's per-record view (a function of the data: never publish it); "
        "composed with --accountant if given, else pld (fast, within ~1%% of prv)",
    )
    tot.add_argument(
        "--detail", type=int, default=10, help="--per-record: groups composed for the table"
    )
    aud = sub.add_parser(
        "audit",
        help="one-run white-box audit of DP-SGD settings: Dirac canaries through dp_finetune, on "
        "generated fillers and the audit network of params.yaml (no data)",
    )
    aud.add_argument("--sigma", type=float, required=True, help="noise multiplier")
    aud.add_argument("--sample-rate", type=float, required=True, help="Poisson rate q")
    aud.add_argument("--steps", type=int, required=True, help="DP-SGD steps T")
    aud.add_argument("--clip", type=float, default=1.0, help="clipping norm C")
    aud.add_argument("--dataset-size", type=int, required=True, help="declared N (q*N normaliser)")
    aud.add_argument("--canaries", type=int, default=1000, help="m (each IN w.p. 1/2)")
    aud.add_argument("--fillers", type=int, default=40, help="generated filler images")
    aud.add_argument("--image-size", type=int, default=8, help="side of the generated images")
    aud.add_argument("--delta", type=float, default=1e-5)
    aud.add_argument("--confidence", type=float, default=0.95)
    aud.add_argument("--accountant", choices=ACCOUNTANTS, default="prv")
    aud.add_argument("--grad-sampler", choices=GRAD_SAMPLERS, default="layerwise")
    aud.add_argument("--canary-norm", type=float, default=10.0, help="canary gradient norm / C")
    aud.add_argument("--seed", type=int, default=0, help="coin flips, network init, fillers")
    return parser


def _audit(args: argparse.Namespace) -> None:
    from dataclasses import replace

    import torch

    from easyhard.canaries import canary_finetune
    from easyhard.config import defaults
    from easyhard.modelfile import build_denoiser
    from easyhard.privacy.audit import best_guesses, max_epsilon, verdict
    from easyhard.privacy.randomness import SecureSource

    base = defaults()  # params.yaml: the audit network, the fine-tuning and EDM settings
    cfg = replace(
        base.finetune, sample_rate=args.sample_rate, clip=args.clip, grad_sampler=args.grad_sampler
    )
    net = replace(base.network, channels=base.audit.channels, attention=base.audit.attention)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (1, args.image_size, args.image_size)
    x = torch.rand(args.fillers, *shape, generator=gen)
    y = torch.arange(args.fillers) % 10
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        den = build_denoiser(net, shape, 10, base.edm.sigma_data)
    res = canary_finetune(
        den,
        x,
        y,
        m=args.canaries,
        canary_norm=args.canary_norm,
        coin_seed=args.seed,
        cfg=cfg,
        edm=base.edm,
        noise_multiplier=args.sigma,
        steps=args.steps,
        expected_batch=args.sample_rate * args.dataset_size,
        noise=SecureSource(),
        seed=args.seed,
    )
    best = best_guesses(res.scores, res.included, args.delta, args.confidence)
    claimed = compose_epsilon(
        [Mechanism("dp_sgd", args.sigma, args.sample_rate, args.steps)], args.delta, args.accountant
    )
    ceiling = max_epsilon(args.canaries, args.delta, args.confidence)
    eps_hat = float(best["eps"])
    print(
        f"{args.canaries} Dirac canaries ({int(res.included.sum())} IN) + {args.fillers} fillers "
        f"through dp_finetune: {res.steps} steps at q={args.sample_rate:g}, sigma={args.sigma:g}, "
        f"C={args.clip:g}, N={args.dataset_size}"
    )
    print(
        f"guesses: {best['r']} made, {best['v']} correct (k+={best['k_plus']}, k-={best['k_minus']})"
    )
    print(
        f"claimed eps={claimed:.4f} ({args.accountant}, delta={args.delta:g}); certified lower "
        f"bound at {args.confidence:.0%}: {eps_hat:.4f}; at most {ceiling:.4f} with "
        f"{args.canaries} canaries: {verdict(eps_hat, claimed, ceiling)}"
    )
    print(f"epsilon_lower_bound={eps_hat!r}")


def _print_table(mechanisms: Sequence[Mechanism], delta: float, accountant: str) -> None:
    print(
        f"{'mechanism':<20} {'noise_mult':>11} {'sample_rate':>11} {'steps':>8} {'eps_alone':>10}"
    )
    for m in mechanisms:
        alone = compose_epsilon([m], delta, accountant)
        print(
            f"{m.name:<20} {m.noise_multiplier:>11.4f} {m.sample_rate:>11.4g} "
            f"{m.steps:>8d} {alone:>10.4f}"
        )


def _report(ledger: Ledger) -> dict[str, Any]:
    """Print the table and totals; return the ledger's JSON record (epsilons computed once)."""
    record = ledger.to_dict()
    _print_table(ledger.mechanisms, ledger.delta, ledger.accountant)
    totals = record["epsilon_by_accountant"]
    others = "  ".join(f"{a}={totals[a]:.4f}" for a in ACCOUNTANTS if a != ledger.accountant)
    print(
        f"total epsilon ({ledger.accountant}, delta={ledger.delta:g}): "
        f"{record['epsilon']:.4f} of target {ledger.target_epsilon:g}  "
        f"[for information: {others}]"
    )
    return record


def _plan_params(args: argparse.Namespace) -> None:
    """Plan each method of a params file with :func:`easyhard.pipeline.release.plan`, the stages'
    own planner: per release (one method's run) the warm-ups' planned settings (easyhard/warmup.py:
    predicted per-pixel noise std, SNR, share) and the ledger, then one JSON line, ``{method:
    {"epsilon", "noise_multiplier", "mechanisms", "warmups", "same_as"}}`` (the non-private
    ceiling: ``epsilon`` null, not a release; ``same_as``: the earlier method whose run this one
    shares, the same plan, so it is not run again and spends nothing: easyhard/pipeline/sharing.py,
    else null). Public values only: nothing under ``private/`` is read."""
    import json
    from pathlib import Path

    from easyhard.config import load_params
    from easyhard.pipeline.methods import method as method_row
    from easyhard.pipeline.paths import Paths
    from easyhard.pipeline.release import layout, plan
    from easyhard.pipeline.sharing import same_as

    params = load_params(args.params)
    public = layout(params, Paths(Path(args.params).resolve().parent))
    names = [args.method] if args.method else list(params.methods)
    rows = [method_row(n) for n in names]
    p = params.privacy
    summary: dict[str, Any] = {}
    for row in rows:
        print(f"\n{row.name} ({row.title}):")
        if not row.private:
            print("  not a release (no noise, no clipping): nothing to plan")
            summary[row.name] = {
                "epsilon": None,
                "noise_multiplier": None,
                "mechanisms": [],
                "warmups": {},
                "same_as": same_as(params, public, row.name),
            }
            continue
        warm = row.warmup_plan(params, public)
        warmups = {}
        for what, choice, run in (
            ("central", warm.central, row.central_images),
            ("frequency", warm.frequency, row.frequency),
        ):
            if not run:
                continue
            warmups[what] = choice.summary()
            print(f"  {what}: {_describe(what, choice)}")
        release = plan(params, row, public)
        ledger = Ledger(
            delta=p.delta,
            target_epsilon=p.epsilon,
            accountant=p.accountant,
            mechanisms=list(release.mechanisms),
        )
        record = _report(ledger)
        shared = same_as(params, public, row.name)
        if shared is not None:
            print(
                f"  the same plan as {shared}: {row.name} shares its run (not run again, "
                "nothing spent; its results are the same run's)"
            )
        summary[row.name] = {
            "epsilon": record["epsilon"],
            "noise_multiplier": release.dp_sgd.noise_multiplier,
            "mechanisms": [m.name for m in release.mechanisms],
            "warmups": warmups,
            "same_as": shared,
        }
    print(json.dumps(summary))


def _describe(what: str, choice: Any) -> str:
    """One line for a planned warm-up: its settings, share, predicted noise and SNR (or why off)."""
    if choice.config is None:
        return choice.reason
    cfg = choice.config
    if what == "central":
        setting = (
            f"{cfg.type}, downsample {cfg.downsample}, q={cfg.sample_rate:g}, "
            f"{cfg.queries} quer{'y' if cfg.queries == 1 else 'ies'}"
        )
    else:
        setting = f"{cfg.features} features, q={cfg.sample_rate:g}"
    if choice.reason == "fixed":
        return f"{setting} (fixed, as written)"
    return (
        f"{setting}, share {choice.share:.3g} of epsilon; predicted noise std "
        f"{choice.noise_std:.3g} per {'pixel' if what == 'central' else 'entry'}, "
        f"SNR {choice.snr:.2f} ({choice.reason})"
    )


def _plan(args: argparse.Namespace) -> None:
    if args.params:
        return _plan_params(args)
    missing = [
        flag
        for flag, value in (
            ("--epsilon", args.epsilon),
            ("--delta", args.delta),
            ("--sample-rate", args.sample_rate),
        )
        if value is None
    ]
    if args.steps is None and args.epochs is None:
        missing.append("--steps or --epochs")
    if missing:
        raise ValueError(f"plan needs --params FILE, or {', '.join(missing)}")
    if not args.epsilon > 0:
        raise ValueError(f"--epsilon must be > 0, got {args.epsilon:g}")
    if not 0 < args.delta < 1:
        raise ValueError(f"--delta must be in (0, 1), got {args.delta:g}")
    if not 0 < args.sample_rate <= 1:
        raise ValueError(f"--sample-rate must be in (0, 1], got {args.sample_rate:g}")
    many = len(args.central) > 1
    central = [
        Mechanism(f"central_images_{i}" if many else "central_images", sigma, q, t)
        for i, (sigma, q, t) in enumerate(args.central, start=1)
    ]
    release = plan_release(
        epsilon=args.epsilon,
        delta=args.delta,
        accountant=args.accountant,
        dataset_size=args.dataset_size,
        sample_rate=args.sample_rate,
        epochs=args.epochs,
        steps=args.steps,
        warmups=central,
    )
    sgd = release.dp_sgd
    ledger = Ledger(
        delta=args.delta,
        target_epsilon=args.epsilon,
        accountant=args.accountant,
        mechanisms=list(release.mechanisms),
    )
    record = _report(ledger)
    print(f"noise_multiplier={sgd.noise_multiplier!r}")
    if args.out:
        write_json(args.out, record)
        print(f"ledger written to {args.out}")
    print(f"epsilon={record['epsilon']!r}")


def _epsilon(args: argparse.Namespace) -> None:
    ledger = Ledger.load(args.ledger)
    if args.accountant:
        ledger.accountant = args.accountant
    record = _report(ledger)
    print(f"epsilon={record['epsilon']!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 on bad input)."""
    try:
        args = _parser().parse_args(argv)
        {"plan": _plan, "epsilon": _epsilon, "total": print_total, "audit": _audit}[args.command](
            args
        )
    except (_UsageError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
