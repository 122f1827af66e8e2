"""What a failing stage leaves on the terminal: its one-line error last (no papermill "Executing:
100%" after it) and no kernel-transport warning (the kernel runs over IPC, easyhard.run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from easyhard.schema import merge

ROOT = Path(__file__).resolve().parents[1]


def test_a_failing_public_stage_ends_with_its_one_line_error(tmp_path):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = {"data": {"name": "digits"}, "privacy": {"dataset_size": 1438, "delta": 1e-4}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merge(base, tiny)))
    out = "data/fid_reference/02_fid_reference.ipynb"  # public; data/prepared/test.npz is absent
    r = subprocess.run(
        [sys.executable, "-m", "easyhard.run", str(ROOT / "notebooks/02_fid_reference.ipynb"), out],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: DataError: data file not found") and "test.npz" in last, r.stderr
    both = r.stdout + r.stderr
    assert "Executing" not in both and "100%" not in both
    assert "TCP without encryption" not in both and "[IPKernelApp] WARNING" not in both
    assert not (tmp_path / out).exists()


def test_parameter_cells_and_the_runner_name_every_method():
    import json

    from easyhard.config import METHODS

    listed = " | ".join(METHODS)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        lines = [ln for c in cells for ln in c["source"] if ln.startswith("method = ")]
        for line in lines:
            assert f"# {listed} " in line, (path.name, line)


def test_the_runner_help_names_every_method(capsys):
    import pytest

    from easyhard.config import METHODS
    from easyhard.run import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert " | ".join(METHODS) in " ".join(capsys.readouterr().out.split())
