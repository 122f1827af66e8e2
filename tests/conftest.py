"""No test writes into the user's real spend store: each test module gets its own (its
module-scoped fixtures, such as a whole tiny pipeline run, are built before any function-scoped
fixture), and each test a fresh, empty one. Pipeline subprocesses and notebook kernels inherit
the variable.

Under pytest-xdist (``-n auto --dist loadfile`` in pyproject) each worker gets its share of the
cores, for its own torch and BLAS and, through ``OMP_NUM_THREADS``, for the kernels and
subprocesses it starts (the same thread count in and out of process, so a value computed both ways
is the same float), and the files that run the whole pipeline are handed out first, one to each
worker, so they do not end the run alone on one core."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from easyhard.privacy.spend import ENV_DIR

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _threads = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)
    threadpool_limits(_threads)

#: Test files whose module fixtures run the whole pipeline, longest first (``--no-loadscope-reorder``
#: keeps this order; xdist's default would put the files with the most tests first).
LONGEST_FIRST = ("test_post_processing.py", "test_pipeline.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest test files first, the others in their usual order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="module", autouse=True)
def module_spend_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``EASYHARD_SPEND_DIR`` for what a test module builds outside its tests."""
    store = tmp_path_factory.mktemp("module-spend-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_DIR, str(store))
        yield store


@pytest.fixture(autouse=True)
def spend_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ``EASYHARD_SPEND_DIR`` for this test."""
    store = tmp_path_factory.mktemp("spend-store")
    monkeypatch.setenv(ENV_DIR, str(store))
    return store
