"""One DP-SGD step with noise multiplicity: easyhard's layer-wise clipping vs the alternatives.

Same network, data and seed for every method; B examples x K noise draws (B*K network rows):

* ``non_private``   mean loss over the B*K rows, one ordinary backward (the yardstick);
* ``per_row``       opacus' per-sample gradients of all B*K rows, then summed over K per example
                    (what the published opacus forks do; memory B*K*P);
* ``torch_func``    ``vmap(grad)`` of each example's K-averaged loss (easyhard ``grad_sampler=vmap``);
* ``easyhard``      layer-wise per-example gradients contracted over K (``grad_sampler=layerwise``).

Every private method also clips per example and sums (what a DP-SGD step needs before the noise).
Step times: all methods in this process, interleaved round-robin after warm-up (so drift and
machine load hit them alike), median. Peak memory: each method in its own fresh process, one step
after a warm-up, peak above what was resident before it (peak RSS on CPU, peak allocated on CUDA).
Examples/s too, each as a ratio to ``non_private``. The per-example gradients of the three
private methods are checked against each other before timing. The last line is
``easyhard time_ratio=X memory_ratio=Y``.

    python benchmarks/dpsgd_step.py            # B=8, K=32, params.yaml's network
    python benchmarks/dpsgd_step.py --quick    # smoke run, < 90 s on 2 cores
    python benchmarks/dpsgd_step.py --profile mnist-eps10 --json benchmarks/results/dpsgd_step_mnist.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("non_private", "per_row", "torch_func", "easyhard")


def _proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``: resident now, ``VmHWM``: peak) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak(device: str) -> float:
    """Reset the peak-memory counter; returns the resident baseline in MiB."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
    return _proc_status_mib("VmRSS")


def _peak(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_mib("VmHWM")


def setup(args: dict[str, Any]):
    """The loss module (EDM loss around the denoiser) and one batch, identical in every process."""
    from dataclasses import replace

    from easyhard.config import defaults
    from easyhard.edm import Denoiser, draw_noise
    from easyhard.multiplicity import PerExampleLoss
    from easyhard.networks import build_unet, count_parameters

    if args["profile"]:
        from easyhard import profiles

        prof = profiles.load(args["profile"])
        net = prof.params(profiles.read_base(ROOT / "params.yaml")).network
        channels, size, _ = prof.meta["image_shape"]
    else:
        net = defaults().network
        channels, size = 1, args["size"]
    torch.manual_seed(args["seed"])
    den = Denoiser(build_unet(net, (channels, size, size), 10), 0.5, 10).to(args["device"])
    g = torch.Generator().manual_seed(args["seed"])
    b, k = args["batch"], args["k"]
    x = torch.rand(b, channels, size, size, generator=g) * 2 - 1
    y = torch.randint(0, 10, (b,), generator=g)
    d = draw_noise(b, (channels, size, size), replace(defaults().edm, noise_multiplicity=k), g)
    batch = tuple(t.to(args["device"]) for t in (x, y, d.sigma, d.noise, d.drop))
    return PerExampleLoss(den), batch, count_parameters(den.unet)


def make_step(method: str, module: torch.nn.Module, batch: tuple, clip: float):
    """A closure running one step of ``method``; returns per-example gradients (private ones)."""
    from easyhard.dpsgd import clipped_sum, per_example_grads

    if method == "non_private":

        def step():
            module.zero_grad(set_to_none=True)
            module(*batch).mean().backward()
            return None

        return step
    if method in ("torch_func", "easyhard"):
        sampler = "vmap" if method == "torch_func" else "layerwise"

        def step():
            grads, _ = per_example_grads(module, *batch, grad_sampler=sampler)
            summed, _ = clipped_sum(grads, clip)
            for name, p in module.named_parameters():
                p.grad = summed[name]
            return grads

        return step
    if method == "per_row":
        from opacus import GradSampleModule

        gsm = GradSampleModule(module.denoiser, batch_first=True, loss_reduction="sum")
        # opacus' unfold-based conv rule assumes contiguous NCHW input (wrong after attention)
        for m in gsm.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_pre_hook(lambda _m, a: tuple(t.contiguous() for t in a))
        b = len(batch[0])

        def step():
            gsm.zero_grad(set_to_none=True)
            module(*batch).sum().backward()  # loss_b = mean_k l_bk
            grads = {}
            for name, p in module.named_parameters():
                gs = p.grad_sample  # [K*B, *shape]: per-row gradients, rows draw-major
                grads[name] = gs.reshape(-1, b, *gs.shape[1:]).sum(0)
                p.grad_sample = None
            summed, _ = clipped_sum(grads, clip)
            for name, p in module.named_parameters():
                p.grad = summed[name]
            return grads

        return step
    raise ValueError(method)


def peak_memory(method: str, args: dict[str, Any]) -> float:
    """MiB of peak memory one step of ``method`` needs above what was resident before it."""
    torch.set_num_threads(args["threads"])
    module, batch, _ = setup(args)
    step = make_step(method, module, batch, clip=1.0)
    step()  # warm-up: lazy initialisation is not the step's memory
    baseline = _reset_peak(args["device"])
    step()
    return max(_peak(args["device"]) - baseline, 1e-9)


def _child(method: str, args: dict[str, Any], queue: Any) -> None:
    queue.put(peak_memory(method, args))


def step_times(methods: list[str], args: dict[str, Any]) -> dict[str, list[float]]:
    """Seconds per step, the methods interleaved round-robin in this process (same conditions).

    Each method gets its own copy of the model (same seed): opacus' hooks stay on the one it wraps.
    """
    torch.set_num_threads(args["threads"])
    steps = {}
    for method in methods:
        module, batch, _ = setup(args)
        steps[method] = make_step(method, module, batch, clip=1.0)
    sync = torch.cuda.synchronize if args["device"].startswith("cuda") else (lambda: None)
    for _ in range(args["warmup"]):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args["reps"]):
        for method, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times[method].append(time.perf_counter() - t0)
    return times


def check_agreement(args: dict[str, Any]) -> float:
    """Max over examples of ||g_method - g_torch_func|| / ||g_torch_func|| (whole gradient)."""
    module, batch, _ = setup({**args, "batch": min(args["batch"], 2)})

    def flat(grads: dict) -> torch.Tensor:
        return torch.cat([g.flatten(1) for g in grads.values()], 1)

    ref = flat(make_step("torch_func", module, batch, 1.0)())
    worst = 0.0
    for method in ("easyhard", "per_row"):
        got = flat(make_step(method, module, batch, 1.0)())
        worst = max(worst, float(((got - ref).norm(dim=1) / ref.norm(dim=1)).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="examples B per step")
    parser.add_argument("--k", type=int, default=32, help="noise multiplicity K")
    parser.add_argument("--size", type=int, default=28, help="image side (params.yaml's network)")
    parser.add_argument(
        "--profile", default=None, help="use a GPU profile's network and image shape (mnist-eps10)"
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "dpsgd_step.json"))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.reps, ns.warmup = 2, 1
    methods = ns.methods.split(",")
    if "non_private" not in methods:
        parser.error("--methods must include non_private (the ratios' denominator)")
    args = {k: v for k, v in vars(ns).items() if k not in ("json", "quick", "methods")}

    t0 = time.perf_counter()
    agreement = check_agreement(args)
    print(f"per-example gradients agree: max relative difference {agreement:.2e}")
    if agreement > 1e-3:
        print("error: the methods disagree; timings would compare different computations")
        return 1
    times = step_times(methods, args)
    _, _, n_params = setup(args)
    ctx = mp.get_context("spawn")
    rows = []
    for method in methods:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(method, args, queue))
        proc.start()
        peak = queue.get()
        proc.join()
        median = statistics.median(times[method])
        rows.append(
            {
                "method": method,
                "step_s": median,
                "step_s_all": times[method],
                "peak_mib": peak,
                "examples_per_s": args["batch"] / median,
                "params": n_params,
            }
        )
        print(f"  {method}: {median:.3f} s/step, {peak:.0f} MiB peak", file=sys.stderr)
    base = next(r for r in rows if r["method"] == "non_private")
    for r in rows:
        r["time_ratio"] = r["step_s"] / base["step_s"]
        r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
        r["throughput_ratio"] = r["examples_per_s"] / base["examples_per_s"]

    print(
        f"\nDP-SGD step, B={ns.batch} examples x K={ns.k} draws, {base['params']:,} parameters "
        f"({ns.profile or 'params.yaml'} network), {ns.device}, {args['threads']} threads, "
        f"median of {ns.reps}"
    )
    header = f"{'method':<12} {'s/step':>8} {'x':>6} {'peak MiB':>9} {'x':>6} {'ex/s':>8} {'x':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['method']:<12} {r['step_s']:8.3f} {r['time_ratio']:6.2f} {r['peak_mib']:9.1f} "
            f"{r['memory_ratio']:6.2f} {r['examples_per_s']:8.1f} {r['throughput_ratio']:6.2f}"
        )
    out = Path(ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"config": vars(ns), "agreement": agreement, "rows": rows}
    result["wall_s"] = time.perf_counter() - t0
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    ours = next((r for r in rows if r["method"] == "easyhard"), None)
    if ours is not None:
        print(
            f"easyhard time_ratio={ours['time_ratio']:.2f} memory_ratio={ours['memory_ratio']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
