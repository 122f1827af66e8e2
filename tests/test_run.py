"""The runner's tidy step: an executed notebook's bytes are a function of its inputs, whatever the
timing of the kernel's two output streams."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import nbformat

from easyhard.run import tidy_notebook


def _stream(name: str, text: str) -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def _notebook(outputs: list[dict]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("run()")
    cell["outputs"] = [nbformat.from_dict(o) for o in outputs]
    nb.cells = [cell]
    return nb


def _tidy(outputs: list[dict]) -> str:
    return json.dumps(tidy_notebook(_notebook(outputs), "x.ipynb"), sort_keys=True)


def _interleavings(a: list[dict], b: list[dict]):
    """Every order of a and b that keeps each one's own order (what two pipes can deliver)."""
    n = len(a) + len(b)
    for positions in itertools.combinations(range(n), len(a)):
        ia, ib, out = iter(a), iter(b), []
        for i in range(n):
            out.append(next(ia) if i in positions else next(ib))
        yield out


def test_any_timing_of_stdout_against_stderr_gives_the_same_notebook():
    """ipykernel flushes stdout and stderr on their own timers: a bar's closing newline on stderr
    may arrive before or after a print on stdout (it did, under load, in
    test_post_processing). Every such order must store the same bytes."""
    err = [
        _stream("stderr", "warning\n"),
        _stream("stderr", "bar 50%\rbar 100%"),
        _stream("stderr", "\n"),
    ]
    out = [_stream("stdout", "20 images\n"), _stream("stdout", "done\n")]
    stored = {_tidy(order) for order in _interleavings(err, out)}
    assert len(stored) == 1
    (cell,) = json.loads(stored.pop())["cells"]
    assert cell["outputs"] == [
        _stream("stderr", "warning\nbar 100%\n"),  # the bar's final line only
        _stream("stdout", "20 images\ndone\n"),
    ]


def test_a_display_between_streams_keeps_its_place():
    """Displays flush both streams before they are sent: what came before one stays before it."""
    image = {"output_type": "display_data", "data": {"text/plain": "<image>"}, "metadata": {}}
    a = [
        _stream("stdout", "before\n"),
        image,
        _stream("stderr", "x\n"),
        _stream("stdout", "after\n"),
    ]
    b = [
        _stream("stdout", "before\n"),
        image,
        _stream("stdout", "after\n"),
        _stream("stderr", "x\n"),
    ]
    assert _tidy(a) == _tidy(b)
    (cell,) = json.loads(_tidy(a))["cells"]
    kinds = [(o["output_type"], o.get("name")) for o in cell["outputs"]]
    assert kinds == [
        ("stream", "stdout"),
        ("display_data", None),
        ("stream", "stderr"),
        ("stream", "stdout"),
    ]


def test_timings_and_random_ids_are_dropped():
    nb = _notebook([_stream("stdout", "hi\n")])
    nb.metadata["papermill"] = {"start_time": "t0", "end_time": "t1", "duration": 3.0}
    nb.cells[0]["metadata"]["execution"] = {"iopub.status.busy": "t"}
    tidy = tidy_notebook(nb, "out.ipynb")
    assert tidy.metadata["papermill"] == {"output_path": "out.ipynb"}
    assert tidy.cells[0]["id"] == "cell-0" and "execution" not in tidy.cells[0]["metadata"]


def test_runner_does_not_import_torch():
    """Every stage starts this process before its kernel: torch (~2 s, ~4 s a stage with what it
    pulls in) is the kernel's to import, not the launcher's."""
    code = "import sys, easyhard.run; print('torch' in sys.modules, 'papermill' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
