"""Stage ``finetune`` (the hard stage): DP-SGD fine-tuning of the pretrained model on the sensitive images.

Before training, :func:`easyhard.privacy.plan.plan_release` calibrates the DP-SGD noise multiplier so
that what the easy stage already spent plus every DP-SGD step meets the target (epsilon, delta). The
ledger then holds every mechanism of the release. :mod:`easyhard.pipeline.launch` runs this on
several processes (``finetune.processes``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from easyhard.checkpoint import Checkpointer, digest
from easyhard.config import Params
from easyhard.dpsgd import expected_batch_size
from easyhard.io import save_figure, write_json
from easyhard.modelfile import load_model, save_model
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import (
    NOT_PRIVATE,
    is_private,
    noise_for,
    record_nonprivate_use,
    record_release,
)
from easyhard.pipeline.runtime import compute_settings, device
from easyhard.pipeline.zones import load_training
from easyhard.plots import loss_figure
from easyhard.privacy import Ledger, Mechanism, steps_for_epochs
from easyhard.privacy.plan import plan_release
from easyhard.schema import to_dict
from easyhard.train import dp_finetune
from easyhard.world import SINGLE_PROCESS, World


def run(params: Params, paths: Paths, method: str, world: World = SINGLE_PROCESS) -> dict[str, Any]:
    """DP-SGD fine-tuning on the sensitive set (this process's share of a ``world``).

    Writes the EMA model and the ledger (every mechanism of the release) into the public zone, and
    the un-noised per-step diagnostics (``loss.json`` and its figure) into the private zone; only
    rank 0 writes files. This stage's notebook and log are private (:mod:`easyhard.pipeline.zones`).
    """
    row = method_row(method)
    train = load_training(paths)  # private zone
    ledger = Ledger.load(paths.frequency_ledger(method))
    # private only if every mechanism in it drew secret noise (the warm-ups and this stage)
    ledger.private = ledger.private and is_private(params) and row.private
    cfg = params.finetune
    mech: Mechanism | None = None
    if row.private:
        mech = plan_release(
            epsilon=params.privacy.epsilon,
            delta=params.privacy.delta,
            accountant=params.privacy.accountant,
            dataset_size=params.privacy.dataset_size,
            sample_rate=cfg.sample_rate,
            epochs=cfg.epochs,
            warmups=ledger.mechanisms,
        ).dp_sgd
        ledger.remaining_check(mech)
        sigma, steps = mech.noise_multiplier, mech.steps
    else:  # the ceiling: the same batches and steps, no clipping and no noise
        cfg = replace(cfg, clip=math.inf)
        sigma, steps = 0.0, steps_for_epochs(cfg.epochs, cfg.sample_rate)
    dev = device(params)
    den, _ = load_model(paths.model(method, "pretrain"), device=dev)
    x = torch.as_tensor(train.x, device=dev)
    y = torch.as_tensor(train.y, device=dev)
    ckpt = Checkpointer(
        paths.checkpoint(method, "finetune"),
        params.finetune.checkpoint_every,
        digest(
            "finetune",
            method,
            params.seed,
            params.device,
            to_dict(params.privacy),  # randomness included: seeded and secure never share state
            to_dict(params.finetune),
            to_dict(params.edm),
            to_dict(params.network),
            to_dict(params.compute),
            {"noise_multiplier": sigma, "steps": steps, "clip": cfg.clip},
            [m.to_dict() for m in ledger.mechanisms],
            ledger.private,
            den.state_dict(),
            x,
            y,
        ),
        params.privacy.randomness,
    )

    def ledger_at(steps_done: int) -> dict[str, Any]:
        """The ledger so far (mechanisms only; epsilon is recomputed from them when read)."""
        spent = [*ledger.mechanisms, *([replace(mech, steps=steps_done)] if mech else [])]
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
        cfg=cfg,
        edm=params.edm,
        noise_multiplier=sigma,
        steps=steps,
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
    if mech is not None:
        ledger.add(mech)
    if not world.is_main:
        return {"mechanism": mech, "ledger": ledger, "history": hist.rows, "figure": None}
    if mech is not None:
        record_release(params, paths, method, "finetune", [mech])
    else:
        record_nonprivate_use(
            params, paths, method, "finetune", True, "non-private fine-tuning, model published"
        )
    save_model(
        paths.model(method, "finetune"),
        ema.model,
        params.network,
        train.shape,
        extra={"method": method, "noise_multiplier": sigma, "steps": steps},
    )
    write_json(paths.private_history(method, "finetune"), hist.rows)
    ledger.save(paths.ledger(method))
    ckpt.clear()
    fig = loss_figure({method: hist.rows}, title=NOT_PRIVATE + ": DP-SGD fine-tuning loss")
    fig_path = save_figure(fig, paths.private_figure(method, "finetune", "loss"))
    return {"mechanism": mech, "ledger": ledger, "history": hist.rows, "figure": fig_path}
