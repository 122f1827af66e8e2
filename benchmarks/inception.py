"""Inception features on CPU: easyhard's channels-last batches vs clean-fid's contiguous NCHW.

The FID stages spend most of their time in the Inception network (``fid_reference`` on the
held-out images, ``evaluate`` on each method's samples: 2,000 images a default run).
:func:`easyhard.fid.inception_features` hands the network its batches in channels-last memory;
``nchw`` below is the same network on the contiguous NCHW batches clean-fid builds, on the public
proxy (scikit-learn's digits at 28x28). Both run in this process on the same resized batches,
interleaved round-robin after a warm-up (so drift and machine load hit them alike); the median
seconds per batch. The features of the two are compared
(max abs difference) and so are the FIDs of two halves of the images (the same number to ~1e-4).

    python benchmarks/inception.py              # 4 batches of 50 proxy digits, 2 rounds (~3 min)
    python benchmarks/inception.py --quick      # 1 batch of 10, 1 round (a smoke run)

The last line is ``easyhard inception_speedup=X`` (nchw seconds / channels-last seconds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from cleanfid.resize import build_resizer

    from easyhard import fid
    from easyhard.layout import PUBLIC_LAYOUTS
    from easyhard.proxy import proxy_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.batch_size, args.rounds = 1, 10, 1
    # the public proxy (scikit-learn's digits at the default 28x28 layout), not the default data
    x = proxy_images(PUBLIC_LAYOUTS["mnist_offline"])[0][: args.batches * args.batch_size]
    resize = build_resizer("clean")
    chunks = [
        fid.to_uint8_hwc(x[s : s + args.batch_size]) for s in range(0, len(x), args.batch_size)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = fid._load_network("cpu")
    hwc = [np.stack([resize(img) for img in c]) for c in chunks]  # as inception_features does
    variants = {
        "nchw": [torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2))) for b in hwc],
        "channels_last": [torch.from_numpy(b).permute(0, 3, 1, 2) for b in hwc],
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    feats: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for batches in variants.values():
            net(batches[0][:2])  # warm-up
        for _ in range(args.rounds):
            for name, batches in variants.items():
                out = []
                for b in batches:
                    t = time.perf_counter()
                    out.append(net(b).numpy().astype(np.float64))
                    times[name].append(time.perf_counter() - t)
                feats[name] = np.concatenate(out)
    easy = fid.inception_features(x, batch_size=args.batch_size, progress=False)
    np.testing.assert_array_equal(easy, feats["channels_last"])  # the library runs this path
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(x)} images")
    print("| batches as | s / batch of", args.batch_size, "| images / s |")
    print("| --- | --- | --- |")
    for name, t in med.items():
        print(f"| {name} | {t:.2f} | {args.batch_size / t:.1f} |")
    diff = float(np.abs(feats["nchw"] - feats["channels_last"]).max())
    print(f"max abs feature difference: {diff:.2e}")
    if len(x) >= 8:
        half = len(x) // 2
        fids = {k: fid.fid_from_features(f[:half], f[half:]) for k, f in feats.items()}
        print("FID of the two halves: " + ", ".join(f"{k} {v:.6f}" for k, v in fids.items()))
    print(f"easyhard inception_speedup={med['nchw'] / med['channels_last']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
