"""Where the CPU minutes of the default run buy most, measured on PUBLIC proxy data only.

The proxy is scikit-learn's 1,797 8x8 digits resized to the default 28x28 layout (what the
warm-up planner simulates on), split by a fixed public seed into 1,437 training and 360
held-out images. Never the default training images or their held-out split. The criterion is
the **held-out EDM loss** of the EMA model: the training objective (weighted denoising error)
on the held-out proxy images, at 32 noise levels (quantiles of the training sigma distribution)
with fixed noise images, the same for every candidate. It is what sampling quality rests on and
costs seconds, where a sample-and-score evaluation costs minutes per candidate.

Two measurements, each side by side in one process (same data, same seeds, interleaved):

1. **Network**: ``params.yaml``'s network with attention at each lower resolution level (or none),
   trained non-privately for ``--steps`` steps (batch ``pretrain.batch_size``): seconds per
   pretraining step and per DP-SGD step (B = q*N = 200, K = edm.noise_multiplicity, the default
   fine-tuning step) and the held-out loss.
2. **DP-SGD compute**: from one model pretrained on noisy proxy class means (a stand-in for the
   central images), DP-SGD on the proxy training images at ``privacy.epsilon`` (sigma calibrated
   by ``privacy.accountant`` for the proxy's N at ``finetune.sample_rate``) for (epochs, K) in
   (5, 2) (the default), (10, 1) (the same example-draws), (5, 1) (half of them): seconds and the
   held-out loss, mean over ``--seeds`` seeded noise draws.

The last line is ``ratio attention=<level> time=<x> loss=<y>`` for the network with the least
pretraining + fine-tuning time (the default's step counts) among those whose held-out loss is
within 2% of the default's; time and loss as ratios to the default.

    python benchmarks/cpu_budget.py                  # ~12 min on 2 cores
    python benchmarks/cpu_budget.py --quick          # smoke run, ~1 min
    python benchmarks/cpu_budget.py --json benchmarks/results/cpu_budget.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _proxy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from easyhard.layout import Layout
    from easyhard.proxy import proxy_split

    return tuple(torch.as_tensor(a) for a in proxy_split(Layout(10, (1, 28, 28)), "digits"))


def held_out_loss(den: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, edm: Any) -> float:
    """Mean EDM loss on ``x`` (in [0, 1]) at 64 sigma quantiles, fixed noise, true labels."""
    from scipy.stats import norm

    from easyhard.edm import NoiseDraws, edm_loss, to_model

    levels = 32
    u = (np.arange(levels) + 0.5) / levels
    sig = torch.as_tensor(np.exp(edm.p_mean + edm.p_std * norm.ppf(u)), dtype=torch.float32)
    gen = torch.Generator().manual_seed(7)
    total = 0.0
    den.eval()
    with torch.no_grad():
        for s in sig:
            noise = torch.randn(len(x), 1, *x.shape[1:], generator=gen)
            draws = NoiseDraws(s.expand(len(x), 1), noise, torch.zeros(len(x), 1, dtype=torch.bool))
            total += float(edm_loss(den, to_model(x), y, draws, edm.sigma_data, 10).mean())
    return total / levels


def _ft_step_seconds(net: Any, p: Any, steps: int) -> float:
    from easyhard.modelfile import build_denoiser
    from easyhard.privacy.randomness import noise_source
    from easyhard.train import dp_finetune

    torch.manual_seed(0)
    x = torch.rand(4000, 1, 28, 28)
    y = torch.randint(10, (4000,))
    den = build_denoiser(net, (1, 28, 28), 10, p.edm.sigma_data)
    kw = dict(cfg=p.finetune, edm=p.edm, noise_multiplier=1.0, expected_batch=200, seed=0)
    dp_finetune(den, x, y, **kw, steps=1, noise=noise_source("seeded", 0, "w"), progress=False)
    t = time.perf_counter()
    dp_finetune(den, x, y, **kw, steps=steps, noise=noise_source("seeded", 0, "t"), progress=False)
    return (time.perf_counter() - t) / steps


def networks(p: Any, steps: int, ft_steps: int) -> list[dict[str, Any]]:
    """Measurement 1: attention placement vs step times and held-out loss."""
    from easyhard.modelfile import build_denoiser
    from easyhard.train import pretrain

    xtr, ytr, xte, yte = _proxy()
    levels = len(p.network.channels)
    variants: list[tuple[str, list[bool]]] = [("default", list(p.network.attention))]
    for i in range(1, levels):  # attention at full resolution costs ~3x a step: not a candidate
        att = [j == i for j in range(levels)]
        if att != list(p.network.attention):
            variants.append((f"level {i}", att))
    variants.append(("none", [False] * levels))
    cfg = replace(p.pretrain, steps=steps, checkpoint_every=0)
    rows = []
    for name, att in variants:
        net = replace(p.network, attention=att)
        torch.manual_seed(p.seed)
        den = build_denoiser(net, (1, 28, 28), 10, p.edm.sigma_data)
        t = time.perf_counter()
        ema, _ = pretrain(den, xtr, ytr, cfg, p.edm, p.seed, progress=False)
        pt = (time.perf_counter() - t) / steps
        loss = held_out_loss(ema.model, xte, yte, p.edm)
        ft = _ft_step_seconds(net, p, ft_steps)
        rows.append(
            {"network": name, "attention": att, "pretrain_s": pt, "finetune_s": ft, "loss": loss}
        )
        print(
            f"{name:>8} attention={att}: pretrain {pt:.3f} s/step, DP-SGD {ft:.2f} s/step, "
            f"held-out loss {loss:.4f}",
            flush=True,
        )
    return rows


def pretrained_on_proxy_means(p: Any) -> Any:
    """The easy stage's stand-in on the proxy: ``p``'s network pretrained (``p.pretrain``) on 4
    noisy class means per class (noise std 0.1) of the proxy training images. Returns the EMA."""
    from easyhard.modelfile import build_denoiser
    from easyhard.train import pretrain

    xtr, ytr, _, _ = _proxy()
    gen = torch.Generator().manual_seed(1)
    means = torch.stack([xtr[ytr == k].mean(0) for k in range(10)])
    xc = (means.repeat(4, 1, 1, 1) + 0.1 * torch.randn(40, 1, 28, 28, generator=gen)).clamp(0, 1)
    yc = torch.arange(10).repeat(4)
    torch.manual_seed(p.seed)
    den0 = build_denoiser(p.network, (1, 28, 28), 10, p.edm.sigma_data)
    ema0, _ = pretrain(
        den0, xc, yc, replace(p.pretrain, checkpoint_every=0), p.edm, p.seed, progress=False
    )
    return ema0


def proxy_release_model(p: Any, seed: int = 0) -> torch.nn.Module:
    """A DP-FETA-like model of the proxy: :func:`pretrained_on_proxy_means`, then DP-SGD on the
    proxy training images at ``p.privacy.epsilon`` with ``p.finetune`` (sigma calibrated by
    ``p.privacy.accountant`` for the proxy's N), seeded noise. Returns the EMA denoiser."""
    from easyhard.modelfile import build_denoiser
    from easyhard.privacy.accounting import calibrate_noise_multiplier, steps_for_epochs
    from easyhard.privacy.randomness import noise_source
    from easyhard.train import dp_finetune

    xtr, ytr, _, _ = _proxy()
    den = build_denoiser(p.network, (1, 28, 28), 10, p.edm.sigma_data)
    den.load_state_dict(pretrained_on_proxy_means(p).model.state_dict())  # the EMA, trainable
    q = p.finetune.sample_rate
    steps = steps_for_epochs(p.finetune.epochs, q)
    sigma = calibrate_noise_multiplier(
        p.privacy.epsilon,
        p.privacy.delta,
        sample_rate=q,
        steps=steps,
        accountant=p.privacy.accountant,
    ).noise_multiplier
    ema, _ = dp_finetune(
        den,
        xtr,
        ytr,
        cfg=replace(p.finetune, checkpoint_every=0),
        edm=p.edm,
        noise_multiplier=sigma,
        steps=steps,
        expected_batch=q * len(xtr),
        noise=noise_source("seeded", seed, "dp_sgd"),
        seed=seed,
        progress=False,
    )
    return ema.model


def dp_compute(p: Any, seeds: int, epochs_scale: float) -> list[dict[str, Any]]:
    """Measurement 2: DP-SGD (epochs, K) at the default epsilon on the proxy."""
    from easyhard.modelfile import build_denoiser
    from easyhard.privacy.accounting import calibrate_noise_multiplier, steps_for_epochs
    from easyhard.privacy.randomness import noise_source
    from easyhard.train import dp_finetune

    xtr, ytr, xte, yte = _proxy()
    n = len(xtr)
    ema0 = pretrained_on_proxy_means(p)
    start = ema0.model.state_dict()
    base = held_out_loss(ema0.model, xte, yte, p.edm)
    print(f"pretrained on noisy proxy class means: held-out loss {base:.4f}", flush=True)
    q = p.finetune.sample_rate
    rows = []
    for epochs, k in ((5.0, 2), (10.0, 1), (5.0, 1)):
        epochs *= epochs_scale
        steps = steps_for_epochs(epochs, q)
        sigma = calibrate_noise_multiplier(
            p.privacy.epsilon,
            p.privacy.delta,
            sample_rate=q,
            steps=steps,
            accountant=p.privacy.accountant,
        ).noise_multiplier
        cfg = replace(p.finetune, epochs=epochs, checkpoint_every=0)
        edm = replace(p.edm, noise_multiplicity=k)
        losses, secs = [], []
        for s in range(seeds):
            den = build_denoiser(p.network, (1, 28, 28), 10, p.edm.sigma_data)
            den.load_state_dict(start)
            t = time.perf_counter()
            ema, _ = dp_finetune(
                den,
                xtr,
                ytr,
                cfg=cfg,
                edm=edm,
                noise_multiplier=sigma,
                steps=steps,
                expected_batch=q * n,
                noise=noise_source("seeded", s, "dp_sgd"),
                seed=s,
                progress=False,
            )
            secs.append(time.perf_counter() - t)
            losses.append(held_out_loss(ema.model, xte, yte, p.edm))
        row = {
            "epochs": epochs,
            "K": k,
            "steps": steps,
            "sigma": sigma,
            "seconds": statistics.mean(secs),
            "loss": statistics.mean(losses),
            "loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
        }
        rows.append(row)
        print(
            f"epochs {epochs:g}, K={k}: {steps} steps, sigma {sigma:.3f}, {row['seconds']:.0f} s, "
            f"held-out loss {row['loss']:.4f} +- {row['loss_std']:.4f} ({seeds} seeds)",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from easyhard.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--steps", type=int, default=600, help="pretraining steps per network")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the measurements here")
    a = ap.parse_args(argv)
    p = load_params(a.params)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.quick:
        nets = networks(p, steps=20, ft_steps=1)
        dp = dp_compute(replace(p, pretrain=replace(p.pretrain, steps=10)), 1, 0.1)
    else:
        nets = networks(p, steps=a.steps, ft_steps=4)
        dp = dp_compute(p, a.seeds, 1.0)
    default = nets[0]
    ok = [r for r in nets if r["loss"] <= 1.02 * default["loss"]]
    from easyhard.privacy.accounting import steps_for_epochs

    t_ft = steps_for_epochs(p.finetune.epochs, p.finetune.sample_rate)

    def run_seconds(r: dict[str, Any]) -> float:  # one method's pretraining + fine-tuning
        return p.pretrain.steps * r["pretrain_s"] + t_ft * r["finetune_s"]

    best = min(ok, key=run_seconds)
    if a.json:
        Path(a.json).write_text(json.dumps({"networks": nets, "dp_sgd": dp}, indent=2) + "\n")
    time_ratio = run_seconds(best) / run_seconds(default)
    print(
        f"ratio attention={best['network']} time={time_ratio:.2f} "
        f"loss={best['loss'] / default['loss']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
