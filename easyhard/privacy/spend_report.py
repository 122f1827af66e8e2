"""The ``python -m easyhard.privacy total`` command: what the per-user spend store holds.

For every data source: its uses (releases and non-private uses), how often its data changed, and
the published total (:func:`easyhard.privacy.spend.total`); with ``--per-record`` the owner's view
(:mod:`easyhard.privacy.per_record`), a function of the data, for the owner's terminal only. The
last line is ``epsilon=...`` of this repository's source (else of the source that spent most).
"""

from __future__ import annotations

import argparse
from typing import Any


def _use_row(use: Any) -> str:
    what = ", ".join(
        f"{m.name}(sigma={m.noise_multiplier:.4g}, q={m.sample_rate:g}, T={m.steps})"
        for m in use.mechanisms
    )
    flags = f"{str(use.private).lower():<8} {str(use.published).lower():<9}"
    return f"  {use.method:<10} {use.stage:<10} {flags} {what or use.reason}"


def _current_source(root: Any) -> tuple[str | None, dict[str, Any]]:
    """This repository's data source id and privacy section (None, {} without a params.yaml)."""
    from easyhard.config import load_params
    from easyhard.pipeline.paths import Paths
    from easyhard.pipeline.release import data_source

    if not (root / "params.yaml").is_file():
        return None, {}
    params = load_params(root / "params.yaml")
    privacy = {"delta": params.privacy.delta, "accountant": params.privacy.accountant}
    return data_source(params, Paths(root.resolve())).id, privacy


def print_total(args: argparse.Namespace) -> None:
    """``python -m easyhard.privacy total``: every source in the spend store, its uses and its
    published total; with ``--per-record`` the owner's per-record view (for the terminal only)."""
    from pathlib import Path

    from easyhard.privacy import spend

    current, privacy = _current_source(Path(args.root))
    delta = args.delta if args.delta is not None else privacy.get("delta")
    if delta is None:
        raise ValueError("no --delta given and no params.yaml in --root")
    accountant = args.accountant or privacy.get("accountant", "prv")
    store = spend.store_dir()
    found = spend.sources(store)
    if not found:
        raise ValueError(f"no use of any data source recorded in {store}")
    print(f"spend store: {store} (${spend.ENV_DIR} overrides it)")
    totals, worst = {}, {}
    for sid, source in found.items():
        mark = " (params.yaml's data)" if sid == current else ""
        print(f"\nsource {sid}: {source.name}{f' at {source.root}' if source.root else ''}{mark}")
        uses = spend.uses(store, sid)
        print(
            f"  {'method':<10} {'stage':<10} {'private':<8} {'published':<9} mechanisms / why not"
        )
        for use in uses:
            print(_use_row(use))
        prints = list(dict.fromkeys(u.fingerprint for u in uses))
        print(
            f"  data fingerprints: {len(prints)} distinct"
            + (" (the data changed between uses)" if len(prints) > 1 else "")
        )
        tot = spend.total(store, sid, delta=delta, accountant=accountant)
        print(
            f"  published total epsilon ({accountant}, delta={delta:g}) over {tot.releases} "
            f"releases: {tot.epsilon:.4f}"
        )
        for why in tot.reasons:
            print(f"    infinite: {why}")
        if tot.reasons:
            print(f"    (the private releases alone: {tot.epsilon_private:.4f})")
        for why in tot.kept_private:
            print(f"  kept in the private zone (not in the total): {why}")
        totals[sid] = tot.epsilon
        if args.per_record:
            from easyhard.privacy.per_record import VIEW_ACCOUNTANT, per_record, table

            acc = args.accountant or VIEW_ACCOUNTANT
            view = per_record(store, sid, delta=delta, accountant=acc, detail=args.detail)
            print("\n".join(table(view)))
            worst[sid] = view.epsilon
    # the last line: this repository's data source, else the most spent by any one source
    sid = current if current in totals else max(totals, key=lambda k: totals[k])
    print(f"epsilon={totals[sid]!r}")
    if args.per_record:
        print(f"per_record_epsilon={worst[sid]!r}")
