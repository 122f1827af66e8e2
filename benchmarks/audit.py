"""The white-box audit at the default params.yaml, on correct and deliberately broken code.

Prepares the default data into a scratch ROOT (its training split goes to ROOT/private, never read
by the audit), copies a committed ledger, and runs ``easyhard.pipeline.audit.white_box`` (both
canary runs through ``dp_finetune``) with the code as it is (``correct``) or patched as
``tests/test_canaries.py`` patches it: ``sigma10`` (the noise source draws a tenth of the std asked
for), ``noclip`` (clipping factors 1), ``seeded`` (``privacy.randomness: seeded``: the auditor
replays the public seed). Prints one JSON line: the audit report and the seconds it took.

    python benchmarks/audit.py correct --root /tmp/auditroot --ledger benchmarks/results/dpfeta_ledger_eps10.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from easyhard import dpsgd
from easyhard.config import PARAMS_FILE, load_params
from easyhard.pipeline import audit, prepare
from easyhard.pipeline.paths import Paths
from easyhard.privacy import Ledger
from easyhard.privacy.randomness import SecureSource

VARIANTS = ("correct", "sigma10", "noclip", "seeded")


class QuietSource(SecureSource):
    """A broken noise source: a tenth of the std DP-SGD asks for."""

    def gaussian(self, exact: np.ndarray, std: float) -> np.ndarray:
        return super().gaussian(exact, std / 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", choices=VARIANTS)
    ap.add_argument("--root", type=Path, required=True, help="scratch repository root")
    ap.add_argument("--ledger", type=Path, required=True, help="a committed runs/<m>/ledger.json")
    ap.add_argument("--method", default="dpfeta")
    args = ap.parse_args()
    paths = Paths(args.root)
    over = {"privacy": {"randomness": "seeded"}} if args.variant == "seeded" else {}
    params = load_params(PARAMS_FILE, over)
    if not paths.test.is_file():
        prepare.run(params, paths)
    paths.ledger(args.method).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.ledger, paths.ledger(args.method))
    if args.variant == "sigma10":
        audit.noise_for = lambda params, stream: QuietSource()
    if args.variant == "noclip":
        dpsgd.clip_factors = lambda norms, clip: norms.new_ones(norms.shape)
    start = time.time()
    report, _ = audit.white_box(params, paths, args.method, Ledger.load(paths.ledger(args.method)))
    report["seconds"] = round(time.time() - start, 1)
    print(json.dumps({"variant": args.variant, **report}))


if __name__ == "__main__":
    main()
