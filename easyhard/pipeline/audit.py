"""Stage ``audit``: does the release's code leak more than its ledger claims? (per method)

* **White-box** (:mod:`easyhard.canaries`, ``docs/auditing.md``): ``audit.canaries`` Dirac gradient
  canaries, each IN with probability 1/2, beside ``audit.fillers`` held-out test images, through the
  release's own :func:`easyhard.train.dp_finetune` (noise source :func:`release.noise_for`, Poisson
  sampler, per-layer gradient rules, clipping, normaliser, checkpoint and resume), on a smaller
  network of the same layer types (``audit.channels``). Two runs:

  - **resolvable**: sigma calibrated for ``audit.resolvable_epsilon`` at the ledger's q, T and
    ``finetune.clip``, a budget m canaries can certify, so broken code (noise too small or
    replayable, clipping off) fails it whatever ``privacy.epsilon`` is;
  - **release**: sigma and T planned exactly as the fine-tuning stage plans them. Its verdict is
    ``inconclusive`` whenever the claim exceeds :func:`max_epsilon` of m canaries (always at
    epsilon = 10: at most 5.78 with m = 1,000), and ``canaries_needed`` says which m would do.

  In both the sigma, q, T, C and normaliser the observer saw must equal the ledger's (q: an exact
  binomial test on the realised batch sizes). A seeded run (``privacy.randomness: seeded``) fails
  outright: the auditor replays the public seed's stream and subtracts it. Any failure stops the
  stage with one line (:class:`AuditFailure`) after ``runs/<method>/audit.json`` is written.
* **Black-box** (a diagnostic of the released model, reads the training split): per-example
  denoising loss on ``audit.blackbox_count`` training vs held-out images as a membership score. Its
  AUC is an exact function of training images: private zone only (``paths.membership``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy import stats

from easyhard.canaries import AuditFailure, CanaryRun, canary_finetune
from easyhard.config import Params
from easyhard.data import load_npz
from easyhard.dpsgd import expected_batch_size
from easyhard.edm import NoiseDraws, edm_loss, to_model
from easyhard.io import save_figure, write_json
from easyhard.modelfile import build_denoiser, load_model
from easyhard.pipeline.methods import method as method_row
from easyhard.pipeline.paths import Paths
from easyhard.pipeline.release import (
    NOT_PRIVATE,
    layout,
    noise_for,
    plan,
    record_nonprivate_use,
)
from easyhard.pipeline.runtime import compute_settings, device
from easyhard.pipeline.zones import load_training
from easyhard.plots import audit_figure
from easyhard.privacy import Ledger, Mechanism, calibrate_noise_multiplier, compose_epsilon
from easyhard.privacy.audit import FAIL, best_guesses, canaries_needed, max_epsilon, verdict
from easyhard.privacy.randomness import SeededSource

__all__ = ["AuditFailure", "run", "white_box", "blackbox"]

#: Fixed noise levels of the black-box membership score.
BLACKBOX_SIGMAS = (0.1, 0.3, 1.0)
#: Two-sided p-value below which the realised batch sizes refute the ledger's sample rate q.
SAMPLE_RATE_P = 1e-6
#: Relative tolerance when comparing observed settings with the ledger's (float round-off only).
RTOL = 1e-9


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """The three numbers ``dvc metrics show`` prints for an audit: the verdict, eps_hat of the
    release's own run (else of the resolvable run) and the most that m canaries can certify."""
    run = out.get("release") or out.get("resolvable") or {}
    return {
        "verdict": out.get("verdict", "not audited"),
        "eps_hat": round(run["eps_hat"], 3) if "eps_hat" in run else None,
        "eps_max": round(out["max_epsilon"], 2) if "max_epsilon" in out else None,
    }


def _write(paths: Paths, method: str, out: dict[str, Any]) -> None:
    write_json(paths.audit_metrics(method), out)
    write_json(paths.audit_summary(method), summary(out))


def run(params: Params, paths: Paths, method: str) -> dict[str, Any]:
    """Audit ``method``'s release: write ``runs/<method>/audit.json`` (the full record) and
    ``verdict.json`` (the DVC metric), the canary figure, and the black-box diagnostic
    (private zone); raise :class:`AuditFailure` on a fail."""
    cfg = params.audit
    paths.stage(method, "audit").mkdir(parents=True, exist_ok=True)  # the stage's DVC output
    if not method_row(method).private:  # the ceiling: no DP claim to audit
        out = {"enabled": False, "private": False, "note": "non-private ceiling: not a release"}
        _write(paths, method, out)
        return out
    ledger = Ledger.load(paths.ledger(method))
    out: dict[str, Any] = {
        "enabled": cfg.enabled,
        "private": ledger.private,
        "epsilon": ledger.epsilon(),
        "delta": ledger.delta,
    }
    if not cfg.enabled:
        _write(paths, method, out)
        return out
    report, runs = white_box(params, paths, method, ledger)
    out.update(report)
    figure = paths.figure(method, "audit", "canary_scores")
    save_figure(
        audit_figure({k: (r.scores, r.included) for k, r in runs.items()}, title=method),
        figure,
    )
    out["figure"] = str(figure.relative_to(paths.root))  # committed: not this machine's path
    _write(paths, method, out)
    if out["verdict"] == FAIL:
        raise AuditFailure(f"{method}: {out['reason']}")
    out["membership"] = blackbox(params, paths, method)
    return out


def fillers(params: Params, paths: Paths) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``audit.fillers`` held-out test images (public), a seeded choice; and the class count."""
    test = load_npz(paths.test)
    rng = np.random.default_rng(params.seed)
    idx = np.sort(rng.permutation(len(test))[: params.audit.fillers])
    return torch.as_tensor(test.x[idx]), torch.as_tensor(test.y[idx]), test.n_classes


def canary_run(
    params: Params, paths: Paths, method: str, sigma: float, steps: int, seeded: bool
) -> CanaryRun:
    """One audited fine-tuning run at noise multiplier ``sigma`` for ``steps`` steps."""
    cfg = params.audit
    x, y, n_classes = fillers(params, paths)
    net = replace(params.network, channels=cfg.channels, attention=cfg.attention)
    with torch.random.fork_rng():
        torch.manual_seed(params.seed)
        den = build_denoiser(net, tuple(x.shape[1:]), n_classes, params.edm.sigma_data)
    den.to(device(params))
    every = params.finetune.checkpoint_every
    cut = min(steps - 1, steps // 2 + max(1, every // 2)) if cfg.resume and steps > 1 else None
    return canary_finetune(
        den,
        x,
        y,
        m=cfg.canaries,
        canary_norm=cfg.canary_norm,
        coin_seed=params.seed,
        cfg=params.finetune,
        edm=params.edm,
        noise_multiplier=sigma,
        steps=steps,
        expected_batch=expected_batch_size(
            params.privacy.dataset_size, params.finetune.sample_rate
        ),
        noise=noise_for(params, "dp_sgd"),
        seed=params.seed,
        checkpoint_path=paths.checkpoint(method, "audit") if cut is not None else None,
        interrupt_at=cut,
        replay=SeededSource(params.seed, "dp_sgd") if seeded else None,
        compute=compute_settings(params),
    )


def settings_mismatch(res: CanaryRun, sgd: Mechanism, clip: float, dataset_size: int) -> str | None:
    """The first setting the observer saw that differs from the ledger's mechanism, or None."""
    obs = res.observed()
    expected = {
        "noise_multiplier": sgd.noise_multiplier,
        "noise_std": sgd.noise_multiplier * clip,
        "clip": clip,
        "normaliser": sgd.sample_rate * dataset_size,
    }
    for key, want in expected.items():
        got = obs[key]
        if isinstance(got, list) or not math.isclose(got, want, rel_tol=RTOL):
            return f"the run used {key} = {got}, the ledger's DP-SGD has {want:.6g}"
    if res.steps != sgd.steps:
        return f"the run released {res.steps} steps, the ledger's DP-SGD has {sgd.steps}"
    trials = res.records * res.steps
    p = stats.binomtest(res.sampled, trials, sgd.sample_rate).pvalue
    if p < SAMPLE_RATE_P:
        return (
            f"the run sampled {res.sampled} of {trials} record-steps (q = {res.sampled / trials:.4f}); "
            f"the ledger's q = {sgd.sample_rate:g} (p = {p:.1e})"
        )
    return None


def judge(
    params: Params, res: CanaryRun, sgd: Mechanism, ledger: Ledger, seeded: bool
) -> dict[str, Any]:
    """eps_hat of one run beside its claim and the ceiling of m canaries, and its verdict."""
    cfg = params.audit
    best = best_guesses(res.scores, res.included, ledger.delta, cfg.confidence)
    claimed = compose_epsilon([sgd], ledger.delta, ledger.accountant)
    ceiling = max_epsilon(cfg.canaries, ledger.delta, cfg.confidence)
    out: dict[str, Any] = {
        "eps_hat": float(best["eps"]),
        "claimed_epsilon": claimed,
        "noise_multiplier": sgd.noise_multiplier,
        "guesses": int(best["r"]),
        "correct": int(best["v"]),
        "verdict": verdict(float(best["eps"]), claimed, ceiling),
    }
    mismatch = settings_mismatch(res, sgd, params.finetune.clip, params.privacy.dataset_size)
    if seeded:
        out["verdict"] = FAIL
        out["reason"] = (
            "privacy.randomness is seeded: the noise is replayable from the public seed (replayed "
            f"and subtracted: eps_hat = {out['eps_hat']:.2f} against the {claimed:.2f} claimed)"
        )
    elif mismatch is not None:
        out["verdict"], out["reason"] = FAIL, mismatch
    elif out["verdict"] == FAIL:
        out["reason"] = (
            f"the audit certifies eps >= {out['eps_hat']:.3f} at {cfg.confidence:.0%} confidence, "
            f"above the {claimed:.3f} the DP-SGD settings claim: the code leaks more than it accounts for"
        )
    return out


def white_box(
    params: Params, paths: Paths, method: str, ledger: Ledger
) -> tuple[dict[str, Any], dict[str, CanaryRun]]:
    """The resolvable run, then (unless it failed) the release run; their report and runs."""
    cfg = params.audit
    sgd = next(m for m in ledger.mechanisms if m.name == "dp_sgd")
    ceiling = max_epsilon(cfg.canaries, ledger.delta, cfg.confidence)
    seeded = params.privacy.randomness == "seeded"
    report: dict[str, Any] = {
        "canaries": cfg.canaries,
        "max_epsilon": ceiling,
        "confidence": cfg.confidence,
        "network": {"channels": list(cfg.channels), "attention": list(cfg.attention)},
    }
    resolvable = calibrate_noise_multiplier(
        cfg.resolvable_epsilon,
        ledger.delta,
        sample_rate=sgd.sample_rate,
        steps=sgd.steps,
        accountant=ledger.accountant,
    )
    res = canary_run(params, paths, method, resolvable.noise_multiplier, resolvable.steps, seeded)
    runs = {"resolvable": res}
    report["resolvable"] = judge(params, res, resolvable, ledger, seeded)
    report["observed"] = res.observed()
    if report["resolvable"]["verdict"] != FAIL:
        public = layout(params, paths)
        planned = plan(params, method_row(method), public).dp_sgd  # as fine-tuning plans it
        res = canary_run(params, paths, method, planned.noise_multiplier, planned.steps, seeded)
        runs["release"] = res
        report["release"] = judge(params, res, sgd, ledger, seeded)
        report["observed"] = res.observed()
        if report["release"]["verdict"] == "inconclusive":
            report["release"]["canaries_needed"] = canaries_needed(
                report["release"]["claimed_epsilon"], ledger.delta, cfg.confidence, cfg.canaries
            )
    verdicts = [r["verdict"] for r in (report.get("resolvable"), report.get("release")) if r]
    report["verdict"] = (
        FAIL if FAIL in verdicts else min(verdicts, key=("conclusive-pass", "inconclusive").index)
    )
    failed = next(
        (r for r in (report["resolvable"], report.get("release")) if r and "reason" in r), None
    )
    if failed is not None:
        report["reason"] = failed["reason"]
    return report, runs


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


def blackbox(params: Params, paths: Paths, method: str) -> str:
    """Membership AUC of the released model (training vs held-out test images), written with its
    figure to the private zone (an exact function of training images); returns the file's path."""
    from scipy.stats import rankdata

    train, test = load_training(paths), load_npz(paths.test)
    n = min(params.audit.blackbox_count, len(train), len(test))
    rng = np.random.default_rng(params.seed)
    tr = np.sort(rng.permutation(len(train))[:n])
    te = np.sort(rng.permutation(len(test))[:n])
    s_in = membership_scores(params, paths, method, train.x[tr], train.y[tr])
    s_out = membership_scores(params, paths, method, test.x[te], test.y[te])
    ranks = rankdata(np.concatenate([s_in, s_out]))
    auc = (ranks[:n].sum() - n * (n + 1) / 2) / (n * n)
    included = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    fig = audit_figure(
        {"training vs held-out": (np.concatenate([s_in, s_out]), included)},
        title=f"{NOT_PRIVATE}: {method} membership score (AUC {auc:.3f})",
        xlabel="minus the denoising loss",
    )
    save_figure(fig, paths.private_figure(method, "audit", "membership"))
    write_json(
        paths.membership(method),
        {"blackbox_auc": float(auc), "blackbox_count": n, "note": NOT_PRIVATE},
    )
    record_nonprivate_use(
        params, paths, method, "audit", published=False, reason="membership AUC (private zone)"
    )
    return str(paths.membership(method))
