"""The experiment runner end to end: a tiny grid through the real bundle runner, its report, resuming after an
interruption, a failing run, and one-line errors on bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
import time
from unittest import mock

import pytest

from scripts.data.synthetic import LABEL_NAMES, generate_dataset
from scripts.experiment import RUN_JSON, main, parse_overrides

ARCHS, SES = ["unet", "densenet"], ["none", "scse"]


def run_main(*argv: str) -> tuple[int, str, str]:
    """``python -m scripts.experiment ARGV`` in this process (the bundle runs are subprocesses with one thread)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2 x 2 grid (U-Net, DenseNet x none, scSE) on six 32^3 subjects (3 training, 2 validation, 1 test), two runs
    at once."""
    root = tmp_path_factory.mktemp("experiment")
    data = str(root / "data")
    generate_dataset(data, num_subjects=6, shape=(32, 32, 32), seed=3, num_validation=2, num_test=1)
    overrides = ["--dataset_dir", data, "--default_dataset_dir", str(root / "unused"), "--features", "4"]
    overrides += ["--epochs", "1", "--slices_per_volume", "1"]
    runs = str(root / "runs" / "tiny")
    args = ["run", "--out", runs, "--archs", *ARCHS, "--se", *SES, "--seed", "0", "--jobs", "2", "--", *overrides]
    code, out, err = run_main(*args)
    assert code == 0, err
    return {"root": root, "data": data, "runs": runs, "args": args, "stdout": out}


def test_grid_runs_every_combination_through_the_bundle_runner(grid):
    lines = grid["stdout"].splitlines()
    assert lines[0] == "2 runs at once, 1 thread each"  # run_main's OMP_NUM_THREADS, handed to every run
    for i, name in enumerate([f"{a}_{s}" for a in ARCHS for s in SES], start=1):
        assert any(line.startswith(f"[{i}/4] {name}: trained in ") for line in lines), lines
        folder = os.path.join(grid["runs"], name)
        for log in ("train.log", "evaluate.log"):
            assert os.path.getsize(os.path.join(folder, log)) > 0
        assert os.path.isfile(os.path.join(folder, "models", "model.pt"))
        record = json.load(open(os.path.join(folder, RUN_JSON)))
        assert record["status"] == "done" and (record["arch"], record["se"]) == tuple(name.split("_"))
        assert record["seed"] == 0 and record["overrides"][:2] == ["--dataset_dir", grid["data"]]
        assert [os.path.basename(p) for p in record["config_files"]["evaluating"]] == ["train.yaml", "evaluate.yaml"]
        assert record["wall_time_s"]["training"] > 0 and record["wall_time_s"]["evaluating"] > 0
        assert (record["threads"], record["jobs"]) == ("1", 2)  # what the wall times were measured with
        assert record["datalist"] == os.path.join(grid["data"], "datalist.json")
        assert [os.path.basename(t["image"]) for t in record["test_items"]] == ["subject_005.nii.gz"]
        assert record["label_names"] == list(LABEL_NAMES)
        assert "git" in record  # the commit, or None outside a git checkout
        # the per-volume per-structure Dice is the evaluation's own table
        with open(os.path.join(folder, "outputs", "eval", "dice_per_volume.csv"), newline="") as f:
            rows = list(csv.reader(f))
        dice = record["test_dice"]
        assert dice["volumes"] == [rows[1][0]] and dice["structures"] == rows[0][1:-1]
        assert [v if v is not None else float("nan") for v in dice["dice"][0]] == pytest.approx(
            [float(v) for v in rows[1][1:-1]], nan_ok=True
        )
    assert "grid done: 4 runs (4 run, 0 skipped)" in grid["stdout"]


def test_report_writes_table1_and_figures(grid):
    out = str(grid["root"] / "results")
    code, stdout, err = run_main("report", "--runs", grid["runs"], "--out", out)
    assert code == 0, err
    assert "missing from the 2 x 4 grid: densenet_cse, densenet_sse, unet_cse, unet_sse" in stdout
    for name in ("table1.md", "table1.csv", "runs.csv", "figure2_densenet_boxplot.png", "figure3_densenet_bars.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert os.path.getsize(os.path.join(out, "figure4_densenet_slice.png")) > 0  # the test image is on disk
    for arch in ("unet", "densenet"):  # per-structure tables, one per network, its done variants as columns
        table = open(os.path.join(out, f"structures_{arch}.md")).read().splitlines()
        assert table[2] == "| Structure | No SE Block | + scSE Block |" and len(table) == 4 + 27 + 1
    lines = open(os.path.join(out, "table1.md")).read().splitlines()
    densenet = next(line for line in lines if line.startswith("| DenseNet | "))
    assert densenet.count(" - ") == 2  # no cSE and sSE runs
    unet_scse = next(line for line in lines if line.startswith("| U-Net | + scSE Block | "))
    cells = [c.strip() for c in unet_scse.strip("|").split("|")]
    assert cells[4] == "1" and 0 < int(cells[6]) <= 27  # one test volume; its structures, NaN pairs dropped
    with open(os.path.join(out, "table1.csv"), newline="") as f:
        rows = {(r["network"], r["se"]): r for r in csv.DictReader(f)}
    assert len(rows) == 8 and rows[("unet", "scse")]["n_volume_pairs"] == "1"
    with open(os.path.join(out, "runs.csv"), newline="") as f:
        runs_rows = list(csv.DictReader(f))
    assert {(r["threads"], r["jobs"]) for r in runs_rows} == {("1", "2")} and len(runs_rows) == 4
    assert rows[("densenet", "cse")]["note"] == "no run"
    with open(os.path.join(out, "dice_per_volume.csv"), newline="") as f:
        raw = list(csv.DictReader(f))
    runs = ["densenet_none", "densenet_scse", "unet_none", "unet_scse"]  # Table 1's order
    assert [(r["run"], r["volume"]) for r in raw] == [(run, "subject_005.nii.gz") for run in runs]
    record = json.load(open(os.path.join(grid["runs"], "unet_scse", RUN_JSON)))["test_dice"]
    unet_scse = raw[3]
    for name, value in zip(record["structures"], record["dice"][0]):  # the run's own numbers, NaN as empty
        if value is None:
            assert unet_scse[name] == "", name
        else:
            assert float(unet_scse[name]) == pytest.approx(value, abs=1e-6), name
    assert float(unet_scse["mean"]) == pytest.approx(record["volume_mean"][0], abs=1e-6)

    # figure 4 is skipped, with a reason, when the run's test image is not on disk
    moved = str(grid["root"] / "moved")
    shutil.copytree(grid["runs"], moved, ignore=shutil.ignore_patterns("*.pt", "tensorboard"))
    path = os.path.join(moved, "densenet_none", RUN_JSON)
    record = json.load(open(path))
    record["test_items"] = [
        {k: "/nonexistent/" + os.path.basename(v) for k, v in t.items()} for t in record["test_items"]
    ]
    json.dump(record, open(path, "w"))
    code, stdout, _ = run_main("report", "--runs", moved, "--out", str(grid["root"] / "moved_results"))
    assert (
        code == 0
        and "figure 4 skipped: the run's test image '/nonexistent/subject_005.nii.gz' is not on disk, nor saved"
        in stdout
    )
    assert not os.path.exists(grid["root"] / "moved_results" / "figure4_densenet_slice.png")


def test_seed_report_sets_grids_of_different_seeds_side_by_side(grid):
    other = str(grid["root"] / "seed1")
    shutil.copytree(grid["runs"], other, ignore=shutil.ignore_patterns("*.pt", "tensorboard", "outputs"))
    for name in os.listdir(other):
        path = os.path.join(other, name, RUN_JSON)
        record = json.load(open(path))
        record["seed"] = 1
        json.dump(record, open(path, "w"))
    out = str(grid["root"] / "seeds")
    code, stdout, err = run_main("seeds", "--runs", grid["runs"], other, "--out", out)
    assert code == 0, err
    assert "seed 0: 4 runs" in stdout and "seed 1: 4 runs" in stdout
    lines = open(os.path.join(out, "seeds.md")).read().splitlines()
    assert lines[0] == "# Spread between seeds (2 seeds)"
    scse = next(line for line in lines if line.startswith("| DenseNet | + scSE Block |"))
    cells = [c.strip() for c in scse.strip("|").split("|")]
    assert cells[2] == cells[3] and cells[4].endswith("± 0.000")  # the same Dice in both copies: no spread
    with open(os.path.join(out, "seeds.csv"), newline="") as f:
        assert len(list(csv.DictReader(f))) == 8
    code, _, err = run_main("seeds", "--runs", grid["runs"], grid["runs"], "--out", out)
    assert code == 1 and "both have seed 0's run densenet_none" in err


def test_seed_report_from_published_results_and_grids_split_by_network(grid):
    """A report folder (its dice_per_volume.csv) stands for its grid; folders of one seed with other runs merge."""
    root = grid["root"] / "published"
    code, _, err = run_main("report", "--runs", grid["runs"], "--out", str(root / "seed0"))
    assert code == 0, err
    code, _, err = run_main("seeds", "--runs", grid["runs"], "--out", str(root / "from_runs"))
    assert code == 0, err
    for arch in ARCHS:  # seed 1 as one grid folder per network
        shutil.copytree(
            grid["runs"], root / f"seed1_{arch}", ignore=shutil.ignore_patterns("*.pt", "tensorboard", "outputs")
        )
        for name in os.listdir(root / f"seed1_{arch}"):
            if not name.startswith(arch):
                shutil.rmtree(root / f"seed1_{arch}" / name)
                continue
            path = root / f"seed1_{arch}" / name / RUN_JSON
            json.dump({**json.load(open(path)), "seed": 1}, open(path, "w"))
    folders = [str(root / "seed0"), *(str(root / f"seed1_{arch}") for arch in ARCHS)]
    code, stdout, err = run_main("seeds", "--runs", *folders, "--out", str(root / "merged"))
    assert code == 0, err
    assert "seed 0: 4 runs" in stdout and "seed 1: 4 runs" in stdout
    with open(root / "from_runs" / "seeds.csv", newline="") as f:
        from_runs = list(csv.DictReader(f))
    with open(root / "merged" / "seeds.csv", newline="") as f:
        merged = list(csv.DictReader(f))
    assert [r for r in merged if r["seed"] == "0"] == from_runs  # the CSV's 6 digits give the runs' figures
    assert [r["mean_dice"] for r in merged if r["seed"] == "1"] == [r["mean_dice"] for r in from_runs]
    # a published grid whose seed column is empty, and a folder with neither runs nor results
    lines = open(root / "seed0" / "dice_per_volume.csv").read().splitlines()
    os.makedirs(root / "unseeded")
    with open(root / "unseeded" / "dice_per_volume.csv", "w") as f:
        cells = [line.split(",") for line in lines[1:]]
        f.write("\n".join([lines[0]] + [",".join([*c[:3], "", *c[4:]]) for c in cells]))
    code, _, err = run_main("seeds", "--runs", str(root / "unseeded"), "--out", str(root / "x"))
    assert code == 1 and "has no seed" in err
    os.makedirs(root / "empty")
    code, _, err = run_main("seeds", "--runs", str(root / "empty"), "--out", str(root / "x"))
    assert code == 1 and "has no done run (no run.json with status done) and no dice_per_volume.csv" in err


def test_resume_redoes_only_the_interrupted_run(grid):
    runs = grid["runs"]
    names = [f"{a}_{s}" for a in ARCHS for s in SES]
    times = {n: os.path.getmtime(os.path.join(runs, n, RUN_JSON)) for n in names}
    # an interrupted run: no run.json, partial files left behind
    interrupted = os.path.join(runs, "densenet_scse")
    os.remove(os.path.join(interrupted, RUN_JSON))
    with open(os.path.join(interrupted, "partial.tmp"), "w") as f:
        f.write("left by an interrupted run")
    code, stdout, err = run_main(*grid["args"])
    assert code == 0, err
    assert "[4/4] densenet_scse: incomplete (no run.json), cleared and run again" in stdout
    assert "[4/4] densenet_scse: trained in " in stdout
    for i, name in enumerate(names[:3], start=1):
        assert f"[{i}/4] {name}: done before (run.json), skipped" in stdout
        assert os.path.getmtime(os.path.join(runs, name, RUN_JSON)) == times[name]
    assert not os.path.exists(os.path.join(interrupted, "partial.tmp"))
    assert json.load(open(os.path.join(interrupted, RUN_JSON)))["status"] == "done"
    assert "grid done: 4 runs (1 run, 3 skipped)" in stdout


def test_a_done_run_with_other_settings_is_refused(grid):
    args = list(grid["args"])
    args[args.index("--seed") + 1] = "1"
    code, _, err = run_main(*args)
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: run unet_none in {os.path.join(grid['runs'], 'unet_none')} was done with other seed; use another "
        "--out or delete the folder"
    ]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_run_stops_the_grid_with_one_line(tmp_path, jobs):
    out = str(tmp_path / "runs")
    args = ["run", "--out", out, "--archs", "unet", "--se", "none", "sse", "scse", "--jobs", str(jobs), "--"]
    args += ["--dataset_dir", "/no/such/folder", "--default_dataset_dir", str(tmp_path / "unused"), "--features", "4"]
    code, stdout, err = run_main(*args)
    log = os.path.join(out, "unet_none", "train.log")
    assert code == 1
    (line,) = err.strip().splitlines()  # the first failing run in grid order
    assert line.startswith("error: run unet_none failed in training (exit code 1): ")
    assert "dataset_dir '/no/such/folder' does not exist" in line and line.endswith(f"; log: {log}")
    assert os.path.isfile(log) and not os.path.exists(os.path.join(out, "unet_none", RUN_JSON))
    # the grid stopped: the runs under way when the first failed were the only ones started
    started = ["unet_none", "unet_sse"][:jobs]
    assert sorted(os.listdir(out)) == started
    assert [f"[{i}/3] {name}: training and evaluating" in stdout for i, name in enumerate(started, 1)] == [True] * jobs


@pytest.fixture
def sleeping_runs(monkeypatch) -> list:
    """Every bundle command of the grid sleeps for 2 minutes; returns the processes started, as they start."""
    from scripts import experiment

    monkeypatch.setattr(
        experiment.RunSpec, "command", lambda self, run_id: [sys.executable, "-c", "import time; time.sleep(120)"]
    )
    started = []
    original = experiment.subprocess.Popen

    def popen(cmd, *args, **kwargs):
        process = original(cmd, *args, **kwargs)
        if cmd[0] == sys.executable:  # the bundle commands, not git's
            started.append(process)
        return process

    monkeypatch.setattr(experiment.subprocess, "Popen", popen)
    return started


def test_an_interrupted_grid_stops_the_runs_under_way(tmp_path, monkeypatch, sleeping_runs):
    from scripts import experiment

    # Ctrl-C arrives while the grid waits for its two runs
    started = sleeping_runs

    def interrupt(running, return_when):
        deadline = time.time() + 30
        while len(started) < 2 and time.time() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "wait", interrupt)
    begin = time.time()
    with pytest.raises(KeyboardInterrupt):
        experiment.run_grid(
            str(tmp_path / "runs"), ["unet"], ["none", "scse", "sse"], jobs=2, env={"OMP_NUM_THREADS": "1"}
        )
    assert time.time() - begin < 60 and len(started) == 2  # not waited out; the third run never started
    assert all(p.poll() is not None for p in started)
    assert not any(os.path.exists(tmp_path / "runs" / n / RUN_JSON) for n in ("unet_none", "unet_scse"))


def test_a_terminated_grid_stops_the_runs_under_way(tmp_path, monkeypatch, sleeping_runs):
    # SIGTERM (timeout, a batch system) ended the grid and orphaned its bundle process, which the next run then
    # trained beside; it is now handled as Ctrl-C
    import signal
    import threading

    from scripts import experiment

    started = sleeping_runs

    def terminate_when_running():
        deadline = time.time() + 30
        while not started and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def fallback(signum, frame):  # reached only if the grid does not handle SIGTERM itself (instead of pytest dying)
        raise RuntimeError("SIGTERM not handled by the grid")

    previous = signal.signal(signal.SIGTERM, fallback)
    try:
        threading.Thread(target=terminate_when_running, daemon=True).start()
        begin = time.time()
        code = experiment.main(["run", "--out", str(tmp_path / "runs"), "--archs", "unet", "--se", "none", "sse"])
        assert signal.getsignal(signal.SIGTERM) is fallback  # the grid's handler only while it runs
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143 and time.time() - begin < 60 and len(started) == 1
    assert started[0].poll() is not None  # stopped, not orphaned


@pytest.mark.parametrize(
    "argv,message",
    [
        (["report", "--runs", "/no/such/runs", "--out", "x"], "runs folder '/no/such/runs' does not exist"),
        (["run", "--out", "{tmp}", "--archs", "resnet"], "unknown arch ['resnet']; valid: unet, sdnet, densenet"),
        (["run", "--out", "{tmp}", "--se", "se"], "unknown se ['se']; valid: none, cse, sse, scse"),
        (["run", "--out", "{tmp}", "--config", "no/such.yaml"], "config file 'no/such.yaml' does not exist"),
        (["run", "--out", "{tmp}", "--", "--arch", "unet"], "override --arch is set by the runner"),
        (["run", "--out", "{tmp}", "--jobs", "0"], "--jobs must be at least 1, got 0"),
        (["run", "--out", "{tmp}", "--jobs", "999"], "--jobs 999 is more than the "),
        (["run", "--out", "{tmp}", "--", "--features"], "override '--features' has no value"),
        (["run", "--out", "{tmp}", "--", "features", "4"], "override 'features' is not of the form --key value"),
    ],
)
def test_bad_input_gives_one_line(tmp_path, argv, message):
    code, stdout, err = run_main(*[a.replace("{tmp}", str(tmp_path / "runs")) for a in argv])
    assert code == 1 and stdout == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_report_without_done_runs(tmp_path):
    os.makedirs(tmp_path / "runs" / "unet_none")  # interrupted: no run.json
    code, _, err = run_main("report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert code == 1 and "has no done run" in err


def test_overrides_are_normalised():
    assert parse_overrides(["--features=8", "--epochs", "2"]) == ["--features", "8", "--epochs", "2"]


def test_figure4_uses_the_saved_input_of_a_synthesised_image(tmp_path):
    from scripts.experiment import _figure4_inputs

    label = tmp_path / "maps" / "map_07.nii.gz"
    label.parent.mkdir()
    label.write_bytes(b"x")
    records = {}
    for name, dice in (("plain", 0.5), ("scse", 0.7)):
        folder = tmp_path / name
        for sub, suffix in (("predictions", "seg"), ("inputs", "image")):
            (folder / "outputs" / "eval" / sub).mkdir(parents=True, exist_ok=True)
            (folder / "outputs" / "eval" / sub / f"map_07_{suffix}.nii.gz").write_bytes(b"x")
        records[name] = {
            "folder": str(folder),
            "eval_dir": os.path.join("outputs", "eval"),
            "test_items": [{"label": str(label)}],  # label maps only: the image was synthesised
            "test_dice": {"volumes": ["map_07.nii.gz"], "structures": ["a"], "dice": [[dice]]},
        }
    inputs, reason = _figure4_inputs(records["plain"], records["scse"])
    assert reason == "" and inputs["image"] == str(tmp_path / "plain/outputs/eval/inputs/map_07_image.nii.gz")
    assert inputs["label"] == str(label) and inputs["volume"] == "map_07.nii.gz"
    os.remove(inputs["image"])
    inputs, reason = _figure4_inputs(records["plain"], records["scse"])
    assert inputs is None and "is not on disk, nor saved as" in reason
