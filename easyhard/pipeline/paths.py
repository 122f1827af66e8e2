"""Where every artifact lives: the repository layout the stages and ``dvc.yaml`` share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """Two zones. The *public zone* (everything under ``root`` but ``private/``): mechanism outputs,
    post-processing of them and results on the held-out split, which is declared public. Each stage
    writes into its own folder (one DVC output), except the per-method ledger and metrics, which sit
    side by side in ``runs/<method>/`` (small, kept in git). The *private zone* (``private/``, never
    in git, never a DVC dependency or output, ignored by DVC): the sensitive training split,
    checkpoints, un-noised diagnostics and figures, and the executed notebooks of the stages that
    read the sensitive data."""

    root: Path

    @property
    def private(self) -> Path:
        """The private zone's root."""
        return self.root / "private"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def train(self) -> Path:
        """The sensitive training split (private zone)."""
        return self.private / "prepared" / "train.npz"

    def private_stage(self, method: str, stage: str) -> Path:
        """A stage's private folder: un-noised diagnostics, figures, its executed notebook."""
        return self.private / "runs" / method / stage

    @property
    def fingerprint(self) -> Path:
        """The keyed fingerprint of the training split (public): what ``dvc.lock`` hashes for the
        stages that read the sensitive data, instead of the data itself."""
        return self.prepared / "fingerprint.json"

    @property
    def test(self) -> Path:
        return self.prepared / "test.npz"

    @property
    def fid_real(self) -> Path:
        return self.root / "data" / "fid_reference" / "real_features.npz"

    @property
    def reader(self) -> Path:
        """The reader (:mod:`easyhard.recognition`): a CNN trained on the public test split."""
        return self.root / "data" / "fid_reference" / "reader.pt"

    def stage(self, method: str, stage: str) -> Path:
        return self.root / "runs" / method / stage

    def central(self, method: str) -> Path:
        return self.stage(method, "central") / "central.npz"

    def central_ledger(self, method: str) -> Path:
        return self.stage(method, "central") / "ledger.json"

    def frequency_images(self, method: str) -> Path:
        return self.stage(method, "frequency") / "generator_images.npz"

    def frequency_ledger(self, method: str) -> Path:
        return self.stage(method, "frequency") / "ledger.json"

    def model(self, method: str, stage: str) -> Path:
        return self.stage(method, stage) / "model.pt"

    def history(self, method: str, stage: str) -> Path:
        """Per-step losses of a stage that trains on public (already DP) images."""
        return self.stage(method, stage) / "loss.json"

    def private_history(self, method: str, stage: str) -> Path:
        """Per-step diagnostics computed from the sensitive data without noise (DP fine-tuning's
        batch sizes, losses, gradient norms): private zone."""
        return self.private_stage(method, stage) / "loss.json"

    def ledger(self, method: str) -> Path:
        return self.root / "runs" / method / "ledger.json"

    def audit_summary(self, method: str) -> Path:
        """The audit's three numbers for ``dvc metrics show`` (the full record: audit_metrics)."""
        return self.root / "runs" / method / "verdict.json"

    def audit_metrics(self, method: str) -> Path:
        return self.root / "runs" / method / "audit.json"

    def samples(self, method: str) -> Path:
        return self.stage(method, "sample") / "samples.npz"

    def metrics(self, method: str) -> Path:
        return self.root / "runs" / method / "metrics.json"

    def figure(self, method: str, stage: str, name: str) -> Path:
        return self.stage(method, stage) / f"{name}.png"

    def private_figure(self, method: str, stage: str, name: str) -> Path:
        """A figure of un-noised values (private zone)."""
        return self.private_stage(method, stage) / f"{name}.png"

    def membership(self, method: str) -> Path:
        """Membership diagnostics of a released model (exact functions of training records)."""
        return self.private_stage(method, "audit") / "membership.json"

    def checkpoint(self, method: str, stage: str) -> Path:
        """Resumable training state: private zone (DVC deletes its outputs before a rerun)."""
        return self.private / "checkpoints" / method / f"{stage}.pt"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def sweep(self) -> Path:
        """The committed ε sweep's summary (``python -m easyhard.sweep --out docs/sweep``)."""
        return self.root / "docs" / "sweep" / "sweep.json"


def find_root(start: str | Path | None = None) -> Path:
    """The repository root: the nearest folder upward from ``start`` holding ``params.yaml``."""
    here = Path(start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "params.yaml").is_file():
            return p
    raise FileNotFoundError(f"no params.yaml in {here} or any parent folder")
