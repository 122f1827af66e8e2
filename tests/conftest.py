"""Every test gets its own spend store: nothing is written into the user's real one (the
pipeline's subprocesses inherit the environment variable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyhard.privacy.spend import ENV_DIR


@pytest.fixture(autouse=True)
def spend_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ``EASYHARD_SPEND_DIR`` for this test."""
    store = tmp_path_factory.mktemp("spend-store")
    monkeypatch.setenv(ENV_DIR, str(store))
    return store
