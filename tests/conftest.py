"""No test writes into the user's real spend store: the session gets its own (module-scoped
fixtures such as a whole tiny pipeline run are built before any function-scoped fixture), and
every test a fresh, empty one. Pipeline subprocesses and notebook kernels inherit the variable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from easyhard.privacy.spend import ENV_DIR


@pytest.fixture(scope="session", autouse=True)
def session_spend_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``EASYHARD_SPEND_DIR`` for everything the session builds outside a test."""
    store = tmp_path_factory.mktemp("session-spend-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_DIR, str(store))
        yield store


@pytest.fixture(autouse=True)
def spend_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ``EASYHARD_SPEND_DIR`` for this test."""
    store = tmp_path_factory.mktemp("spend-store")
    monkeypatch.setenv(ENV_DIR, str(store))
    return store
