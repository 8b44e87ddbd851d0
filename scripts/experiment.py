"""The paper's experiment in one command: a grid of networks x SE variants through the bundle runner, then its report.

    # train and evaluate every (arch, se) of the grid, each in runs/NAME/<arch>_<se>/
    python -m scripts.experiment run --out runs/NAME --archs unet sdnet densenet --se none cse sse scse \\
        [--config configs/data/brain27.yaml --config configs/profiles/cpu.yaml] [--seed 0] [--jobs 1] \\
        [-- --features 32 ...]
    # Table 1 (table1.md, table1.csv), Figures 2-4, runs.csv and dice_per_volume.csv from the finished runs
    python -m scripts.experiment report --runs runs/NAME --out docs/results/NAME [--network densenet]
    # the spread between seeds (seeds.md, seeds.csv): the same grid run with other --seed into other folders; a
    # report folder (its dice_per_volume.csv) stands for its grid, and folders of one seed are merged
    python -m scripts.experiment seeds --runs runs/NAME runs/NAME_seed1 runs/NAME_seed2 --out docs/results/NAME

Every run is two subprocesses, ``python -m monai.bundle run training`` and ``run evaluating``, with the configs
``configs/train.yaml`` + the ``--config`` files (+ ``configs/evaluate.yaml`` for the evaluation), ``--bundle_root`` this
bundle, ``--arch``, ``--se``, ``--seed``, ``--ckpt_dir <run>/models``, ``--output_dir <run>/outputs`` and the extra
overrides given after ``--``; their output goes to ``<run>/train.log`` and ``<run>/evaluate.log``. ``run.json`` is
written last (settings, git commit, wall times, the datalist and test items, the per-volume per-structure test Dice,
``"status": "done"``), so:

- a run folder with a done ``run.json`` is skipped (an error if it was run with other settings);
- a run folder without one (an interrupted run) is cleared and run again;
- a failing run stops the grid with a one-line error naming the run and its log, and leaves no ``run.json``.

``--jobs N`` runs N runs at once, each with ``OMP_NUM_THREADS`` = the available cores // N (unless set), so that their
threads together never outnumber the cores (scripts/threads.py); one run at a time, the bundle takes the cores itself.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the runner itself does not need scipy
    from scripts.evaluation.stats import DiceTable

__all__ = [
    "ExperimentError",
    "RunSpec",
    "load_runs",
    "main",
    "make_report",
    "make_seed_report",
    "parse_overrides",
    "run_grid",
    "run_one",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CONFIG = os.path.join(ROOT, "configs", "train.yaml")
EVAL_CONFIG = os.path.join(ROOT, "configs", "evaluate.yaml")
RUN_JSON = "run.json"
TRAIN_LOG = "train.log"
EVAL_LOG = "evaluate.log"
CKPT_SUBDIR = "models"
OUTPUT_SUBDIR = "outputs"
# keys the runner sets for every run; an extra override of one of them would break the grid's layout
RESERVED_KEYS = ("arch", "se", "seed", "ckpt_dir", "output_dir", "bundle_root", "config_file")
# the paper's grid, for the report's list of missing runs
SE_VARIANTS = ("none", "cse", "sse", "scse")


class ExperimentError(Exception):
    """A one-line error of the experiment runner (bad input, a failed run, inconsistent run folders)."""


# --------------------------------------------------------------------------------------------------------------------
# running the grid
# --------------------------------------------------------------------------------------------------------------------


def parse_overrides(tokens: Sequence[str]) -> list[str]:
    """Check the bundle overrides given after ``--``: ``--key value`` or ``--key=value``, none of the reserved keys.

    Returns:
        the overrides as ``["--key", "value", ...]``.

    Raises:
        ExperimentError: on a malformed or reserved override.
    """
    out, i = [], 0
    tokens = list(tokens)
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ExperimentError(f"override '{token}' is not of the form --key value or --key=value")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ExperimentError(f"override '{token}' has no value")
            key, value = token[2:], tokens[i + 1]
            i += 2
        if not key:
            raise ExperimentError(f"override '{token}' has no key")
        if key in RESERVED_KEYS:
            raise ExperimentError(f"override --{key} is set by the runner for every run; use the runner's own options")
        out += [f"--{key}", value]
    return out


def _override_values(overrides: Sequence[str]) -> dict:
    """``{key: value}`` of checked overrides, values read as Python literals where they are (as the runner's ``fire``
    does), else kept as strings."""
    values = {}
    for key, text in zip(overrides[::2], overrides[1::2]):
        try:
            values[key[2:]] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key[2:]] = text
    return values


def resolve_config_files(paths: Sequence[str]) -> list[str]:
    """Absolute paths of extra config files: as given (relative to the working folder), else relative to the bundle.

    Raises:
        ExperimentError: when a file is in neither place.
    """
    out = []
    for path in paths:
        for candidate in (os.path.abspath(path), os.path.join(ROOT, path)):
            if os.path.isfile(candidate):
                out.append(os.path.normpath(candidate))
                break
        else:
            raise ExperimentError(f"config file '{path}' does not exist (looked in {os.getcwd()} and {ROOT})")
    return out


def git_commit(root: str = ROOT) -> dict | None:
    """``{"commit", "dirty"}`` of the bundle's git checkout (read-only git commands), or ``None`` without git."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # never take the index lock of a checkout others work in
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, env=env, timeout=30
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"commit": commit.stdout.strip(), "dirty": dirty}


@dataclass
class RunSpec:
    """One (arch, se) run of a grid.

    Args:
        arch: ``--arch`` of the bundle.
        se: ``--se`` of the bundle.
        seed: ``--seed`` of the bundle.
        folder: the run's folder (``<out>/<arch>_<se>``).
        configs: extra config files merged after ``configs/train.yaml`` (absolute paths).
        overrides: extra bundle overrides, ``["--key", "value", ...]``.
    """

    arch: str
    se: str
    seed: int
    folder: str
    configs: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.arch}_{self.se}"

    @property
    def train_configs(self) -> list[str]:
        return [TRAIN_CONFIG, *self.configs]

    @property
    def eval_configs(self) -> list[str]:
        return [TRAIN_CONFIG, *self.configs, EVAL_CONFIG]

    def settings(self) -> dict:
        """What a finished run must share with this spec to be reused."""
        return {
            "arch": self.arch,
            "se": self.se,
            "seed": self.seed,
            "config_files": {"training": self.train_configs, "evaluating": self.eval_configs},
            "overrides": list(self.overrides),
        }

    def command(self, run_id: str) -> list[str]:
        """The bundle runner's command line for ``training`` or ``evaluating``."""
        configs = self.train_configs if run_id == "training" else self.eval_configs
        return [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            run_id,
            "--config_file",
            str(configs),
            "--bundle_root",
            ROOT,
            "--arch",
            self.arch,
            "--se",
            self.se,
            "--seed",
            str(self.seed),
            "--ckpt_dir",
            os.path.join(self.folder, CKPT_SUBDIR),
            "--output_dir",
            os.path.join(self.folder, OUTPUT_SUBDIR),
            *self.overrides,
        ]


_CHAINED = ("The above exception was the direct cause", "During handling of the above exception")


def _last_error_line(log: str) -> str:
    """The root cause of the last (chained) traceback of a log, e.g. ``ValueError: ...`` rather than the runner's
    ``RuntimeError: Failed to instantiate ...`` that wraps it; else the last line naming an exception, else the last
    non-empty line (at most 300 characters)."""
    try:
        with open(log, errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
    except OSError:
        return ""
    is_error = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b")
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        k = len(starts) - 1
        while k > 0 and lines[starts[k] - 1].startswith(_CHAINED):
            k -= 1
        for line in lines[starts[k] :]:
            if is_error.match(line):
                return line[:300]
    for line in reversed(lines):
        if is_error.match(line):
            return line[:300]
    return lines[-1].strip()[:300] if lines else ""


def _run_step(spec: RunSpec, run_id: str, log: str, env: Mapping[str, str] | None, live: set | None = None) -> float:
    """Run one bundle command with its output in ``log``; returns its wall time in seconds.

    ``live`` holds the process while it runs, for the grid to stop it when interrupted.
    """
    cmd = spec.command(run_id)
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        process = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(env or os.environ, PYTHONUNBUFFERED="1")
        )
        if live is not None:
            live.add(process)
        try:
            returncode = process.wait()
        finally:
            if live is not None:
                live.discard(process)
            if process.poll() is None:  # interrupted while waiting
                process.kill()
                process.wait()
    if returncode != 0:
        detail = _last_error_line(log)
        raise ExperimentError(
            f"run {spec.name} failed in {run_id} (exit code {returncode})"
            + (f": {detail}" if detail else "")
            + f"; log: {log}"
        )
    return time.perf_counter() - start


def _resolve_test_split(spec: RunSpec) -> dict:
    """The datalist, test items and label names the run used, resolved from its configs as the runner does."""
    from monai.bundle import ConfigParser

    from scripts.data.datalist import load_split

    parser = ConfigParser()
    parser.read_config(spec.eval_configs)
    parser.update({"bundle_root": ROOT, "seed": spec.seed, **_override_values(spec.overrides)})
    datalist = os.path.abspath(parser.get_parsed_content("datalist_file"))
    items = [{k: os.path.abspath(str(v)) for k, v in item.items()} for item in load_split(datalist, "test")]
    return {"datalist": datalist, "test_items": items, "label_names": list(parser.get_parsed_content("label_names"))}


def _read_record(folder: str) -> dict | None:
    path = os.path.join(folder, RUN_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _write_json_atomic(data: dict, path: str) -> None:
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def run_one(
    spec: RunSpec,
    env: Mapping[str, str] | None = None,
    git: dict | None = None,
    jobs: int = 1,
    live: set | None = None,
) -> dict:
    """Train and evaluate one run of the grid, or reuse it when it is done; see the module docstring.

    Args:
        spec: the run.
        env: environment of the bundle subprocesses (default: this process's).
        git: the git commit to record (default: looked up).
        jobs: how many runs of the grid run at once (recorded beside the wall times).
        live: a set that holds the run's bundle process while it runs (see :func:`run_grid`).

    Returns:
        the run's record (the content of ``run.json``) with ``"skipped": True`` when reused.

    Raises:
        ExperimentError: when the run fails, or its folder holds a done run with other settings.
    """
    record = _read_record(spec.folder)
    if record is not None and record.get("status") == "done":
        wanted = spec.settings()
        differing = [k for k, v in wanted.items() if record.get(k) != v]
        if differing:
            raise ExperimentError(
                f"run {spec.name} in {spec.folder} was done with other {', '.join(differing)}; use another --out or "
                "delete the folder"
            )
        return {**record, "skipped": True}
    if os.path.exists(spec.folder):
        shutil.rmtree(spec.folder)
    os.makedirs(spec.folder)
    wall = {
        "training": _run_step(spec, "training", os.path.join(spec.folder, TRAIN_LOG), env, live),
        "evaluating": _run_step(spec, "evaluating", os.path.join(spec.folder, EVAL_LOG), env, live),
    }
    from scripts.evaluation.report import PER_VOLUME_CSV
    from scripts.evaluation.stats import load_dice_csv

    eval_dir = os.path.join(OUTPUT_SUBDIR, "eval")
    csv_path = os.path.join(spec.folder, eval_dir, PER_VOLUME_CSV)
    try:
        dice = load_dice_csv(csv_path)
    except ValueError as e:
        raise ExperimentError(f"run {spec.name}: {e}; log: {os.path.join(spec.folder, EVAL_LOG)}") from e
    try:
        split = _resolve_test_split(spec)
    except Exception as e:  # the run itself succeeded: record why its inputs are unknown, figure 4 will skip it
        split = {"datalist": None, "test_items": None, "label_names": None, "datalist_error": str(e).splitlines()[0]}
    record = {
        "name": spec.name,
        **spec.settings(),
        "commands": {"training": spec.command("training"), "evaluating": spec.command("evaluating")},
        "git": git if git is not None else git_commit(),
        "python": platform.python_version(),
        "host": platform.node(),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_time_s": {k: round(v, 2) for k, v in wall.items()},
        # what the wall times were measured with: the bundle's threads (null: its own choice) and the runs at once
        "threads": (env or os.environ).get("OMP_NUM_THREADS") or None,
        "jobs": jobs,
        "ckpt_dir": CKPT_SUBDIR,
        "output_dir": OUTPUT_SUBDIR,
        "eval_dir": eval_dir,
        **split,
        "test_dice": dice.to_dict(),
        "status": "done",
    }
    _write_json_atomic(record, os.path.join(spec.folder, RUN_JSON))
    return record


def _mean_dice(record: Mapping) -> float:
    means = [v for v in record.get("test_dice", {}).get("volume_mean", []) if v is not None]
    return sum(means) / len(means) if means else math.nan


def run_grid(
    out: str,
    archs: Sequence[str],
    ses: Sequence[str],
    seed: int = 0,
    configs: Sequence[str] = (),
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    jobs: int = 1,
) -> list[dict]:
    """Run every (arch, se) of the grid in ``out/<arch>_<se>/``, printing progress; see the module docstring.

    Args:
        jobs: runs at once. Each run's processes get ``OMP_NUM_THREADS`` (the one given, else the available cores
            shared out: :func:`scripts.threads.threads_per_job`), so that the runs' threads add up to the cores.
            After a failing run no other starts; the runs under way finish.

    Returns:
        the records of all runs, in grid order.

    Raises:
        ExperimentError: on bad input or the first failing run (in grid order).
    """
    from scripts.errors import InputError
    from scripts.networks import ARCHS, SE_TYPES
    from scripts.threads import threads_per_job

    for kind, given, valid in (("arch", archs, ARCHS), ("se", ses, SE_TYPES)):
        unknown = [v for v in given if v not in valid]
        if unknown:
            raise ExperimentError(f"unknown {kind} {unknown}; valid: {', '.join(valid)}")
    try:
        threads = threads_per_job(jobs)
    except InputError as e:
        raise ExperimentError(str(e)) from e
    configs = resolve_config_files(configs)
    overrides = parse_overrides(overrides)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    git = git_commit()
    env = dict(os.environ if env is None else env)
    if jobs > 1 and not env.get("OMP_NUM_THREADS"):  # one run at a time: the bundle takes the cores itself
        env["OMP_NUM_THREADS"] = str(threads)
    specs = [
        RunSpec(a, s, seed, os.path.join(out, f"{a}_{s}"), configs, overrides)
        for a in dict.fromkeys(archs)
        for s in dict.fromkeys(ses)
    ]
    if jobs > 1:
        each = env["OMP_NUM_THREADS"]
        print(f"{min(jobs, len(specs))} runs at once, {each} thread{'s' if each != '1' else ''} each", flush=True)
    tags = {spec.name: f"[{i}/{len(specs)}] {spec.name}" for i, spec in enumerate(specs, start=1)}
    live: set = set()  # the bundle processes under way, to stop on Ctrl-C

    def start(spec: RunSpec) -> dict:
        tag = tags[spec.name]
        existing = _read_record(spec.folder)
        if existing is None and os.path.exists(spec.folder):
            print(f"{tag}: incomplete (no {RUN_JSON}), cleared and run again", flush=True)
        elif existing is not None and existing.get("status") != "done":
            print(f"{tag}: {RUN_JSON} not done, cleared and run again", flush=True)
        elif existing is None:
            print(f"{tag}: training and evaluating", flush=True)
        record = run_one(spec, env=env, git=git, jobs=jobs, live=live)
        if record.get("skipped"):
            print(f"{tag}: done before ({RUN_JSON}), skipped", flush=True)
        else:
            wall = record["wall_time_s"]
            print(
                f"{tag}: trained in {wall['training']:.1f} s, evaluated in {wall['evaluating']:.1f} s, "
                f"mean Dice {_mean_dice(record):.3f} over {len(record['test_dice']['volumes'])} test volumes",
                flush=True,
            )
        return record

    records: dict[str, dict] = {}
    errors: dict[str, ExperimentError] = {}
    begin, pending = time.perf_counter(), list(specs)
    # the threads only wait for the bundle's processes; a failure stops new runs, the others finish and keep their work
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {}
        try:
            while pending or running:
                while pending and len(running) < jobs and not errors:
                    spec = pending.pop(0)
                    running[pool.submit(start, spec)] = spec
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    spec = running.pop(future)
                    try:
                        records[spec.name] = future.result()
                    except ExperimentError as e:
                        errors[spec.name] = e
        except BaseException:  # Ctrl-C: stop the runs under way (their folders have no run.json: redone next time)
            while not all(future.done() for future in running):  # a run may be starting its next process
                for process in list(live):
                    process.terminate()
                time.sleep(0.1)
            raise
    if errors:
        raise next(errors[s.name] for s in specs if s.name in errors)
    ran = sum(not r.get("skipped") for r in records.values())
    print(
        f"grid done: {len(specs)} runs ({ran} run, {len(specs) - ran} skipped) in {time.perf_counter() - begin:.1f} s; "
        f"report: python -m scripts.experiment report --runs {out} --out docs/results/{os.path.basename(out)}",
        flush=True,
    )
    return [records[spec.name] for spec in specs]


# --------------------------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------------------------


def load_runs(runs_dir: str) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """The done runs of a grid folder, keyed by ``(arch, se)`` (each record with its ``folder``), and the names of the
    run folders that are not done.

    Raises:
        ExperimentError: when ``runs_dir`` is not a folder.
    """
    if not os.path.isdir(runs_dir):
        raise ExperimentError(f"runs folder '{runs_dir}' does not exist; expected the --out of 'run'")
    done, incomplete = {}, []
    for name in sorted(os.listdir(runs_dir)):
        folder = os.path.join(runs_dir, name)
        if not os.path.isdir(folder):
            continue
        record = _read_record(folder)
        if record is None or record.get("status") != "done":
            incomplete.append(name)
            continue
        done[(record["arch"], record["se"])] = {**record, "folder": folder}
    return done, incomplete


def _figure4_inputs(plain: Mapping, scse: Mapping) -> tuple[dict | None, str]:
    """Image, label and the two predictions for Figure 4 (the test volume scSE improves most), or why there are none."""
    from scripts.data.datalist import volume_stem
    from scripts.evaluation.stats import DiceTable

    a, b = DiceTable.from_dict(plain["test_dice"]), DiceTable.from_dict(scse["test_dice"])
    scse_means = dict(zip(b.volumes, b.volume_means()))
    common = [(scse_means[v] - m, v) for v, m in zip(a.volumes, a.volume_means()) if v in scse_means]
    common = [(g if not math.isnan(g) else -math.inf, v) for g, v in common]
    if not common:
        return None, "the plain and scSE runs share no test volume"
    volume = max(common)[1]
    items = plain.get("test_items") or []
    # volumes are named after their label file (evaluate.yaml), which images synthesised from it lack
    item = next((it for it in items if os.path.basename(it.get("label", it.get("image", ""))) == volume), None)
    if item is None:
        reason = plain.get("datalist_error") or f"volume {volume} is not among the test items recorded in run.json"
        return None, f"the test image is unknown ({reason})"
    # the evaluation's saved input and label (save_inputs) win: the image may be synthesised, and the label on disk
    # may hold the source's values (e.g. FreeSurfer's) rather than the protocol's
    saved = {
        key: os.path.join(plain["folder"], plain["eval_dir"], "inputs", f"{volume_stem(volume)}_{key}.nii.gz")
        for key in ("image", "label")
    }
    found = {}
    for key in ("image", "label"):
        found[key] = saved[key] if os.path.isfile(saved[key]) else item.get(key, "")
        if not os.path.isfile(found[key]):
            return None, f"the run's test {key} '{item.get(key) or volume}' is not on disk, nor saved as '{saved[key]}'"
    preds = {}
    for key, record in (("plain", plain), ("scse", scse)):
        preds[key] = os.path.join(
            record["folder"], record["eval_dir"], "predictions", f"{volume_stem(volume)}_seg.nii.gz"
        )
        if not os.path.isfile(preds[key]):
            return None, f"prediction '{preds[key]}' is missing"
    return {**found, **preds, "volume": volume}, ""


def make_report(
    runs_dir: str, out_dir: str, network: str | None = None, coronal_axis: int = 1, slice_index: int | None = None
) -> dict[str, str]:
    """Table 1, Figures 2-4, ``runs.csv`` and ``dice_per_volume.csv`` (every run's per-volume, per-structure test
    Dice) from the done runs of ``runs_dir``, written into ``out_dir``.

    Args:
        runs_dir: the grid folder (``--out`` of ``run``).
        out_dir: where to write.
        network: the architecture of Figures 2-4; default ``densenet`` (as the paper) if it has runs, else the one with
            the most SE variants done.
        coronal_axis: Figure 4's coronal axis (volumes reoriented to RAS: 1).
        slice_index: Figure 4's slice; default: where the plain and scSE predictions differ most.

    Returns:
        ``{kind: path}`` of every file written.

    Raises:
        ExperimentError: without done runs, or when ``network`` has none.
    """
    from scripts.evaluation import figures
    from scripts.evaluation.stats import DiceTable, format_structure_table, write_dice_per_volume, write_table1

    done, incomplete = load_runs(runs_dir)
    if not done:
        raise ExperimentError(f"runs folder '{runs_dir}' has no done run (no run.json with status done)")
    archs = list(dict.fromkeys(a for a, _ in done))
    missing = [f"{a}_{s}" for a in archs for s in SE_VARIANTS if (a, s) not in done]
    print(f"{len(done)} done runs: {', '.join(f'{a}_{s}' for a, s in done)}")
    if missing:
        print(f"missing from the {len(archs)} x {len(SE_VARIANTS)} grid: {', '.join(missing)}")
    if incomplete:
        print(f"not done (ignored): {', '.join(incomplete)}")

    tables = {key: DiceTable.from_dict(record["test_dice"]) for key, record in done.items()}
    seeds = sorted({record.get("seed") for record in done.values()}, key=str)
    title = f"Table 1: test Dice of {os.path.basename(os.path.normpath(runs_dir))} (seed {', '.join(map(str, seeds))})"
    written = write_table1(tables, out_dir, title=title)

    runs_csv = os.path.join(out_dir, "runs.csv")
    with open(runs_csv, "w", newline="") as f:
        writer = csv.writer(f)
        # threads and jobs: what train_s and eval_s were measured with (empty for runs recorded before them)
        header = ["run", "arch", "se", "seed", "train_s", "eval_s", "threads", "jobs", "n_test", "mean_dice", "commit"]
        writer.writerow([*header, "dirty"])
        for (arch, se), record in done.items():
            git = record.get("git") or {}
            wall = record.get("wall_time_s", {})
            writer.writerow(
                [
                    f"{arch}_{se}",
                    arch,
                    se,
                    record.get("seed"),
                    wall.get("training"),
                    wall.get("evaluating"),
                    record.get("threads") or ("" if "jobs" not in record else "auto"),
                    record.get("jobs", ""),
                    len(record["test_dice"]["volumes"]),
                    f"{_mean_dice(record):.4f}",
                    git.get("commit", ""),
                    git.get("dirty", ""),
                ]
            )
    written["runs"] = runs_csv

    # the raw results: every run's per-volume, per-structure test Dice in one table
    dice_csv = write_dice_per_volume(
        tables, os.path.join(out_dir, "dice_per_volume.csv"), {key: record.get("seed") for key, record in done.items()}
    )
    written["dice"] = dice_csv

    if network is None:
        counts = {a: sum((a, s) in done for s in SE_VARIANTS) for a in archs}
        network = "densenet" if counts.get("densenet") else max(counts, key=counts.get)
    elif not any(a == network for a, _ in done):
        raise ExperimentError(f"network '{network}' has no done run in '{runs_dir}' (done: {', '.join(archs)})")
    for arch in archs:
        path = os.path.join(out_dir, f"structures_{arch}.md")
        with open(path, "w") as f:
            f.write(format_structure_table({s: tables[(a, s)] for a, s in tables if a == arch}, arch))
        written[f"structures_{arch}"] = path
    variants = {se: tables[(network, se)] for se in SE_VARIANTS if (network, se) in tables}
    written["figure2"] = figures.figure2_boxplot(
        variants, os.path.join(out_dir, f"figure2_{network}_boxplot.png"), network
    )
    written["figure3"] = figures.figure3_bars(variants, os.path.join(out_dir, f"figure3_{network}_bars.png"), network)

    if (network, "none") in done and (network, "scse") in done:
        inputs, reason = _figure4_inputs(done[(network, "none")], done[(network, "scse")])
    else:
        inputs, reason = None, f"it needs the {network}_none and {network}_scse runs"
    if inputs is None:
        print(f"figure 4 skipped: {reason}")
    else:
        result = figures.figure4_slice(
            inputs["image"],
            inputs["label"],
            inputs["plain"],
            inputs["scse"],
            os.path.join(out_dir, f"figure4_{network}_slice.png"),
            axis=coronal_axis,
            index=slice_index,
            network=network,
            label_names=done[(network, "none")].get("label_names"),
        )
        written["figure4"] = result["path"]
        print(f"figure 4: test volume {inputs['volume']}, slice {result['index']} along axis {result['axis']}")
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return written


def _grid_results(folder: str) -> dict[tuple[str, str], tuple[DiceTable, int | None]]:
    """The test Dice table and seed of every run of ``folder``, keyed by ``(arch, se)``: a grid folder's done runs
    (their ``run.json``), else a report folder's ``dice_per_volume.csv`` (the published results, without the runs).

    Raises:
        ExperimentError: when the folder holds neither.
    """
    from scripts.evaluation.stats import DiceTable, load_dice_per_volume

    if not os.path.isdir(folder):
        raise ExperimentError(f"runs folder '{folder}' does not exist; expected the --out of 'run' or of 'report'")
    done, _ = load_runs(folder)
    if done:
        return {key: (DiceTable.from_dict(record["test_dice"]), record.get("seed")) for key, record in done.items()}
    results = os.path.join(folder, "dice_per_volume.csv")
    if not os.path.isfile(results):
        raise ExperimentError(
            f"runs folder '{folder}' has no done run (no run.json with status done) and no dice_per_volume.csv"
        )
    tables, seeds = load_dice_per_volume(results)
    return {key: (table, seeds[key]) for key, table in tables.items()}


def make_seed_report(runs_dirs: Sequence[str], out_dir: str) -> dict[str, str]:
    """``seeds.md`` and ``seeds.csv``: the runs of several grids with different seeds, side by side.

    Each folder is a grid folder (``--out`` of ``run``) or a report folder (``--out`` of ``report``, whose
    ``dice_per_volume.csv`` keeps every run's Dice and seed). Folders of the same seed are merged (e.g. one grid per
    network); every run must have a seed, and a run of a seed in two folders is refused.

    Raises:
        ExperimentError: when a folder has no runs, a run has no seed, or two folders have the same run and seed.
    """
    from scripts.evaluation.stats import write_seed_spread

    grids: dict[int, dict[tuple[str, str], DiceTable]] = {}
    origin: dict[tuple[int, str, str], str] = {}
    for folder in runs_dirs:
        runs = _grid_results(folder)
        for (arch, se), (table, seed) in runs.items():
            if seed is None:
                raise ExperimentError(f"run {arch}_{se} of '{folder}' has no seed")
            if (seed, arch, se) in origin:
                raise ExperimentError(
                    f"runs folders '{origin[(seed, arch, se)]}' and '{folder}' both have seed {seed}'s run {arch}_{se}"
                )
            origin[(seed, arch, se)] = folder
            grids.setdefault(seed, {})[(arch, se)] = table
        seeds = sorted({seed for _, seed in runs.values()})
        print(f"{folder}: {len(runs)} runs of seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    for seed in sorted(grids):
        print(f"seed {seed}: {len(grids[seed])} runs")
    written = write_seed_spread(
        grids, out_dir, title=f"Spread between seeds ({len(grids)} seed{'s' if len(grids) > 1 else ''})"
    )
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return written


# --------------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.experiment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="train and evaluate a grid of networks x SE variants",
        epilog="Bundle overrides for every run follow a lone --, e.g. -- --features 32 --epochs 60 --datalist d.json",
    )
    run.add_argument("--out", required=True, help="grid folder, e.g. runs/NAME")
    run.add_argument("--archs", nargs="+", default=["unet", "sdnet", "densenet"], help="architectures")
    run.add_argument("--se", nargs="+", default=list(SE_VARIANTS), help="SE variants")
    run.add_argument(
        "--config", action="append", default=[], help="extra config file merged after train.yaml (repeatable)"
    )
    run.add_argument("--seed", type=int, default=0, help="the bundle's seed for every run")
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, the cores shared out between them (OMP_NUM_THREADS, unless set); default 1",
    )
    report = sub.add_parser("report", help="Table 1 and Figures 2-4 from a grid's done runs")
    report.add_argument("--runs", required=True, help="grid folder (the --out of run)")
    report.add_argument("--out", required=True, help="folder for table1.md/csv, runs.csv and the figures")
    report.add_argument("--network", default=None, help="architecture of Figures 2-4 (default: densenet)")
    report.add_argument("--coronal_axis", type=int, default=1, help="coronal axis after reorientation to RAS")
    report.add_argument("--slice", type=int, default=None, help="Figure 4's slice (default: most differing)")
    seeds = sub.add_parser("seeds", help="the spread between seeds: grids of the same runs with different --seed")
    seeds.add_argument(
        "--runs", required=True, nargs="+", help="grid folders (--out of run) or report folders (--out of report)"
    )
    seeds.add_argument("--out", required=True, help="folder for seeds.md and seeds.csv")
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a batch system's end of job, ``kill``) taken as Ctrl-C: the runs under way are stopped
    instead of orphaned (Python's default for SIGTERM ends the grid without stopping its bundle processes)."""


def _terminated(signum, frame) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 with a one-line error on bad input or a failed run, 130
    after Ctrl-C, 143 after SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        if args.command == "run":
            run_grid(
                args.out, args.archs, args.se, seed=args.seed, configs=args.config, overrides=extra, jobs=args.jobs
            )
        elif extra:
            raise ExperimentError(f"{args.command} takes no bundle overrides, got {' '.join(extra)}")
        elif args.command == "report":
            make_report(args.runs, args.out, args.network, args.coronal_axis, args.slice)
        else:
            make_seed_report(args.runs, args.out)
    except (ExperimentError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("interrupted: the runs under way have no run.json and will be redone", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
