"""No test writes into the user's real spend store: each test module gets its own (its
module-scoped fixtures, such as a whole tiny pipeline run, are built before any function-scoped
fixture), and each test a fresh, empty one. Pipeline subprocesses and notebook kernels inherit
the variable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from easyhard.privacy.spend import ENV_DIR


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
