"""The one line of plumbing every pipeline notebook runs: validated params and the repo layout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from easyhard.config import Params, load_params
from easyhard.pipeline.paths import Paths, find_root


def setup(
    overrides: Mapping[str, Any] | None = None, root: str | Path | None = None
) -> tuple[Params, Paths]:
    """``params.yaml`` of the repository (found upward from ``root`` or the working folder), with
    ``overrides`` (sections of params.yaml, merged key by key) applied; and its :class:`Paths`."""
    base = find_root(root)
    return load_params(base / "params.yaml", overrides or None), Paths(base)
