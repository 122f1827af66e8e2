"""easyhard.sweep on fabricated `dvc exp show --json` output and metrics files."""

from __future__ import annotations

import json

import pytest

from easyhard import sweep


def metrics(eps: float, fid: float, acc: float) -> dict:
    """What the evaluate stage writes to metrics.json (easyhard.pipeline.evaluate.headline)."""
    return {
        "epsilon": eps * 0.998,
        "private": True,
        "fid": fid,
        "cnn": acc,
        "cnn_sd": 0.01,
        "resnet": acc - 0.05,
        "resnet_sd": 0.02,
        "logreg": acc - 0.1,
        "logreg_sd": 0.0,
    }


def write_run(folder, eps: float, data: dict) -> str:
    """runs/<m>/metrics.json and the evaluate/details.json beside it (holding the target)."""
    f = folder / "metrics.json"
    (folder / "evaluate").mkdir(parents=True)
    f.write_text(json.dumps(data))
    (folder / "evaluate" / "details.json").write_text(json.dumps({"target_epsilon": eps}))
    return str(f)


def state(rev: str, name: str | None, eps: float, fid: float, acc: float, exps=None) -> dict:
    """One ExpState as `dvc exp show --json` (DVC 3) writes it."""
    return {
        "rev": rev,
        "name": name,
        "data": {
            "rev": rev,
            "timestamp": None,
            "params": {"params.yaml": {"data": {"privacy": {"epsilon": eps, "delta": 1e-5}}}},
            "metrics": {
                "runs/dpfeta/metrics.json": {"data": metrics(eps, fid, acc)},
                "runs/dpdm/metrics.json": {"data": metrics(eps, fid * 1.3, acc - 0.3)},
                "runs/broken/metrics.json": {"error": {"type": "FileNotFoundError"}},
            },
            "deps": {},
            "outs": {},
            "meta": {},
        },
        "error": None,
        "experiments": exps,
    }


EXP_SHOW = [
    state("workspace", None, 10.0, 240.0, 0.6),
    state(
        "a" * 40,
        "main",
        10.0,
        240.0,
        0.6,
        exps=[
            {"revs": [state("b" * 40, "eps-1", 1.0, 320.0, 0.3)], "name": "eps-1"},
            {"revs": [state("c" * 40, "eps-5", 5.0, 280.0, 0.5)], "name": "eps-5"},
            {"revs": [{"rev": "d" * 40, "name": "failed", "data": None, "error": {"msg": "x"}}]},
        ],
    ),
]


def test_rows_from_exp_show():
    rows = sweep.rows_from_exp_show(EXP_SHOW)
    # 3 distinct successful states x 2 methods (the broken metrics file skipped); the workspace
    # holds exactly what "main" does (the run committed with it) and is not counted again
    assert len(rows) == 6
    by = {(r["experiment"], r["method"]): r for r in rows}
    assert by[("eps-1", "dpfeta")]["target_epsilon"] == 1.0
    assert by[("eps-1", "dpfeta")]["fid"] == 320.0
    assert by[("eps-5", "dpdm")]["cnn"] == pytest.approx(0.2)
    assert ("main", "dpdm") in by and ("workspace", "dpfeta") not in by
    # a workspace that differs (a run not yet committed) is a run of its own
    fresh = [state("workspace", None, 10.0, 250.0, 0.6), *EXP_SHOW[1:]]
    assert ("workspace", "dpfeta") in {
        (r["experiment"], r["method"]) for r in sweep.rows_from_exp_show(fresh)
    }


def test_after_dvc_exp_run_the_workspace_is_not_a_second_repeat():
    """`dvc exp run` leaves its params and metrics in the workspace: the summary counts that
    experiment once."""
    exp = state("b" * 40, "eps-1", 1.0, 320.0, 0.3)
    base = state("a" * 40, "main", 10.0, 240.0, 0.6, exps=[{"revs": [exp], "name": "eps-1"}])
    rows = sweep.rows_from_exp_show([state("workspace", None, 1.0, 320.0, 0.3), base])
    (row,) = [
        s for s in sweep.summarise(rows) if s["method"] == "dpfeta" and s["target_epsilon"] == 1.0
    ]
    assert row["repeats"] == 1 and row["experiments"] == ["eps-1"]
    # while the next experiment runs: its params in the workspace beside the last one's metrics
    running = state("workspace", None, 10.0, 320.0, 0.3)
    running["data"]["metrics"] = exp["data"]["metrics"]
    rows = sweep.rows_from_exp_show([running, base])
    assert [r["experiment"] for r in rows if r["method"] == "dpfeta"] == ["main", "eps-1"]


def test_outputs_and_table(tmp_path):
    rows = sweep.rows_from_exp_show(EXP_SHOW)
    written = sweep.write_outputs(rows, tmp_path)
    assert json.loads(written["runs"].read_text()) == rows
    assert json.loads(written["json"].read_text()) == sweep.summarise(rows)
    assert written["figure"].stat().st_size > 0
    table = sweep.markdown_table(rows)
    assert table[0].startswith("| experiment | method | ε target |") and len(table) == 2 + 6 + 2
    assert table[-1].startswith("± : standard deviation over classifier seeds")
    assert "| eps-1 | dpfeta | 1 | 0.998 | 320.0 | 0.300 ± 0.010 |" in "\n".join(table)
    with pytest.raises(ValueError, match="no runs"):
        sweep.write_outputs([], tmp_path)


def test_figure_axes():
    from easyhard.plots import quality_vs_epsilon_figure

    fig = quality_vs_epsilon_figure(sweep.rows_from_exp_show(EXP_SHOW))
    ax_fid, ax_acc = fig.axes
    assert ax_fid.get_xscale() == "log" and ax_acc.get_xscale() == "log"
    assert len(ax_acc.containers) == 6  # 2 methods x 3 classifiers, with error bars
    repeat = state("f" * 40, "eps-10-s1", 10.0, 250.0, 0.62)
    entries = [{**EXP_SHOW[1], "experiments": [*EXP_SHOW[1]["experiments"], {"revs": [repeat]}]}]
    summary = sweep.summarise(sweep.rows_from_exp_show(entries))
    fig = sweep.summary_figure(summary, ["cnn", "resnet", "logreg"])
    ax_fid, ax_acc = fig.axes
    assert len(ax_acc.containers) == 6
    assert len(ax_fid.containers) == 2  # FID with its repeat spread, per method
    # main + eps-10-s1 at eps 10, one run at eps 1: the title says the range
    assert "± over 1–2 whole-pipeline repeats per point" in ax_acc.get_title()


def test_cli_on_metrics_files_and_exp_json(tmp_path, capsys):
    files = []
    for exp, eps in (("e1", 1.0), ("e10", 10.0)):
        for m in ("dpfeta", "dpdm"):
            files.append(
                write_run(tmp_path / exp / "runs" / m, eps, metrics(eps, 100.0 / eps, 0.5))
            )
    out = tmp_path / "out"
    assert sweep.main([*files, "--out", str(out)]) == 0
    assert "| dpdm | 1 |" in capsys.readouterr().out
    assert len(json.loads((out / "sweep.json").read_text())) == 4
    exp_json = tmp_path / "exps.json"
    exp_json.write_text(json.dumps(EXP_SHOW))
    assert sweep.main(["--exp-json", str(exp_json), "--out", str(out)]) == 0
    assert sweep.main([str(tmp_path / "missing.json"), "--out", str(out)]) == 2


def test_the_non_private_ceiling_has_no_epsilon_spent(tmp_path, capsys):
    """The ceiling's metrics.json says epsilon: null (not a release): no target ε, spent ∞, and a
    horizontal line in the figure, never a point at a target ε it does not have."""

    data = {**metrics(10.0, 140.0, 0.75), "epsilon": None, "private": False}
    f = write_run(tmp_path / "runs" / "nonprivate", 10.0, data)
    assert sweep.main([f, "--out", str(tmp_path / "out")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "nonprivate" in line)
    assert "| nonprivate | – | ∞ (not private) | 140.0 |" in row
    rows = sweep.rows_from_metrics_files([f]) + sweep.rows_from_exp_show(EXP_SHOW)
    ax_fid, _ = sweep.summary_figure(sweep.summarise(rows), ["cnn"]).axes
    flat = [ln for ln in ax_fid.get_lines() if ln.get_linestyle() == "--"]
    assert [ln.get_ydata()[0] for ln in flat] == [140.0]


def test_a_metrics_file_without_its_details_is_refused_in_one_line(tmp_path, capsys):
    f = tmp_path / "runs" / "dpfeta" / "metrics.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(metrics(1.0, 100.0, 0.5)))
    assert sweep.main([str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "details.json" in err and "\n" not in err


def test_repeats_are_summarised_as_mean_and_std_over_whole_pipeline_runs(tmp_path, capsys):
    """Three runs (seeds 0, 1, 2) of one method at one ε: sweep.json holds one row with the mean
    and the sample std over the repeats of the FID and of each classifier's accuracy."""
    files = []
    for seed, (fid, acc) in enumerate([(100.0, 0.5), (110.0, 0.6), (120.0, 0.7)]):
        f = write_run(tmp_path / f"r{seed}" / "runs" / "dpfeta", 1.0, metrics(1.0, fid, acc))
        details = tmp_path / f"r{seed}" / "runs" / "dpfeta" / "evaluate" / "details.json"
        details.write_text(json.dumps({"target_epsilon": 1.0, "seed": seed}))
        files.append(f)
    out = tmp_path / "out"
    assert sweep.main([*files, "--out", str(out)]) == 0
    (row,) = json.loads((out / "sweep.json").read_text())
    assert row["method"] == "dpfeta" and row["target_epsilon"] == 1.0
    assert row["repeats"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["fid"] == pytest.approx(110.0) and row["fid_std"] == pytest.approx(10.0)
    assert row["cnn_acc_mean"] == pytest.approx(0.6) and row["cnn_acc_std"] == pytest.approx(0.1)
    assert row["logreg_acc_mean"] == pytest.approx(0.5)
    text = capsys.readouterr().out
    assert "| dpfeta | 1 | 3 | 110.0 ± 10.0 | 0.600 ± 0.100 |" in text
    assert "standard deviation over whole-pipeline repeats" in text


def test_a_single_run_is_shown_without_a_spread():
    """One run has no repeat spread: its row shows the value alone, not "± 0"."""
    row = {"method": "dpfeta", "target_epsilon": 1.0, "epsilon": 1.0, "private": True}
    summary = sweep.summarise([{**row, "experiment": "e", "fid": 100.0, "cnn": 0.5}], ["cnn"])
    text = "\n".join(sweep.summary_table(summary, ["cnn"]))
    assert "| dpfeta | 1 | 1 | 100.0 | 0.500 |" in text and "± 0" not in text


def _fake_dvc(tmp_path, monkeypatch, exps):
    """A stand-in `dvc` on PATH that records its arguments and answers `exp show` with ``exps``."""
    import os
    import stat

    log = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "dvc"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        f'if [ "$1 $2" = "exp show" ]; then cat {tmp_path / "exps.json"}; fi\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "exps.json").write_text(json.dumps(exps))
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def test_run_queues_one_experiment_per_epsilon_and_repeat(tmp_path, monkeypatch, capsys):
    """`--run`: `dvc exp run -S privacy.epsilon=E -S seed=S` for each E and seed 0..R-1, in order,
    the sweep's files rewritten after each run (`exp show` between runs), then the collection."""
    log = _fake_dvc(tmp_path, monkeypatch, EXP_SHOW)
    out = tmp_path / "out"
    assert sweep.main(["--run", "--epsilon", "1", "10", "--repeats", "2", "--out", str(out)]) == 0
    calls = [c for c in log.read_text().splitlines() if c != "exp show --json"]
    assert calls == [
        "exp run -S privacy.epsilon=1 -S seed=0",
        "exp run -S privacy.epsilon=1 -S seed=1",
        "exp run -S privacy.epsilon=10 -S seed=0",
        "exp run -S privacy.epsilon=10 -S seed=1",
    ]
    assert log.read_text().splitlines().count("exp show --json") == 1 + 4 + 1
    assert (out / "sweep.json").is_file()
    with pytest.raises(ValueError, match="repeats"):
        sweep.experiment_commands([1.0], 0)


def test_a_rerun_resumes_the_sweep_and_passes_settings(tmp_path, monkeypatch):
    """(ε, seed) pairs `dvc exp show` already holds are not run again; `--set K=V` reaches every
    run as one more `-S`; the axes themselves cannot be set that way."""
    done = state("e" * 40, "eps-1-s0", 1.0, 300.0, 0.4)
    done["data"]["params"]["params.yaml"]["data"]["seed"] = 0
    log = _fake_dvc(tmp_path, monkeypatch, [*EXP_SHOW, done])
    args = ["--run", "--epsilon", "1", "--repeats", "2", "--set", "audit.enabled=false"]
    assert sweep.main([*args, "--out", str(tmp_path / "out")]) == 0
    runs = [c for c in log.read_text().splitlines() if c.startswith("exp run")]
    assert runs == ["exp run -S privacy.epsilon=1 -S seed=1 -S audit.enabled=false"]
    assert sweep.done_runs(sweep.rows_from_exp_show([done])) == {(1.0, 0)}
    for bad in ("seed=3", "privacy.epsilon=2", "audit.enabled"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            sweep.experiment_commands([1.0], 1, settings=[bad])


def _seeded(rev: str, name: str | None, eps: float, seed: int, fid: float, acc: float) -> dict:
    s = state(rev, name, eps, fid, acc)
    s["data"]["params"]["params.yaml"]["data"]["seed"] = seed
    return s


def test_saved_outputs_of_two_clones_count_each_run_once(tmp_path, capsys):
    """A sweep resumed in a new clone (another machine): its baseline commit holds the default
    run's metrics copied from the first clone, under another rev. Runs are told apart by their
    metrics (new secret noise never agrees to the last digit), so that run counts once."""
    default = _seeded("a" * 40, "main", 10.0, 0, 240.0, 0.6)
    first = [
        {**_seeded("workspace", None, 1.0, 0, 320.0, 0.3)},
        {**default, "experiments": [{"revs": [_seeded("b" * 40, "e1", 1.0, 0, 320.0, 0.3)]}]},
    ]
    second = [
        _seeded("workspace", None, 10.0, 0, 240.0, 0.6),
        {
            **_seeded("f" * 40, "main", 10.0, 0, 240.0, 0.6),
            "experiments": [{"revs": [_seeded("g" * 40, "e2", 10.0, 1, 250.0, 0.55)]}],
        },
    ]
    rows = sweep.rows_from_exp_show([*first, *second])
    pairs = sorted((r["target_epsilon"], r["seed"], r["method"]) for r in rows)
    assert pairs == sorted(
        (e, s, m) for e, s in [(1.0, 0), (10.0, 0), (10.0, 1)] for m in ("dpdm", "dpfeta")
    )
    files = []
    for i, entries in enumerate((first, second)):
        files.append(tmp_path / f"exps{i}.json")
        files[-1].write_text(json.dumps(entries))
    out = tmp_path / "out"
    args = ["--exp-json", str(files[0]), "--exp-json", str(files[1]), "--out", str(out)]
    assert sweep.main(args) == 0
    assert len(json.loads((out / "runs.json").read_text())) == 6


def test_run_resumes_from_saved_outputs_of_another_clone(tmp_path, monkeypatch):
    """`--run --exp-json saved.json`: the (ε, seed) pairs of the saved output are not run again,
    and the collection holds the saved runs beside the new ones."""
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps([_seeded("b" * 40, "e1", 1.0, 0, 320.0, 0.3)]))
    log = _fake_dvc(tmp_path, monkeypatch, [_seeded("c" * 40, "e2", 1.0, 1, 310.0, 0.35)])
    out = tmp_path / "out"
    args = ["--run", "--epsilon", "1", "--repeats", "3", "--exp-json", str(saved)]
    assert sweep.main([*args, "--out", str(out)]) == 0
    runs = [c for c in log.read_text().splitlines() if c.startswith("exp run")]
    assert runs == ["exp run -S privacy.epsilon=1 -S seed=2"]
    summary = json.loads((out / "sweep.json").read_text())
    dpfeta = next(r for r in summary if r["method"] == "dpfeta")
    assert dpfeta["repeats"] == 2 and sorted(dpfeta["seeds"]) == [0, 1]


def test_reruns_replace_earlier_runs_of_their_method_epsilon_and_seed(tmp_path, capsys):
    """A default changed for one method, which was run again: each rerun's rows replace the
    earlier rows of the same method, target ε and seed; every other row still counts. The rerun
    file's baseline (a copy of an older run, here a different one) is not a rerun."""
    old = [
        {
            **_seeded("a" * 40, "main", 10.0, 0, 240.0, 0.6),
            "experiments": [
                {"revs": [_seeded("b" * 40, "e1", 10.0, 1, 250.0, 0.55)]},
                {"revs": [_seeded("c" * 40, "e2", 1.0, 0, 320.0, 0.3)]},
            ],
        }
    ]
    rerun = _seeded("d" * 40, "r1", 10.0, 1, 200.0, 0.7)
    del rerun["data"]["metrics"]["runs/dpdm/metrics.json"]  # `-S methods=[dpfeta]`
    new = [{**_seeded("e" * 40, "main", 5.0, 0, 230.0, 0.65), "experiments": [{"revs": [rerun]}]}]
    files = [tmp_path / "old.json", tmp_path / "new.json"]
    for f, entries in zip(files, (old, new), strict=True):
        f.write_text(json.dumps(entries))
    out = tmp_path / "out"
    args = ["--exp-json", str(files[0]), "--rerun-json", str(files[1]), "--out", str(out)]
    assert sweep.main(args) == 0
    runs = json.loads((out / "runs.json").read_text())
    replaced = [(r["method"], r["target_epsilon"], r["seed"]) for r in runs if "replaced_by" in r]
    assert replaced == [("dpfeta", 10.0, 1)]
    assert {r["replaced_by"] for r in runs if "replaced_by" in r} == {"r1"}
    assert not any(r["target_epsilon"] == 5.0 for r in runs)  # the baseline copy
    summary = {
        (r["method"], r["target_epsilon"]): r for r in json.loads((out / "sweep.json").read_text())
    }
    assert summary[("dpfeta", 10.0)]["repeats"] == 2
    assert summary[("dpfeta", 10.0)]["fid"] == pytest.approx((240.0 + 200.0) / 2)
    assert summary[("dpdm", 10.0)]["repeats"] == 2  # not rerun: both old runs count
    assert summary[("dpdm", 10.0)]["fid"] == pytest.approx((240.0 + 250.0) * 1.3 / 2)


def test_a_rerun_without_a_seed_is_refused():
    rerun = {"experiment": "r1", "method": "dpfeta", "target_epsilon": 10.0, "seed": None}
    with pytest.raises(ValueError, match="no seed"):
        sweep.replace_reruns([], [rerun])


def test_two_reruns_of_one_method_epsilon_and_seed_are_refused(tmp_path, capsys):
    """Two different runs for one (method, ε, seed) in the rerun file would both count."""
    reruns = [
        {**_seeded("workspace", None, 1.0, 0, 300.0, 0.4)},  # saved while running: ignored
        {
            **_seeded("a" * 40, "main", 10.0, 0, 240.0, 0.6),
            "experiments": [
                {"revs": [_seeded("b" * 40, "r1", 10.0, 1, 200.0, 0.7)]},
                {"revs": [_seeded("c" * 40, "r2", 10.0, 1, 210.0, 0.68)]},
            ],
        },
    ]
    f, none = tmp_path / "reruns.json", tmp_path / "none.json"
    f.write_text(json.dumps(reruns))
    none.write_text("[]")
    args = ["--exp-json", str(none), "--rerun-json", str(f), "--out", str(tmp_path / "out")]
    assert sweep.main(args) == 2
    assert "two reruns of dp" in capsys.readouterr().err
    states = sweep._experiment_states(
        [{**reruns[1], "experiments": [{"revs": [_seeded("workspace", None, 5.0, 2, 1.0, 0.1)]}]}]
    )
    assert states == []  # an experiment saved while it ran is not a rerun


def test_run_with_reruns_is_refused_in_one_line(tmp_path, capsys):
    """--run's resume logic and its outputs after each run know nothing of reruns."""
    f = tmp_path / "reruns.json"
    f.write_text("[]")
    assert sweep.main(["--run", "--rerun-json", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not together with --run" in err and len(err.strip().splitlines()) == 1
