"""Where every artifact lives: the repository layout the stages and ``dvc.yaml`` share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """Each stage writes into its own folder (one DVC output), except the per-method ledger and
    metrics, which sit side by side in ``runs/<method>/`` (small, kept in git)."""

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

    def frequency_images(self, method: str) -> Path:
        return self.stage(method, "frequency") / "generator_images.npz"

    def frequency_ledger(self, method: str) -> Path:
        return self.stage(method, "frequency") / "ledger.json"

    def model(self, method: str, stage: str) -> Path:
        return self.stage(method, stage) / "model.pt"

    def history(self, method: str, stage: str) -> Path:
        return self.stage(method, stage) / "loss.json"

    def ledger(self, method: str) -> Path:
        return self.root / "runs" / method / "ledger.json"

    def audit_metrics(self, method: str) -> Path:
        return self.root / "runs" / method / "audit.json"

    def samples(self, method: str) -> Path:
        return self.stage(method, "sample") / "samples.npz"

    def metrics(self, method: str) -> Path:
        return self.root / "runs" / method / "metrics.json"

    def figure(self, method: str, stage: str, name: str) -> Path:
        return self.stage(method, stage) / f"{name}.png"

    def checkpoint(self, method: str, stage: str) -> Path:
        """Resumable training state: private, outside DVC's outputs (DVC deletes those before a
        rerun) and git."""
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
