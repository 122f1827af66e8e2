"""Run the fine-tuning stage on one process or, with ``finetune.processes: N > 1``, on N processes
under ``torchrun`` (gloo on CPU, nccl on GPU): ``python -m easyhard.pipeline.launch --method M``.

Every rank runs :func:`easyhard.pipeline.finetune.run` with the same params and noise stream;
only rank 0 writes files, and the privacy ledger is identical to a single-process run's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from easyhard.config import Params, load_params
from easyhard.io import read_json
from easyhard.pipeline import finetune
from easyhard.pipeline.paths import Paths, find_root
from easyhard.privacy import Ledger
from easyhard.schema import to_dict
from easyhard.world import init_from_env, shutdown


def run_finetune(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """The ``finetune`` stage as its notebook calls it: in this process, or relaunched under
    ``torchrun`` on ``finetune.processes`` processes, reading back what rank 0 wrote."""
    n = params.finetune.processes
    if n == 1:
        return finetune.run(params, paths, method)
    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(to_dict(params), sort_keys=False))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "easyhard.pipeline.launch",
            "--method",
            method,
            "--params",
            str(params_file),
            "--root",
            str(paths.root),
        ]
        done = subprocess.run(cmd, cwd=paths.root, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"DP fine-tuning on {n} processes failed (exit {done.returncode}): {' '.join(cmd)}"
        )
    ledger = Ledger.load(paths.ledger(method))
    return {
        "mechanism": ledger.mechanisms[-1],
        "ledger": ledger,
        "history": read_json(paths.history(method, "finetune")),
        "figure": paths.figure(method, "finetune", "loss"),
    }


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m easyhard.pipeline.launch --method M``: this rank's share of fine-tuning."""
    parser = argparse.ArgumentParser(prog="python -m easyhard.pipeline.launch", description=__doc__)
    parser.add_argument("--method", required=True)
    parser.add_argument("--params", default=None, help="params.yaml (default: repository root's)")
    parser.add_argument("--root", default=None, help="repository root (default: found from cwd)")
    args = parser.parse_args(argv)
    root = find_root(args.root)
    params = load_params(args.params or root / "params.yaml")
    world = init_from_env(params.device)
    try:
        summary = finetune.run(params, Paths(root), args.method, world=world)
        if world.is_main:
            mech = summary["mechanism"]
            print(
                f"rank 0 of {world.size}: {mech.steps} DP-SGD steps, noise multiplier "
                f"{mech.noise_multiplier:.4f}, ledger epsilon {summary['ledger'].epsilon():.3f}"
            )
    finally:
        shutdown(world)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
