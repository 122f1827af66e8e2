"""dvc.yaml cannot go stale: every stage lists exactly the code it can reach and the keys it reads.

* deps: the notebook plus the import closure of its code (and of the runner), computed from the
  source by :mod:`easyhard.pipeline.deps`; a file missing from dvc.yaml would let DVC call a stale
  output up to date, an extra one would rerun a stage (maybe a privacy release) for nothing.
* params: every stage is run in-process on tiny params (every method, both central-image types,
  every sampler) while each access to a params key is recorded; dvc.yaml's ``params`` must be
  exactly the keys read.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from easyhard.config import SAMPLERS, Params
from easyhard.pipeline import deps
from easyhard.pipeline.notebook import setup
from tests.test_pipeline import TINY, write_params

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
SECTION_TYPES = typing.get_type_hints(Params)


def _stage(name: str) -> dict:
    return DVC[name].get("do", DVC[name])


@pytest.mark.parametrize("name", list(DVC))
def test_stage_deps_are_exactly_the_code_it_can_reach(name):
    notebook = deps.stage_notebooks()[name]
    expected = set(deps.notebook_deps(notebook))
    listed = {d if isinstance(d, str) else next(iter(d)) for d in _stage(name)["deps"]}
    code = {d for d in listed if d.endswith((".py", ".ipynb")) or d == "easyhard"}
    assert code == expected, (
        f"{name}: missing {sorted(expected - code)}, not reachable {sorted(code - expected)}"
    )


def test_closure_follows_imports_inside_functions_and_package_inits(tmp_path):
    pkg = tmp_path / "easyhard"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from easyhard import a\n")
    (pkg / "a.py").write_text("def f():\n    from easyhard import b\n")
    (pkg / "b.py").write_text("import os\n")
    (pkg / "c.py").write_text("")  # never imported
    got = deps.closure(["from easyhard.sub import thing"], tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in got} == {
        "easyhard/__init__.py",
        "easyhard/sub/__init__.py",
        "easyhard/a.py",
        "easyhard/b.py",
    }


# ----------------------------------------------------------------------------- params keys
@contextmanager
def recording(params: Params, into: set[str]) -> Iterator[None]:
    """Record ``section.key`` (and top-level keys) of every read of ``params`` meanwhile (only of
    these objects: a config rebuilt from a model file is not a params read)."""
    tracked = {id(params)} | {id(getattr(params, s)) for s in SECTION_TYPES}
    classes: dict[type, str | None] = {Params: None}
    for section, tp in SECTION_TYPES.items():
        if dataclasses.is_dataclass(tp):
            classes[tp] = section
    saved = {cls: cls.__getattribute__ for cls in classes}

    def spy(cls: type, section: str | None):
        original, names = saved[cls], {f.name for f in dataclasses.fields(cls)}

        def getattribute(self, attr):
            value = original(self, attr)
            if attr in names and id(self) in tracked:
                if section is None:
                    if not dataclasses.is_dataclass(value):
                        into.add(attr)
                else:
                    into.add(f"{section}.{attr}")
            return value

        return getattribute

    for cls, section in classes.items():
        cls.__getattribute__ = spy(cls, section)
    try:
        yield
    finally:
        for cls, original in saved.items():
            cls.__getattribute__ = original


def _expand(entries: list[str]) -> set[str]:
    """dvc.yaml params entries (sections or section.key) as the set of keys they cover."""
    keys = set()
    for entry in entries:
        tp = SECTION_TYPES.get(entry)
        if dataclasses.is_dataclass(tp):
            keys |= {f"{entry}.{f.name}" for f in dataclasses.fields(tp)}
        else:
            keys.add(entry)
    return keys


@pytest.fixture(scope="module")
def keys_read(tmp_path_factory) -> dict[str, set[str]]:
    """Run every stage on tiny params and record the keys each reads (union over variants)."""
    from easyhard.pipeline import (
        audit,
        central_images,
        evaluate,
        fid_reference,
        frequency,
        launch,
        prepare,
        pretrain,
        report,
        sample,
        sharing,
    )
    from easyhard.pipeline.release import layout

    read: dict[str, set[str]] = {name: set() for name in DVC}

    def run(stage: str, fn, params: Params, *args) -> None:
        with recording(params, read[stage]):
            fn(params, *args)

    root = tmp_path_factory.mktemp("keys")
    write_params(root, TINY)
    params, paths = setup(root=root)
    run("prepare", prepare.run, params, paths)
    run("fid_reference", fid_reference.run, params, paths)
    public = layout(params, paths)
    for m in params.methods:
        # the launcher's decision whether the method's run is another's (the first stage's)
        run("central", lambda p, name: sharing.same_as(p, public, name), params, m)
        run("central", central_images.run, params, paths, m)
        run("frequency", frequency.run, params, paths, m)
        run("pretrain", pretrain.run, params, paths, m)
        run("finetune", launch.run_finetune, params, paths, m)
        run("sample", sample.run, params, paths, m)
        run("evaluate", evaluate.run, params, paths, m)
        run("audit", audit.run, params, paths, m)
    run("report", report.run, params, paths)
    # the branches the defaults do not take: mode central images, every sampler
    mode, _ = setup({"central": {"type": "mode"}}, root)
    run("central", central_images.run, mode, paths, "dpfeta")
    for sampler in SAMPLERS:
        over = {"sample": {"sampler": sampler, "steps": 3, "count": 10, "batch_size": 10}}
        over["sample"]["churn"] = 10.0 if sampler in ("heun", "euler") else 0.0
        variant, _ = setup(over, root)
        run("sample", sample.run, variant, paths, "dpfeta")
    return read


@pytest.mark.parametrize("name", list(DVC))
def test_stage_params_are_exactly_the_keys_it_reads(name, keys_read):
    listed = _expand(_stage(name).get("params", []))
    read = keys_read[name]
    assert listed == read, (
        f"{name}: read but not listed {sorted(read - listed)}, "
        f"listed but never read {sorted(listed - read)}"
    )


@pytest.mark.parametrize("name", list(DVC))
def test_papermill_injects_only_declared_parameters(name):
    """The runner injects ``method`` into per-method notebooks and nothing else, and every
    notebook declares what it is given: papermill never warns 'Passed unknown parameter'."""
    import papermill as pm

    notebook = deps.stage_notebooks()[name]
    declared = set(pm.inspect_notebook(str(notebook)))
    injected = {"method"} if "--method" in _stage(name)["cmd"] else set()
    assert injected <= declared, f"{notebook.name}: injects {injected - declared} undeclared"
    assert declared <= {"method", "overrides"}
