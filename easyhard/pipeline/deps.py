"""The project files a pipeline notebook's code can reach: the import closure DVC must track.

A stage's output is stale when any code its notebook runs has changed, so each stage's ``deps`` in
``dvc.yaml`` must list the notebook and every ``easyhard`` module it can import, directly or
through other modules, at module level or inside functions (and the packages' ``__init__`` files,
which run on import). :func:`closure` computes that set statically from the source;
``tests/test_dvc_deps.py`` checks ``dvc.yaml`` against it, and

    python -m easyhard.pipeline.deps [STAGE ...]

prints the ``deps`` list each stage should have (``--write`` puts it into ``dvc.yaml``, keeping
each stage's data dependencies).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "easyhard"


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(tree: ast.AST, current: str, is_package: bool) -> set[str]:
    """Names of every module an AST imports (absolute, relative resolved), anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = current.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # maybe submodules
    return found


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def closure(sources: Iterable[str], root: Path = ROOT) -> set[Path]:
    """Files of every project module reachable from the given source texts (notebook cells)."""
    todo: list[str] = []
    for text in sources:
        todo.extend(_imports(ast.parse(text), "__main__", False))
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        seen.add(name)
        path = module_file(name, root)
        if path is None:
            continue  # an attribute imported from a module (``from m import f``), not a module
        files.add(path)
        todo.extend(_with_parents(name))  # importing a.b.c runs a/__init__ and a/b/__init__
        tree = ast.parse(path.read_text(), filename=str(path))
        todo.extend(_imports(tree, name, path.name == "__init__.py"))
    return files


def notebook_sources(path: Path) -> list[str]:
    """The code cells of a notebook (IPython magics and shell escapes dropped)."""
    book = json.loads(path.read_text())
    out = []
    for cell in book["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"])
            out.append(
                "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!")))
            )
    return out


#: Every stage's command runs the notebook through this module (validation, atomic output).
RUNNER = "import easyhard.run"


def notebook_deps(notebook: Path, root: Path = ROOT) -> list[str]:
    """The notebook and every project file its code (and the runner's) can reach, relative to
    ``root``, sorted."""
    files = closure([*notebook_sources(notebook), RUNNER], root)
    return sorted([str(notebook.relative_to(root)), *(str(f.relative_to(root)) for f in files)])


def stage_notebooks(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, Path]:
    """Each stage of ``dvc.yaml`` and the notebook its command runs."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        words = body["cmd"].split()
        out[name] = dvc_yaml.parent / next(w for w in words if w.endswith(".ipynb"))
    return out


def write_deps(dvc_yaml: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite each stage's code dependencies (``easyhard/...``, ``notebooks/...`` lines of its
    ``deps``) in ``dvc.yaml`` to its current import closure; other lines are kept as they are."""
    notebooks = stage_notebooks(dvc_yaml)
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    out: list[str] = []
    stage: str | None = None
    in_deps = False
    for line in lines:
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage = stripped[:-1]
        if stripped == "deps:":
            in_deps, indent, written = True, line[: len(line) - len(line.lstrip())] + "  ", False
            out.append(line)
            continue
        if in_deps and stripped.startswith("- "):
            if stripped.startswith(("- easyhard/", "- notebooks/")):
                if not written and stage in notebooks:
                    out.extend(f"{indent}- {d}\n" for d in notebook_deps(notebooks[stage]))
                    written = True
                continue
            out.append(line)
            continue
        in_deps = False
        out.append(line)
    dvc_yaml.write_text("".join(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easyhard.pipeline.deps", description=__doc__)
    ap.add_argument("stages", nargs="*", help="stages of dvc.yaml (default: all)")
    ap.add_argument("--write", action="store_true", help="update dvc.yaml in place")
    args = ap.parse_args(argv)
    if args.write:
        write_deps()
        return 0
    notebooks = stage_notebooks()
    for name in args.stages or notebooks:
        if name not in notebooks:
            print(f"error: no stage {name!r} in dvc.yaml", file=sys.stderr)
            return 2
        print(f"{name}:")
        for dep in notebook_deps(notebooks[name]):
            print(f"  - {dep}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
