"""Crash-safe training: periodic checkpoints that a rerun resumes from, bit-identically on CPU.

A checkpoint holds the model, EMA, optimizer, step, history, every random generator's state, the
privacy ledger so far and the run's ``privacy.randomness`` mode (``randomness``; None for training
that draws no DP noise, i.e. pretraining). It is tagged with a *fingerprint* (:func:`digest`) of
everything that shapes the run: fine-tuning hashes the method, seed, ``device``, the whole
``privacy`` section (``randomness`` included), ``finetune``, ``edm``, ``network``, ``compute``, the
planned DP-SGD noise multiplier, steps and clip, the warm-up mechanisms and the ledger's
``private`` flag, the pretrained weights and the training images and labels; pretraining hashes
the phase, method, seed, ``device``, its config, ``edm``, ``network``, ``compute``, the initial
weights and its images and labels. A checkpoint whose fingerprint differs is ignored (the run's
own first save replaces it), never resumed.

One mismatch is refused rather than ignored: a secure run that finds, at the path it would resume
from, a checkpoint written by a seeded run (its ``randomness`` says ``seeded``, or, in a file
without that tag, it holds a seeded stream's state). Its steps used public masks and noise, so
resuming it would release them under a private ledger; :class:`CheckpointError` (a ``ValueError``:
one line naming the file) tells the user to delete it.

A checkpoint is *private state*: it holds un-noised training diagnostics and the intermediate model,
so it lives in the private zone (``private/checkpoints/``, outside DVC's outputs and git) and is
deleted once the stage completes. The secret key of a secure noise source is never in it: after a
crash, the steps after the last checkpoint draw fresh secret masks and noise. Those lost steps were
never released (nothing but the final outputs leaves the machine), so the ledger counts each
released step once. In seeded mode the seeded stream's state is restored and the replay is
bit-identical. Checkpoints are read with ``torch.load(weights_only=True)``: a file that holds
anything but tensors and plain containers is refused, never unpickled.
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


class CheckpointError(ValueError):
    """A checkpoint that this run must neither resume from nor silently overwrite."""


def _seeded(blob: dict[str, Any]) -> bool:
    """Was ``blob`` written by a seeded run? (Files without the tag: a seeded stream's state.)"""
    if "randomness" in blob:
        return blob["randomness"] == "seeded"
    return blob.get("noise") is not None


@dataclass
class Checkpointer:
    """Saves a training state every ``every`` steps to ``path``; loads it back if it matches.

    ``randomness`` is the run's ``privacy.randomness`` (None when it draws no DP noise): stored in
    every checkpoint, and a ``secure`` run refuses a checkpoint a seeded run wrote.
    """

    path: Path
    every: int
    fingerprint: str
    randomness: str | None

    def load(self) -> dict[str, Any] | None:
        """The saved state if there is one for this very run, else None.

        Raises :class:`CheckpointError` when this run is secure and the file was written by a
        seeded run, whatever its fingerprint."""
        if not self.path.is_file():
            return None
        blob = torch.load(self.path, map_location="cpu", weights_only=True)
        if self.randomness == "secure" and _seeded(blob):
            raise CheckpointError(
                f"{self.path} was written by a seeded run (public masks and noise): a secure run "
                "must not resume from it; delete it and rerun"
            )
        if blob.get("fingerprint") != self.fingerprint:
            print(f"ignoring checkpoint {self.path}: it belongs to a different run")
            return None
        print(f"resuming from {self.path} at step {blob['step']}")
        return blob

    def due(self, step: int, total: int) -> bool:
        """Save after ``step`` steps? (Every ``every`` steps, never after the last one.)"""
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Write ``state`` with this run's fingerprint, randomness mode and ``step`` (atomic)."""
        tags = {"fingerprint": self.fingerprint, "randomness": self.randomness, "step": step}
        save_torch(self.path, {**state, **tags})

    def clear(self) -> None:
        """Remove the checkpoint once the stage's outputs are complete."""
        self.path.unlink(missing_ok=True)


def generator_states(*gens: torch.Generator) -> list[torch.Tensor]:
    return [g.get_state() for g in gens]


def restore_generators(gens: tuple[torch.Generator, ...], states: list[torch.Tensor]) -> None:
    for g, s in zip(gens, states, strict=True):
        g.set_state(s)
