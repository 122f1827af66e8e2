"""Paper-scale parameter profiles: ``profiles/<dataset>-eps<1|10>.yaml`` (DP-FETA) and
``profiles/fetapro-<dataset>-eps<1|10>.yaml`` (FETA-Pro) on top of ``params.yaml``.

A profile file holds only the keys it overrides, an optional ``base`` (another profile it extends)
and a ``profile`` block of metadata that is not a parameter: the dataset, the published numbers
(DPImageBench), the published network size and estimated GPU cost. Its method is ``methods``. ::

    python -m easyhard.profiles list                 # an aligned table: name, methods, ε, dataset
    python -m easyhard.profiles check [NAME ...]     # validate + plan each method's privacy budget
    python -m easyhard.profiles show NAME            # the merged params as YAML
    python -m easyhard.profiles apply NAME           # write them to params.yaml (validated first)
    python -m easyhard.profiles table                # the README's markdown table

then ``dvc exp run -n NAME``. ``git checkout params.yaml`` restores the CPU defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from easyhard.config import Params
from easyhard.schema import ConfigError, from_mapping, merge

PROFILE_DIR = Path(__file__).resolve().parents[1] / "profiles"


@dataclass(frozen=True)
class Profile:
    """One resolved profile: its overrides (``base`` chain merged) and its metadata."""

    name: str
    overrides: dict[str, Any]
    meta: dict[str, Any]

    def params(self, base: Mapping[str, Any]) -> Params:
        """The validated :class:`Params` of ``base`` (params.yaml's mapping) plus the overrides."""
        return from_mapping(Params, self.merged(base))

    def merged(self, base: Mapping[str, Any]) -> dict[str, Any]:
        return merge(base, self.overrides)


def names(directory: Path | None = None) -> list[str]:
    """Every profile in ``directory`` (default :data:`PROFILE_DIR`), sorted."""
    return sorted(p.stem for p in (directory or PROFILE_DIR).glob("*.yaml"))


def load(name: str, directory: Path | None = None) -> Profile:
    """Read profile ``name`` and the chain of profiles it extends (``base``)."""
    directory = directory or PROFILE_DIR
    chain: list[str] = []
    overrides: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    current: str | None = name
    while current is not None:
        if current in chain:
            raise ConfigError(f"profile {name!r}: 'base' loops ({' -> '.join([*chain, current])})")
        path = directory / f"{current}.yaml"
        if not path.is_file():
            known = ", ".join(names(directory)) or "none"
            raise ConfigError(f"profile {current!r} not found in {directory} (known: {known})")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a profile must be a mapping")
        chain.append(current)
        current = data.pop("base", None)
        meta = merge(data.pop("profile", None) or {}, meta)
        overrides = merge(data, overrides)
    return Profile(name, overrides, meta)


def read_base(params_file: str | Path = "params.yaml") -> dict[str, Any]:
    """The mapping in ``params_file`` (the defaults a profile is applied to)."""
    path = Path(params_file)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    return yaml.safe_load(path.read_text()) or {}


def plan(profile: Profile, params: Params, method_name: str | None = None) -> dict[str, Any]:
    """Privacy plan of one release of ``method_name`` (default: the profile's first method) at the
    declared ``privacy.dataset_size``: that method's own warm-ups (DP-FETA: the central images;
    FETA-Pro: the central images and the frequency release), what each costs alone, the calibrated
    DP-SGD sigma and steps, and the epsilon of the whole composition."""
    from easyhard.layout import public_layout
    from easyhard.pipeline.methods import method
    from easyhard.privacy import PrivacyBudgetError
    from easyhard.privacy.accounting import compose_epsilon
    from easyhard.privacy.plan import plan_release

    name = method_name or params.methods[0]
    p, ft = params.privacy, params.finetune
    try:
        row = method(name)
        release = plan_release(
            epsilon=p.epsilon,
            delta=p.delta,
            accountant=p.accountant,
            dataset_size=p.dataset_size,
            sample_rate=ft.sample_rate,
            epochs=ft.epochs,
            warmups=row.warmups(params, public_layout(params.data)),
        )
    except (PrivacyBudgetError, ValueError) as e:
        raise ConfigError(f"profile {profile.name} ({name}): {e}") from e
    alone = {m.name: compose_epsilon([m], p.delta, p.accountant) for m in release.warmups}
    return {
        "method": name,
        "mechanisms": release.mechanisms,
        "warmup_epsilons": alone,
        "central_epsilon": sum(e for k, e in alone.items() if k.startswith("central_images")),
        "warmup_epsilon": release.warmup_epsilon,
        "epsilon": compose_epsilon(list(release.mechanisms), p.delta, p.accountant),
        "noise_multiplier": release.dp_sgd.noise_multiplier,
        "steps": release.dp_sgd.steps,
        "expected_batch": ft.sample_rate * p.dataset_size,
    }


def check(name: str, base: Mapping[str, Any], with_plan: bool = True) -> dict[str, Any]:
    """Validate profile ``name`` on ``base``; returns its summary (raises :class:`ConfigError`).

    With ``with_plan``, ``plans`` holds :func:`plan` of each private method the profile runs (each
    run is its own release of ``privacy.epsilon``), and the summary that of the first of them."""
    from easyhard.pipeline.methods import method

    prof = load(name)
    params = prof.params(base)
    missing = [k for k in ("dataset", "published") if k not in prof.meta]
    if missing:
        raise ConfigError(f"profile {name}: 'profile' block lacks {', '.join(missing)}")
    out: dict[str, Any] = {"name": name, "params": params, "meta": prof.meta}
    if with_plan:
        plans = {m: plan(prof, params, m) for m in params.methods if method(m).private}
        if not plans:
            raise ConfigError(
                f"profile {name}: no private method in methods {list(params.methods)}"
            )
        out["plans"] = plans
        out.update(next(iter(plans.values())))
    return out


def apply(name: str, params_file: str | Path = "params.yaml") -> Params:
    """Write ``params_file`` = its current content + profile ``name``, validated before writing."""
    from easyhard.io import atomic_path

    base = read_base(params_file)
    prof = load(name)
    params = prof.params(base)  # refuses before anything is written
    header = (
        f"# easyhard params: profile {name} (profiles/{name}.yaml) applied by "
        "`python -m easyhard.profiles apply`.\n# `git checkout params.yaml` restores the defaults.\n"
    )
    body = yaml.safe_dump(prof.merged(base), sort_keys=False, default_flow_style=None, width=100)
    with atomic_path(params_file) as tmp:
        tmp.write_text(header + body)
    return params


def _fmt(x: Any, suffix: str = "") -> str:
    return "—" if x is None else f"{x:g}{suffix}"


def table(base: Mapping[str, Any]) -> str:
    """Markdown: profile, method, dataset, command, estimated GPU cost, DP-SGD plan (of the first
    method), published reference numbers."""
    rows = [
        "| profile | method | dataset | command | est. GPU time / memory | DP-SGD σ, steps | "
        "published FID / acc. (%) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names():
        s = check(name, base)
        m, pub = s["meta"], s["meta"]["published"]
        cmd = f"`python -m easyhard.profiles apply {name} && dvc exp run -n {name}`"
        cost = f"~{m.get('gpu_hours', '?')} h / ~{m.get('gpu_memory_gb', '?')} GB"
        dp = f"{s['noise_multiplier']:.3g}, {s['steps']}"
        ref = f"{_fmt(pub.get('fid'))} / {_fmt(pub.get('accuracy'))}"
        methods = ", ".join(s["params"].methods)
        rows.append(f"| {name} | {methods} | {m['dataset']} | {cmd} | {cost} | {dp} | {ref} |")
    return "\n".join(rows)


def listing(base: Mapping[str, Any]) -> list[str]:
    """An aligned plain-text table, one line per profile: its name, the methods it runs, its
    ``privacy.epsilon`` and its dataset (the merged values, so two profiles that differ only in ε
    read differently)."""
    rows = [("profile", "methods", "ε", "dataset")]
    for n in names():
        prof = load(n)
        merged = prof.merged(base)
        eps = (merged.get("privacy") or {}).get("epsilon")
        methods = ", ".join(merged.get("methods") or [])
        rows.append((n, methods, _fmt(eps), str(prof.meta.get("dataset", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m easyhard.profiles", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    c = sub.add_parser("check")
    c.add_argument("names", nargs="*")
    s = sub.add_parser("show")
    s.add_argument("name")
    a = sub.add_parser("apply")
    a.add_argument("name")
    sub.add_parser("table")
    ap.add_argument("--params", default="params.yaml", help="the params file (default params.yaml)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            print("\n".join(listing(read_base(args.params))))
        elif args.cmd == "check":
            base = read_base(args.params)
            for n in args.names or names():
                for m, r in check(n, base)["plans"].items():
                    warm = "".join(f"{k} eps {e:.3f}, " for k, e in r["warmup_epsilons"].items())
                    print(
                        f"{n}: ok ({m}: {warm}DP-SGD sigma {r['noise_multiplier']:.3f} x "
                        f"{r['steps']} steps, batch ~{r['expected_batch']:.0f}, "
                        f"total eps {r['epsilon']:.3f})"
                    )
        elif args.cmd == "show":
            print(yaml.safe_dump(load(args.name).merged(read_base(args.params)), sort_keys=False))
        elif args.cmd == "apply":
            apply(args.name, args.params)
            print(f"{args.params}: profile {args.name} applied; now `dvc exp run -n {args.name}`")
        else:
            print(table(read_base(args.params)))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
