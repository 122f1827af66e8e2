"""The package's shape: no import cycles, no oversized module, one atomic writer, one image-file
loader, one source of defaults."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import yaml

from easyhard.config import Params, defaults
from easyhard.pipeline.deps import _imports, module_file

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "easyhard"
MODULES = {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
    for p in PKG.rglob("*.py")
}


def _graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (anywhere in it, function-local imports too)."""
    graph = {}
    for name, path in MODULES.items():
        found = _imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {m for m in found if m in MODULES and m != name}
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_world_is_bottom_level():
    assert _graph()["easyhard.world"] == set()


def test_no_module_over_400_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: k for n, k in long.items() if k > 400} == {}


def _calls(path: Path, attr: str) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.Attribute) and n.attr == attr for n in ast.walk(tree)) or any(
        isinstance(n, ast.Name) and n.id == attr for n in ast.walk(tree)
    )


def test_one_atomic_writer_and_one_image_file_loader():
    writers = {
        n
        for n, p in MODULES.items()
        if _calls(p, "mkstemp") or _calls(p, "replace") and _calls(p, "fsync")
    }
    assert writers == {"easyhard.io"}
    finders = {n for n, p in MODULES.items() if "rglob(" in p.read_text()}
    assert finders == {"easyhard.data"}  # data.image_files: every other loader uses it


def test_params_yaml_is_the_only_place_defaults_live():
    for tp in [Params, *typing.get_type_hints(Params).values()]:
        if dataclasses.is_dataclass(tp):
            with_default = [
                f.name
                for f in dataclasses.fields(tp)
                if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING
            ]
            assert with_default == [], f"{tp.__name__} has defaults for {with_default}"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(Params)}
    assert defaults() == Params(**{k: getattr(defaults(), k) for k in raw})


def test_allowed_values_are_defined_once():
    """Tuples of allowed values live in config/choices.py; other modules import them."""
    choices = (PKG / "config" / "choices.py").read_text()
    names = ("METHODS", "SAMPLERS", "CLASSIFIERS", "ACCOUNTANTS", "RANDOMNESS", "DATASETS")
    for name in (*names, "GRAD_SAMPLERS", "PRECISIONS"):
        assert f"\n{name} = (" in choices
        others = [
            n
            for n, p in MODULES.items()
            if n != "easyhard.config.choices" and f"\n{name} = " in p.read_text()
        ]
        assert others == [], f"{name} is defined again in {others}"
    assert module_file("easyhard.config.choices") == PKG / "config" / "choices.py"


def test_the_training_split_has_one_reader_and_one_writer():
    """The sensitive training split is read only through ``zones.load_training`` (which refuses in
    a public-zone stage) and written only by the prepare stage; no other code names its path."""
    allowed = {"easyhard/pipeline/zones.py", "easyhard/pipeline/prepare.py"}
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel in allowed or rel == "easyhard/pipeline/paths.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "train":
                if isinstance(node.value, ast.Name) and node.value.id == "paths":
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_stages_that_read_the_training_split_are_private_zone_notebooks():
    """Every stage module that calls ``load_training`` runs as a private-zone notebook, and its
    dvc.yaml command writes the executed notebook under private/."""
    from easyhard.pipeline.zones import PRIVATE_NOTEBOOKS

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    readers = {
        p.stem
        for p in (PKG / "pipeline").glob("*.py")
        if "load_training(" in p.read_text() and p.stem != "zones"
    }
    stage_of = {"central_images": "central"}
    readers = {m for m in readers if stage_of.get(m, m) in dvc}  # stage modules, not helpers
    assert {"prepare", "central_images", "frequency", "finetune", "audit"} <= readers | {"prepare"}
    for stage_module in readers:
        name = stage_of.get(stage_module, stage_module)
        body = dvc[name].get("do", dvc[name])
        notebook = next(w for w in body["cmd"].split() if w.startswith("notebooks/"))
        assert Path(notebook).stem in PRIVATE_NOTEBOOKS, stage_module
        out = body["cmd"].split()[body["cmd"].split().index(notebook) + 1]
        assert out.startswith("private/"), (stage_module, out)
    for name, stage in dvc.items():
        body = stage.get("do", stage)
        for entry in [*body.get("deps", []), *body.get("outs", []), *body.get("metrics", [])]:
            path = entry if isinstance(entry, str) else next(iter(entry))
            assert not path.startswith("private/"), (name, path)
