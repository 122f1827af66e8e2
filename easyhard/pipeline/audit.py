"""Stage ``audit``: does the code leak more than the ledger claims? (per method, after fine-tuning)

* **White-box** (:mod:`easyhard.canaries`): the DP-SGD settings of this method's release, copied,
  run through the project's own Poisson sampler, per-example gradients, clipping, noise source and
  normaliser on ``audit.canaries`` Dirac gradient canaries (each in the audited set with
  probability 1/2); the one-run bound gives a lower bound on epsilon at ``audit.confidence``. The
  audit never touches the sensitive data and never changes the release. When the bound exceeds the
  claimed epsilon of DP-SGD the stage stops with one line (:class:`AuditFailure`).
* **Black-box** (a diagnostic): the released model's per-example denoising loss at fixed noise
  levels on ``audit.blackbox_count`` training images against as many held-out images, as a
  membership score (ROC AUC; 0.5 = no signal). It reads training images: not private, do not
  publish.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from easyhard.canaries import AuditSettings, dirac_audit
from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.edm import NoiseDraws, edm_loss, to_model
from easyhard.io import save_figure, savez, write_json
from easyhard.modelfile import load_model
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import NOT_PRIVATE, noise_for
from easyhard.pipeline.runtime import device
from easyhard.plots import audit_figure
from easyhard.privacy import Ledger
from easyhard.privacy.randomness import SeededSource

#: Fixed noise levels of the black-box membership score.
BLACKBOX_SIGMAS = (0.1, 0.3, 1.0)


class AuditFailure(RuntimeError):
    """The measured lower bound on epsilon exceeds what the ledger claims."""


def run(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Audit ``method``'s DP-SGD (white-box) and its released model (black-box); write
    ``runs/<method>/audit.json`` (``dvc metrics show``) and the score figure."""
    cfg = params.audit
    ledger = Ledger.load(paths.ledger(method))
    if not method_row(method).private:  # the ceiling: no DP claim to audit
        out = {"enabled": False, "private": False, "note": "non-private ceiling: not a release"}
        write_json(paths.audit_metrics(method), out)
        return out
    sgd = next(m for m in ledger.mechanisms if m.name == "dp_sgd")
    out: dict[str, Any] = {
        "enabled": cfg.enabled,
        "private": ledger.private,
        "epsilon": ledger.epsilon(),
        "delta": ledger.delta,
    }
    if not cfg.enabled:
        write_json(paths.audit_metrics(method), out)
        return out
    settings = AuditSettings(
        noise_multiplier=sgd.noise_multiplier,
        sample_rate=sgd.sample_rate,
        steps=sgd.steps,
        clip=params.finetune.clip,
        dataset_size=params.privacy.dataset_size,
        canaries=cfg.canaries,
        grad_sampler=params.finetune.grad_sampler,
        physical_batch=params.finetune.physical_batch,
        canary_norm=cfg.canary_norm,
    )
    # the audited run draws from the same kind of stream as the release; in seeded mode the
    # adversary knows the public seed, so the auditor replays it (and the audit must fail)
    seeded = params.privacy.randomness == "seeded"
    res = dirac_audit(
        settings,
        noise=noise_for(params, "dp_sgd"),
        seed=params.seed,
        delta=ledger.delta,
        confidence=cfg.confidence,
        accountant=ledger.accountant,
        replay=SeededSource(params.seed, "dp_sgd") if seeded else None,
    )
    out.update(res.summary())
    out.update(blackbox(params, paths, method))
    figure = audit_figure(
        res.scores,
        res.included,
        title=f"{method}: Dirac canary scores (eps_hat = {res.epsilon_lower_bound:.2f} "
        f"<= claimed {res.claimed_epsilon:.2f}?)",
    )
    out["figure"] = str(save_figure(figure, paths.figure(method, "audit", "canary_scores")))
    savez(paths.stage(method, "audit") / "canaries.npz", scores=res.scores, included=res.included)
    # the metrics file is committed: the figure's path relative to the repository, not this machine's
    relative = str(paths.figure(method, "audit", "canary_scores").relative_to(paths.root))
    write_json(paths.audit_metrics(method), {**out, "figure": relative})
    if not res.passed:
        raise AuditFailure(
            f"{method}: the audit certifies eps >= {res.epsilon_lower_bound:.3f} at "
            f"{cfg.confidence:.0%} confidence, above the {res.claimed_epsilon:.3f} the ledger "
            "claims for DP-SGD: the code leaks more than it accounts for"
            + (" (seeded randomness: the noise is public)" if seeded else "")
        )
    return out


def membership_scores(
    params: Params, paths: Paths, method: str, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Minus each image's EDM loss under the released model, averaged over fixed noise levels
    and noise draws from the public seed (higher = more likely a training member)."""
    den, _ = load_model(paths.model(method, "finetune"), device=device(params))
    gen = torch.Generator().manual_seed(params.seed)
    xs = to_model(torch.as_tensor(x))
    ys = torch.as_tensor(y)
    k = len(BLACKBOX_SIGMAS)
    scores = []
    with torch.no_grad():
        for start in range(0, len(xs), params.evaluate.batch_size):
            xb = xs[start : start + params.evaluate.batch_size]
            yb = ys[start : start + len(xb)]
            sigma = torch.tensor(BLACKBOX_SIGMAS).repeat(len(xb), 1)
            draws = NoiseDraws(
                sigma, torch.randn(len(xb), k, *xb.shape[1:], generator=gen), sigma < 0
            )
            loss = edm_loss(den, xb, yb, draws, den.sigma_data, den.null_label)
            scores.append(-loss.numpy())
    return np.concatenate(scores)


def blackbox(params: Params, paths: Paths, method: str) -> dict[str, float]:
    """Membership AUC of the released model: training (held-in) vs held-out test images."""
    from scipy.stats import rankdata

    train, test = load_npz(paths.train), load_npz(paths.test)
    n = min(params.audit.blackbox_count, len(train), len(test))
    rng = np.random.default_rng(params.seed)
    tr = np.sort(rng.permutation(len(train))[:n])
    te = np.sort(rng.permutation(len(test))[:n])
    s_in = membership_scores(params, paths, method, train.x[tr], train.y[tr])
    s_out = membership_scores(params, paths, method, test.x[te], test.y[te])
    ranks = rankdata(np.concatenate([s_in, s_out]))
    auc = (ranks[:n].sum() - n * (n + 1) / 2) / (n * n)
    return {"blackbox_auc": float(auc), "blackbox_count": n, "blackbox_note": NOT_PRIVATE}
