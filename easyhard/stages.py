"""Pipeline stages: what each notebook runs.

Each stage reads its inputs from the repository layout in :class:`Paths`, writes its outputs
atomically, and returns what its notebook displays. ``dvc.yaml`` runs one notebook per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easyhard import data as D
from easyhard.central import central_mechanism, query_central_images
from easyhard.checkpoint import build_denoiser, load_model, save_model
from easyhard.compute import Compute, running
from easyhard.compute import resolve as resolve_compute
from easyhard.config import Params, to_dict
from easyhard.distributed import SINGLE_PROCESS, World
from easyhard.dpsgd import expected_batch_size
from easyhard.edm import from_model
from easyhard.io import read_json, save_figure, savez, write_json
from easyhard.privacy import Ledger, Mechanism, calibrate_noise_multiplier, spend, steps_for_epochs
from easyhard.privacy.randomness import NoiseSource, SecureSource, noise_source
from easyhard.privacy.spend import spend_dir
from easyhard.resume import Checkpointer, digest
from easyhard.samplers import network_calls, sample
from easyhard.train import dp_finetune, pretrain

#: Title prefix of figures that show un-noised statistics of the sensitive data.
NOT_PRIVATE = "not private, do not publish"


@dataclass(frozen=True)
class Paths:
    """Where every artifact lives. Each stage writes into its own folder (one DVC output), except
    the per-method ledger and metrics, which sit side by side in ``runs/<method>/``."""

    root: Path

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def train(self) -> Path:
        return self.prepared / "train.npz"

    @property
    def test(self) -> Path:
        return self.prepared / "test.npz"

    @property
    def fid_real(self) -> Path:
        return self.root / "data" / "fid_reference" / "real_features.npz"

    def stage(self, method: str, stage: str) -> Path:
        return self.root / "runs" / method / stage

    def central(self, method: str) -> Path:
        return self.stage(method, "central") / "central.npz"

    def central_ledger(self, method: str) -> Path:
        return self.stage(method, "central") / "ledger.json"

    def model(self, method: str, stage: str) -> Path:
        return self.stage(method, stage) / "model.pt"

    def history(self, method: str, stage: str) -> Path:
        return self.stage(method, stage) / "loss.json"

    def ledger(self, method: str) -> Path:
        return self.root / "runs" / method / "ledger.json"

    def samples(self, method: str) -> Path:
        return self.stage(method, "sample") / "samples.npz"

    def metrics(self, method: str) -> Path:
        return self.root / "runs" / method / "metrics.json"

    def figure(self, method: str, stage: str, name: str) -> Path:
        return self.stage(method, stage) / f"{name}.png"

    def checkpoint(self, method: str, stage: str) -> Path:
        """Resumable training state; outside DVC's outputs, which DVC deletes before a rerun."""
        return self.root / "checkpoints" / method / f"{stage}.pt"

    @property
    def report(self) -> Path:
        return self.root / "report"


def find_root(start: str | Path | None = None) -> Path:
    """The repository root: the nearest folder upward from ``start`` holding ``params.yaml``."""
    here = Path(start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "params.yaml").is_file():
            return p
    raise FileNotFoundError(f"no params.yaml in {here} or any parent folder")


def load_for_notebook(root: str | Path | None, sections: dict[str, Any]) -> tuple[Params, Paths]:
    """``params.yaml`` at the repository root, overridden by the sections papermill injected."""
    from easyhard.config import load_params

    base = find_root(root)
    params = load_params(base / "params.yaml", {k: v for k, v in sections.items() if v is not None})
    return params, Paths(base)


def check_dataset_size(params: Params, n: int) -> None:
    """Stop before any query when the data's size N is far from the declared public size.

    Every normaliser of a release uses the declared ``privacy.dataset_size``, never ``len`` of the
    data; this check only guards against a wrong declaration (which would mis-scale the releases,
    never break the guarantee). It reveals one bit about N (inside the tolerance or not) to whoever
    sees that the run stopped.
    """
    declared, tol = params.privacy.dataset_size, params.privacy.size_tolerance
    if abs(n - declared) > tol * declared:
        raise D.DataError(
            f"the sensitive training set has {n} records but privacy.dataset_size={declared} "
            f"(tolerance {tol:g}): declare the public size of this dataset in params.yaml"
        )


def noise_for(params: Params, stream: str, world: World = SINGLE_PROCESS) -> NoiseSource:
    """The noise source of a mechanism: secret (``privacy.randomness: secure``) or seeded replay.

    Data-parallel ranks share one secret key, sent from rank 0 in memory, so they add the same
    noise and draw the same Poisson masks."""
    key = None
    if params.privacy.randomness == "secure" and world.size > 1:
        key = world.broadcast_bytes(SecureSource.shared_key() if world.is_main else None)
    return noise_source(params.privacy.randomness, params.seed, stream, key)


def record_release(
    params: Params, paths: Paths, method: str, stage: str, mechanisms: list[Mechanism]
) -> None:
    """Add this stage's mechanisms to the dataset's spend log (:mod:`easyhard.privacy.spend`)."""
    train = D.load_npz(paths.train)
    folder = spend_dir(paths.root)
    spend.record(
        folder,
        dataset=spend.fingerprint(train.x, train.y, folder),
        method=method,
        stage=stage,
        mechanisms=mechanisms,
        private=params.privacy.randomness == "secure",
    )


def dataset_total(params: Params, paths: Paths) -> spend.Total:
    """Everything released so far from this run's sensitive training set, composed."""
    train = D.load_npz(paths.train)
    folder = spend_dir(paths.root)
    return spend.total(
        folder,
        delta=params.privacy.delta,
        accountant=params.privacy.accountant,
        dataset=spend.fingerprint(train.x, train.y, folder),
    )


def _device(params: Params) -> str:
    if params.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={params.device!r} requested but CUDA is not available")
    return params.device


def compute_settings(params: Params) -> Compute:
    """``params.compute`` resolved for ``params.device`` (bf16 / channels-last on CUDA only)."""
    return resolve_compute(_device(params), params.compute)


# --------------------------------------------------------------------------------------- prepare
def prepare(params: Params, paths: Paths) -> dict[str, Any]:
    """Load the dataset, split it (sensitive train / held-out real test), save both."""
    from easyhard.plots import grid_figure

    data_root = Path(params.data.root)
    if not data_root.is_absolute():  # relative to the repository, wherever the notebook runs
        data_root = paths.root / data_root
    cfg = replace(params.data, root=str(data_root))
    if cfg.split == "official":
        train, test = D.load_official_split(cfg)
    else:
        ds = D.load_dataset(cfg)
        train, test = D.split(ds, cfg.test_fraction, params.seed, cfg.max_per_class)
    check_dataset_size(params, len(train))
    D.save_npz(paths.train, train)
    D.save_npz(paths.test, test)
    fig = grid_figure(
        train.x,
        train.y,
        train.classes,
        title="real sensitive training images: local view only, not private, do not publish",
    )
    return {
        "train": train,
        "test": test,
        "figure": save_figure(fig, paths.prepared / "train_grid.png"),
    }


def fid_reference(params: Params, paths: Paths) -> dict[str, Any]:
    """Inception features of held-out real *test* images, computed once and cached for every FID.

    Evaluation never looks at the sensitive training images: FID, precision and recall compare the
    synthetic images with the held-out test split."""
    from easyhard.metrics import inception_features, save_features

    test = D.load_npz(paths.test)
    n = min(params.evaluate.fid_real_count, len(test))
    idx = np.sort(np.random.default_rng(params.seed).permutation(len(test))[:n])
    feats = inception_features(
        test.x[idx], batch_size=params.evaluate.batch_size, device=_device(params)
    )
    save_features(paths.fid_real, feats)
    return {"count": n, "features": feats}


# --------------------------------------------------------------------------------- easy stage
def new_ledger(params: Params) -> Ledger:
    return Ledger(
        delta=params.privacy.delta,
        target_epsilon=params.privacy.epsilon,
        accountant=params.privacy.accountant,
        private=params.privacy.randomness == "secure",
    )


def central_images(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """DP central images for DP-FETA (nothing, at no cost, for DPDM). Writes images + ledger."""
    from easyhard.plots import grid_figure

    train = D.load_npz(paths.train)
    check_dataset_size(params, len(train))
    ledger = new_ledger(params)
    out: dict[str, Any] = {"ledger": ledger}
    if method == "dpfeta":
        cfg = params.central
        ledger.remaining_check(central_mechanism(cfg))  # refuse before touching the data
        ci = query_central_images(
            train.x,
            train.y,
            train.n_classes,
            cfg,
            public_size=params.privacy.dataset_size,
            source=noise_for(params, "central"),
        )
        ledger.add(ci.mechanism)
        record_release(params, paths, method, "central", [ci.mechanism])
        out["scale"] = ci.scale
        x, y = ci.x, ci.y
        per_class = min(cfg.queries, 8)
        fig = grid_figure(x, y, train.classes, per_class, title="DP central images")
        out["figure"] = save_figure(fig, paths.figure(method, "central", "central_images"))
    else:
        x = np.zeros((0, *train.shape), dtype=np.float32)
        y = np.zeros(0, dtype=np.int64)
    savez(paths.central(method), x=x, y=y, classes=np.asarray(train.classes))
    ledger.save(paths.central_ledger(method))
    out.update(x=x, y=y, classes=train.classes)
    return out


def pretrain_stage(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """DP-FETA: pretrain on the central images. DPDM: a freshly initialised network."""
    from easyhard.plots import loss_figure

    train = D.load_npz(paths.train)
    torch.manual_seed(params.seed)
    den = build_denoiser(params.network, train.shape, train.n_classes, params.edm.sigma_data)
    device = _device(params)
    den.to(device)
    rows: list[dict[str, float]] = []
    if method == "dpfeta":
        with np.load(paths.central(method)) as f:
            cx = torch.as_tensor(f["x"], device=device)
            cy = torch.as_tensor(f["y"], device=device)
        if len(cx) == 0:
            raise ValueError("no central images to pretrain on (run the central stage first)")
        ckpt = Checkpointer(
            paths.checkpoint(method, "pretrain"),
            params.pretrain.checkpoint_every,
            digest(
                "pretrain",
                params.seed,
                to_dict(params.pretrain),
                to_dict(params.edm),
                den.state_dict(),
                cx,
                cy,
            ),
        )
        ema, hist = pretrain(
            den,
            cx,
            cy,
            params.pretrain,
            params.edm,
            seed=params.seed,
            checkpoint=ckpt,
            compute=compute_settings(params),
        )
        den.load_state_dict(ema.model.state_dict())
        rows = hist.rows
    save_model(
        paths.model(method, "pretrain"),
        den,
        params.network,
        train.shape,
        extra={"method": method, "pretrain_steps": params.pretrain.steps if rows else 0},
    )
    write_json(paths.history(method, "pretrain"), rows)
    paths.checkpoint(method, "pretrain").unlink(missing_ok=True)
    out: dict[str, Any] = {"history": rows, "parameters": sum(p.numel() for p in den.parameters())}
    if rows:
        fig = loss_figure({method: rows}, title="pretraining on central images")
        out["figure"] = save_figure(fig, paths.figure(method, "pretrain", "loss"))
    return out


# --------------------------------------------------------------------------------- hard stage
def plan_finetune(params: Params, prior: list[Mechanism]) -> Mechanism:
    """Calibrate the DP-SGD noise multiplier so prior mechanisms + DP-SGD meet the target."""
    q, n = params.finetune.sample_rate, params.privacy.dataset_size
    if q * n < 1:
        raise D.DataError(
            f"privacy.dataset_size={n} is too small for finetune.sample_rate={q:g}: the expected "
            f"Poisson batch q*N = {q * n:.2g} is below one image"
        )
    steps = steps_for_epochs(params.finetune.epochs, q)
    return calibrate_noise_multiplier(
        params.privacy.epsilon,
        params.privacy.delta,
        sample_rate=q,
        steps=steps,
        prior=prior,
        accountant=params.privacy.accountant,
        name="dp_sgd",
    )


def finetune(
    params: Params, paths: Paths, method: str, world: World = SINGLE_PROCESS
) -> dict[str, Any]:
    """DP-SGD fine-tuning on the sensitive set; the ledger then holds every mechanism spent.

    With ``finetune.processes > 1`` (and not already inside ``torchrun``) the stage relaunches
    itself as ``torchrun --nproc_per_node N -m easyhard.distributed`` and reads back what rank 0
    wrote; the privacy ledger is identical to a single-process run's.
    """
    from easyhard.plots import loss_figure

    if params.finetune.processes > 1 and world.size == 1:
        return _finetune_torchrun(params, paths, method)
    train = D.load_npz(paths.train)
    check_dataset_size(params, len(train))
    ledger = Ledger.load(paths.central_ledger(method))
    # private only if every mechanism in it drew secret noise (the central images and this stage)
    ledger.private = ledger.private and params.privacy.randomness == "secure"
    mech = plan_finetune(params, list(ledger.mechanisms))
    ledger.remaining_check(mech)
    device = _device(params)
    den, _ = load_model(paths.model(method, "pretrain"), device=device)
    x = torch.as_tensor(train.x, device=device)
    y = torch.as_tensor(train.y, device=device)
    ckpt = Checkpointer(
        paths.checkpoint(method, "finetune"),
        params.finetune.checkpoint_every,
        digest(
            "finetune",
            params.seed,
            to_dict(params.finetune),
            to_dict(params.edm),
            mech.to_dict(),
            [m.to_dict() for m in ledger.mechanisms],
            den.state_dict(),
            x,
            y,
        ),
    )

    def ledger_at(steps_done: int) -> dict[str, Any]:
        """The ledger so far (mechanisms only; epsilon is recomputed from them when read)."""
        spent = [*ledger.mechanisms, replace(mech, steps=steps_done)]
        return {
            "delta": ledger.delta,
            "target_epsilon": ledger.target_epsilon,
            "accountant": ledger.accountant,
            "mechanisms": [m.to_dict() for m in spent],
            "private": ledger.private,
        }

    ema, hist = dp_finetune(
        den,
        x,
        y,
        cfg=params.finetune,
        edm=params.edm,
        noise_multiplier=mech.noise_multiplier,
        steps=mech.steps,
        expected_batch=expected_batch_size(
            params.privacy.dataset_size, params.finetune.sample_rate
        ),
        noise=noise_for(params, "dp_sgd", world),
        seed=params.seed,
        checkpoint=ckpt,
        ledger_at=ledger_at,
        world=world,
        compute=compute_settings(params),
    )
    ledger.add(mech)
    if world.is_main:
        record_release(params, paths, method, "finetune", [mech])
    if not world.is_main:
        return {"mechanism": mech, "ledger": ledger, "history": hist.rows, "figure": None}
    save_model(
        paths.model(method, "finetune"),
        ema.model,
        params.network,
        train.shape,
        extra={"method": method, "noise_multiplier": mech.noise_multiplier, "steps": mech.steps},
    )
    write_json(paths.history(method, "finetune"), hist.rows)
    ledger.save(paths.ledger(method))
    ckpt.clear()
    fig = loss_figure({method: hist.rows}, title=NOT_PRIVATE + ": DP-SGD fine-tuning loss")
    fig_path = save_figure(fig, paths.figure(method, "finetune", "loss"))
    return {"mechanism": mech, "ledger": ledger, "history": hist.rows, "figure": fig_path}


def _finetune_torchrun(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Run :func:`finetune` data-parallel on ``finetune.processes`` processes via ``torchrun``."""
    import subprocess
    import sys
    import tempfile

    import yaml

    n = params.finetune.processes
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
            "easyhard.distributed",
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


# ------------------------------------------------------------------------------------ sample
def balanced_labels(count: int, n_classes: int) -> np.ndarray:
    """``count`` labels cycling through the classes, sorted (class sizes differ by at most 1)."""
    return np.sort(np.arange(count) % n_classes).astype(np.int64)


def sample_stage(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Draw the labelled synthetic dataset from the fine-tuned model."""
    from tqdm import tqdm

    from easyhard.plots import grid_figure

    train = D.load_npz(paths.train)
    den, _ = load_model(paths.model(method, "finetune"), device=_device(params))
    cfg = params.sample
    labels = torch.as_tensor(balanced_labels(cfg.count, train.n_classes))
    gen = torch.Generator().manual_seed(params.seed)
    chunks = []
    with running(den, compute_settings(params)):  # bf16 autocast / channels-last on CUDA
        for start in tqdm(
            range(0, cfg.count, cfg.batch_size), desc=f"sampling (NFE={network_calls(cfg)})"
        ):
            lab = labels[start : start + cfg.batch_size]
            chunks.append(from_model(sample(den, lab, train.shape, cfg, gen)).cpu())
    x = torch.cat(chunks).numpy()
    x8 = np.round(x * 255).astype(np.uint8)
    savez(paths.samples(method), x=x8, y=labels.numpy(), classes=np.asarray(train.classes))
    fig = grid_figure(x, labels.numpy(), train.classes, title=f"{method} synthetic samples")
    fig_path = save_figure(fig, paths.figure(method, "sample", "samples"))
    return {"x": x, "y": labels.numpy(), "figure": fig_path, "nfe": network_calls(cfg)}


# ---------------------------------------------------------------------------------- evaluate
def evaluate(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """FID / precision / recall vs held-out real test images; downstream accuracy on them too."""
    from easyhard import metrics as M

    synth = D.load_npz(paths.samples(method))
    test = D.load_npz(paths.test)
    real = M.load_features(paths.fid_real)
    # FID / precision / recall on a class-balanced subset (every k-th of the sorted labels)
    n_fid = min(params.evaluate.fid_count, len(synth))
    fid_idx = np.linspace(0, len(synth) - 1, n_fid).round().astype(int)
    fake = M.inception_features(
        synth.x[fid_idx], batch_size=params.evaluate.batch_size, device=_device(params)
    )
    precision, recall = M.precision_recall(real, fake, k=5)
    # utility: each classifier trained on synthetic images only (epoch / C chosen on a synthetic
    # validation split), tested once on the real test set; mean +- std over the seeds
    utility, runs = M.utility(
        synth.x,
        synth.y,
        test.x,
        test.y,
        test.n_classes,
        classifiers=params.evaluate.classifiers,
        seeds=params.evaluate.classifier_seeds,
        epochs=params.evaluate.classifier_epochs,
        seed=params.seed,
        device=_device(params),
    )
    write_json(paths.stage(method, "evaluate") / "classifiers.json", runs)
    ledger = Ledger.load(paths.ledger(method))
    by = ledger.to_dict()
    sgd = [m for m in ledger.mechanisms if m.name == "dp_sgd"]
    result = {
        "private": ledger.private,
        "epsilon": by["epsilon"],
        "epsilon_rdp": by["epsilon_by_accountant"]["rdp"],
        "target_epsilon": ledger.target_epsilon,
        "delta": ledger.delta,
        "noise_multiplier": sgd[0].noise_multiplier if sgd else None,
        "fid": M.fid_from_features(real, fake),
        "precision": precision,
        "recall": recall,
        **utility,  # <classifier>_acc_mean, <classifier>_acc_std
        "classifier_seeds": params.evaluate.classifier_seeds,
        "synthetic_count": len(synth),
        "fid_count": n_fid,
        "fid_real_count": len(real),
        "dataset_epsilon": _finite(dataset_total(params, paths).epsilon),
    }
    write_json(paths.metrics(method), result)
    return result | {"classifier_runs": runs}


# ------------------------------------------------------------------------------------ report
def report(params: Params, paths: Paths) -> dict[str, Any]:
    """Compare methods: a metrics table, bar charts, sample grids side by side, central images, and
    the privacy spent on the dataset by every release so far (``report/privacy.json``).

    The un-noised training diagnostics (losses, batch sizes, gradient norms) are not part of the
    DP release and stay out of the report."""
    from easyhard.plots import comparison_bars, side_by_side

    metrics = {m: read_json(paths.metrics(m)) for m in params.methods}
    test = D.load_npz(paths.test)
    figs = {
        "metrics": comparison_bars(
            metrics,
            ["fid", *(f"{c}_acc_mean" for c in params.evaluate.classifiers), "epsilon"],
        ),
    }
    grids = {}
    for m in params.methods:
        s = D.load_npz(paths.samples(m))
        grids[m] = (s.x, s.y)
    figs["samples"] = side_by_side(grids, test.classes)
    central = {}
    for m in params.methods:
        with np.load(paths.central(m)) as f:
            if len(f["y"]):
                central[m] = (f["x"], f["y"])
    if central:
        figs["central_images"] = side_by_side(central, test.classes)
    saved = {
        name: save_figure(fig, paths.report / "figures" / f"{name}.png")
        for name, fig in figs.items()
    }
    write_json(paths.report / "summary.json", metrics)
    total = dataset_total(params, paths)
    privacy = {
        "private": all(m.get("private", False) for m in metrics.values()) and not total.non_private,
        "dataset_epsilon": _finite(total.epsilon),
        "dataset_epsilon_private_releases": total.epsilon_private,
        "dataset_releases": total.releases,
        "dataset_non_private_releases": total.non_private,
        "delta": params.privacy.delta,
        "accountant": params.privacy.accountant,
        **{f"{m}_epsilon": metrics[m]["epsilon"] for m in params.methods},
    }
    write_json(paths.report / "privacy.json", privacy)
    return {"metrics": metrics, "figures": saved, "privacy": privacy}


def _finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded epsilon (a non-private release was made) becomes null."""
    return value if np.isfinite(value) else None
