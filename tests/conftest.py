"""No test writes into the user's real spend store: each test module gets its own (its
module-scoped fixtures, such as a whole tiny pipeline run, are built before any function-scoped
fixture), and each test a fresh, empty one. Pipeline subprocesses and notebook kernels inherit
the variable.

Under pytest-xdist (``-n auto`` in pyproject) each worker gets its share of the cores, for its
own torch and, through ``OMP_NUM_THREADS``, for the kernels and subprocesses it starts, so the
workers do not oversubscribe the machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from easyhard.privacy.spend import ENV_DIR

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _threads = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


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
