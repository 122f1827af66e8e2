"""Crash-safe training: periodic checkpoints that a rerun resumes from, bit-identically on CPU.

A checkpoint holds the model, EMA, optimizer, step, history, every random generator's state and
the privacy ledger so far. It is tagged with a *fingerprint* of everything that determines the run
(params, data and initial weights); a checkpoint whose fingerprint differs is ignored, never
resumed.

A checkpoint is *private state*: it holds un-noised training diagnostics and the intermediate model,
so it lives outside DVC's outputs and git (``checkpoints/``) and is deleted once the stage completes.
The secret key of a secure noise source is never in it: after a crash, the steps after the last
checkpoint draw fresh secret masks and noise. Those lost steps were never released (nothing but the
final outputs leaves the machine), so the ledger counts each released step once. In seeded mode the
seeded stream's state is restored and the replay is bit-identical. Checkpoints are read with
``torch.load(weights_only=True)``: a file that holds anything but tensors and plain containers is
refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easyhard.io import save_torch


def digest(*items: Any) -> str:
    """SHA-256 over tensors/arrays (their bytes) and JSON-able values, in order."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, torch.Tensor):
            h.update(item.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(item, np.ndarray):
            h.update(np.ascontiguousarray(item).tobytes())
        elif (
            isinstance(item, dict)
            and item
            and all(isinstance(v, torch.Tensor) for v in item.values())
        ):
            for k in sorted(item):
                h.update(k.encode())
                h.update(item[k].detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class Checkpointer:
    """Saves a training state every ``every`` steps to ``path``; loads it back if it matches."""

    path: Path
    every: int
    fingerprint: str

    def load(self) -> dict[str, Any] | None:
        """The saved state if there is one for this very run, else None."""
        if not self.path.is_file():
            return None
        blob = torch.load(self.path, map_location="cpu", weights_only=True)
        if blob.get("fingerprint") != self.fingerprint:
            print(f"ignoring checkpoint {self.path}: it belongs to a different run")
            return None
        print(f"resuming from {self.path} at step {blob['step']}")
        return blob

    def due(self, step: int, total: int) -> bool:
        """Save after ``step`` steps? (Every ``every`` steps, never after the last one.)"""
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, step: int, state: dict[str, Any]) -> None:
        save_torch(self.path, {"fingerprint": self.fingerprint, "step": step, **state})

    def clear(self) -> None:
        """Remove the checkpoint once the stage's outputs are complete."""
        self.path.unlink(missing_ok=True)


def generator_states(*gens: torch.Generator) -> list[torch.Tensor]:
    return [g.get_state() for g in gens]


def restore_generators(gens: tuple[torch.Generator, ...], states: list[torch.Tensor]) -> None:
    for g, s in zip(gens, states, strict=True):
        g.set_state(s)
