"""benchmarks/dpsgd_step.py compares equal computations: its four steps agree (no timing here)."""

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("dpsgd_step", ROOT / "benchmarks" / "dpsgd_step.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

ARGS = {"batch": 3, "k": 4, "size": 28, "seed": 0, "device": "cpu", "profile": None}


def test_private_methods_give_the_same_per_example_gradients():
    assert bench.check_agreement(ARGS) < 1e-4


def test_each_private_step_leaves_the_clipped_sum_in_grad():
    for method in ("per_row", "torch_func", "easyhard"):
        # fresh module each time: opacus' hooks stay on the module it wraps
        module, batch, n_params = bench.setup(ARGS)
        assert n_params > 100_000  # params.yaml's network, not a toy
        grads = bench.make_step(method, module, batch, clip=1e-3)()
        assert all(g.shape[0] == ARGS["batch"] for g in grads.values())
        total = torch.cat([p.grad.flatten() for p in module.parameters()]).norm()
        assert float(total) <= ARGS["batch"] * 1e-3 * (1 + 1e-5)  # |sum of clipped| <= B*C
