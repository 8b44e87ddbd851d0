"""Losing nothing, end to end through the bundle runner: kill -9 and resume, refusals in one line before any work,
inference that checks every input and segments the good ones, evaluation results published whole, a frozen DDP rank.

Kills are real signals sent to the training's process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage

from scripts.checkpoint import BEST_FILE, LATEST_FILE
from scripts.data.synthetic import generate_dataset
from scripts.outputs import AtomicNibabelWriter, prepare_output_dir, publish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "configs", "train.yaml")
EVALUATE = f"['{TRAIN}','{os.path.join(ROOT, 'configs', 'evaluate.yaml')}']"
INFERENCE = os.path.join(ROOT, "configs", "inference.yaml")
MULTI_GPU = f"['{TRAIN}','{os.path.join(ROOT, 'configs', 'multi_gpu_train.yaml')}']"


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _command(*args: str, launcher=None) -> list[str]:
    return [*(launcher or [sys.executable]), "-m", "monai.bundle", *args, "--bundle_root", ROOT]


def run(*args: str, cwd: str, launcher=None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(*args, launcher=launcher), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A refusal: non-zero exit, no traceback, the reason as stderr's last line; returns that line."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("faults") / "data")
    generate_dataset(folder, num_subjects=6, shape=(32, 32, 32), seed=3, num_validation=2, num_test=1)
    return folder


def _train_args(data: str, folder, *extra: str) -> list[str]:
    return ["run", "training", "--config_file", TRAIN, "--dataset_dir", data, "--default_dataset_dir",
            str(folder / "unused"), "--output_dir", str(folder / "out"), "--features", "4", *extra]  # fmt: skip


def _weights(path) -> dict:
    state = torch.load(path, weights_only=True)
    return state.get("model", state)


def test_kill_9_then_resume_ends_with_the_weights_of_an_uninterrupted_run(data, tmp_path):
    schedule = ["--epochs", "5", "--slices_per_volume", "40"]
    whole = run(*_train_args(data, tmp_path, *schedule, "--ckpt_dir", str(tmp_path / "whole")), cwd=str(tmp_path))
    assert whole.returncode == 0, whole.stderr[-3000:]

    ckpt = tmp_path / "killed"
    args = _train_args(data, tmp_path, *schedule, "--ckpt_dir", str(ckpt))
    process = subprocess.Popen(_command(*args), cwd=str(tmp_path), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, epoch = time.time() + 300, 0
    while time.time() < deadline and process.poll() is None and epoch < 1:
        if (ckpt / LATEST_FILE).is_file():  # atomic writes: whatever is there loads
            epoch = torch.load(ckpt / LATEST_FILE, weights_only=True)["trainer"]["iteration"] // 30
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert epoch >= 1 and process.returncode == -signal.SIGKILL, "the training ended before it could be killed"
    assert _weights(ckpt / BEST_FILE) is not None

    resumed = run(*args, "--resume", "true", cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at epoch" in resumed.stdout + resumed.stderr
    for name in (LATEST_FILE, BEST_FILE):
        a, b = _weights(tmp_path / "whole" / name), _weights(ckpt / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    state = torch.load(ckpt / LATEST_FILE, weights_only=True)
    assert state["trainer"]["iteration"] == 5 * 30 and set(state) >= {"optimizer", "lr_scheduler", "early_stop"}
    assert "continues its checkpoint's schedule" not in resumed.stdout + resumed.stderr  # the same options
    # longer, with other options: the checkpoint's schedule goes on, and the log says so
    longer = [*args[: args.index("--epochs")], "--epochs", "6", "--slices_per_volume", "20", "--learning_rate", "0.001"]
    longer += args[args.index("--slices_per_volume") + 2 :]
    resumed = run(*longer, "--resume", "true", cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = "continues its checkpoint's schedule: iterations per epoch 30 (the options give 15), learning rate 0.01 "
    assert said + "(the options give 0.001)" in resumed.stdout + resumed.stderr


def _volume(path: str, data: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _datalist(data: str, tmp_path, training_extra: list[dict]) -> list[str]:
    items = json.load(open(os.path.join(data, "datalist.json")))
    resolved = {s: [{k: os.path.join(data, v) for k, v in d.items()} for d in items[s]] for s in ("training",
                "validation", "test")}  # fmt: skip
    resolved["training"] += training_extra
    path = str(tmp_path / "datalist.json")
    json.dump(resolved, open(path, "w"))
    return ["--datalist", path]


def _pair(tmp_path, name: str, shape) -> dict:
    rng = np.random.default_rng(0)
    image = _volume(str(tmp_path / f"{name}_image.nii.gz"), rng.random(shape).astype(np.float32))
    label = _volume(str(tmp_path / f"{name}_label.nii.gz"), (rng.random(shape) * 3).astype(np.uint8))
    return {"image": image, "label": label}


@pytest.mark.parametrize(
    "case",
    ["epochs 0", "batch_size 0", "learning_rate -1", "thin volume", "mixed sizes", "resume without checkpoint"],
)
def test_training_refuses_in_one_line_before_any_work(data, tmp_path, case):
    ckpt = ["--ckpt_dir", str(tmp_path / "models")]
    extra, fragments = {
        "epochs 0": (lambda: ["--epochs", "0"], ["--epochs 0 is out of range; expected an integer > 0"]),
        "batch_size 0": (lambda: ["--batch_size", "0"], ["--batch_size 0"]),
        "learning_rate -1": (lambda: ["--learning_rate", "-1"], ["--learning_rate -1"]),
        "thin volume": (
            lambda: _datalist(data, tmp_path, [_pair(tmp_path, "thin", (64, 8, 64))]),
            ["thin_image.nii.gz' gives slices of 64x8 voxels; expected at least 16"],
        ),
        "mixed sizes": (
            lambda: _datalist(data, tmp_path, [_pair(tmp_path, "big", (40, 40, 40))]),
            ["slices of different sizes", "big_image.nii.gz' 40x40", "--slice_size"],
        ),
        "resume without checkpoint": (lambda: ["--resume", "true"], ["--resume true but", "does not exist"]),
    }[case]
    result = run(*_train_args(data, tmp_path, "--epochs", "1", *ckpt, *extra()), cwd=str(tmp_path))
    assert_refused(result, *fragments)
    assert "Epoch" not in result.stdout + result.stderr
    assert not (tmp_path / "models" / BEST_FILE).exists()


def test_debug_shows_the_traceback(data, tmp_path):
    result = run(*_train_args(data, tmp_path, "--epochs", "0", "--debug", "true"), cwd=str(tmp_path))
    assert result.returncode != 0 and "Traceback" in result.stderr and "--epochs 0 is out of range" in result.stderr


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("trained")
    result = run(*_train_args(data, folder, "--epochs", "1", "--slices_per_volume", "2", "--ckpt_dir",
                              str(folder / "models")), cwd=str(folder))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return str(folder / "models" / BEST_FILE)


def test_a_second_training_into_the_same_ckpt_dir_is_refused(data, trained, tmp_path):
    ckpt = os.path.dirname(trained)
    args = _train_args(data, tmp_path, "--epochs", "50", "--slices_per_volume", "40", "--ckpt_dir", ckpt)
    first = subprocess.Popen(_command(*args), cwd=str(tmp_path), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.isdir(os.path.join(ckpt, "previous"))):
            time.sleep(0.05)  # the first has claimed the folder once it kept the earlier files
        second = run(*args, cwd=str(tmp_path))
    finally:
        first.kill()
        first.wait()
    assert_refused(second, f"'{ckpt}' is in use by another training (pid {first.pid}")


@pytest.mark.parametrize("case", ["other network", "corrupt", "unwritable output", "no such device"])
def test_inference_refuses_in_one_line_before_any_work(data, trained, tmp_path, case):
    out = str(tmp_path / "seg")
    truncated = str(tmp_path / "truncated.pt")
    with open(trained, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:5000])
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    unwritable = str(blocker / "x")
    args, fragments = {
        "other network": (["--checkpoint", trained, "--features", "8"], ["does not fit", "--features"]),
        "corrupt": (["--checkpoint", truncated, "--features", "4"], ["truncated.pt' cannot be read"]),
        "unwritable output": (["--checkpoint", trained, "--features", "4"], ["--output_dir", "cannot be written"]),
        "no such device": (["--checkpoint", trained, "--features", "4", "--device", "cuda:99"], ["--device cuda:99: "]),
    }[case]
    io = ["--dataset_dir", os.path.join(data, "imagesTr"), "--output_dir", unwritable if "output" in case else out]
    result = run("run", "inference", "--config_file", INFERENCE, *io, *args, cwd=str(tmp_path))
    assert_refused(result, *fragments)
    assert not os.path.exists(out) or not os.listdir(out)


def test_inference_segments_the_good_volumes_and_names_every_bad_one(data, trained, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    source = nib.load(os.path.join(data, "imagesTr", "subject_000.nii.gz"))
    good = np.asarray(source.dataobj).astype(np.float32)
    _volume(str(folder / "a_good.nii.gz"), good, source.affine)
    _volume(str(folder / "b_good.nii.gz"), good[::-1].copy(), source.affine)
    with_nan = good.copy()
    with_nan[5, 5, 5] = np.nan
    _volume(str(folder / "c_nan.nii.gz"), with_nan, source.affine)
    (folder / "d_broken.nii.gz").write_bytes(b"not a nifti")
    _volume(str(folder / "e_zeros.nii.gz"), np.zeros((32, 32, 32), np.float32))
    _volume(str(folder / "f_4d.nii.gz"), np.ones((32, 32, 32, 2), np.float32))
    out = tmp_path / "seg"
    result = run("run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(folder), "--output_dir",
                 str(out), "--checkpoint", trained, "--features", "4", cwd=str(tmp_path))  # fmt: skip
    last = assert_refused(result, "4 of 6 volumes were skipped (the others are done)", "c_nan.nii.gz' has 1 NaN",
                          "d_broken.nii.gz", "e_zeros.nii.gz' is constant", "f_4d.nii.gz' has shape")  # fmt: skip
    assert "a_good" not in last
    assert sorted(os.listdir(out)) == ["a_good_seg.nii.gz", "b_good_seg.nii.gz"]
    assert nib.load(out / "a_good_seg.nii.gz").shape == good.shape


@pytest.mark.parametrize("shape", [(6, 5, 4), (6, 5, 1), (6, 1, 4)])
def test_the_writer_keeps_the_spatial_shape_and_affine(tmp_path, shape):
    # a coronal slice of a scan stored L, I, A: MONAI's writer squeezed (6, 5, 1) to (6, 5), whose 2D affine (L, I
    # against x, y) is singular, and failed after the segmentation
    affine = np.array([[-1.0, 0, 0, 128], [0, 0, 1, -128], [0, -1, 0, 128], [0, 0, 0, 1]])
    labels = MetaTensor(torch.arange(int(np.prod(shape)), dtype=torch.uint8).reshape(1, *shape), affine=affine)
    labels.meta.update(filename_or_obj=str(tmp_path / "x.nii.gz"), original_channel_dim="no_channel")  # as read
    save = SaveImage(output_dir=str(tmp_path), output_postfix="seg", output_dtype=np.uint8, separate_folder=False,
                     resample=False, writer=AtomicNibabelWriter, print_log=False)  # fmt: skip
    save(labels)  # as inference.yaml's SaveImaged
    written = nib.load(tmp_path / "x_seg.nii.gz")
    assert written.shape == shape and np.allclose(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj), np.arange(np.prod(shape)).reshape(shape))


def test_outputs_are_complete_or_absent(tmp_path, monkeypatch):
    writer = AtomicNibabelWriter()
    writer.set_data_array(np.zeros((1, 4, 4, 4), np.uint8), channel_dim=0)
    writer.set_metadata({"affine": np.eye(4)})

    def dies_half_way(image, filename):
        open(filename, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", dies_half_way)
    with pytest.raises(OSError):
        writer.write(str(tmp_path / "x_seg.nii.gz"))
    assert os.listdir(tmp_path) == []
    (tmp_path / ".partial-123-y_seg.nii.gz").write_bytes(b"left by kill -9")
    os.utime(tmp_path / ".partial-123-y_seg.nii.gz", (0, 0))  # untouched since long ago
    (tmp_path / ".partial-456-z_seg.nii.gz").write_bytes(b"being written by another run into this folder")
    prepare_output_dir(str(tmp_path))
    assert os.listdir(tmp_path) == [".partial-456-z_seg.nii.gz"]
    os.remove(tmp_path / ".partial-456-z_seg.nii.gz")
    # a finished evaluation replaces the whole earlier one, or nothing
    final, staging = tmp_path / "eval", tmp_path / "eval.partial"
    final.mkdir()
    (final / "dice_summary.json").write_text("old")
    (final / "old_seg.nii.gz").write_text("old")
    prepare_output_dir(str(staging), fresh=True)
    (staging / "dice_summary.json").write_text("new")
    publish(str(staging), str(final))
    assert sorted(os.listdir(final)) == ["dice_summary.json"] and (final / "dice_summary.json").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["eval"]


def test_evaluation_killed_leaves_the_earlier_results_whole(data, trained, tmp_path):
    out = tmp_path / "out"
    io = ["--dataset_dir", data, "--default_dataset_dir", str(tmp_path / "unused"), "--output_dir", str(out)]
    io += ["--ckpt_dir", os.path.dirname(trained), "--features", "4"]
    first = run("run", "evaluating", "--config_file", EVALUATE, *io, cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    summary = (out / "eval" / "dice_summary.json").read_text()
    # an evaluation killed part way (here: in its evaluator, by a signal to itself) publishes nothing
    kill = ["--validate#evaluator#iteration_update", "$lambda engine, batch: os.kill(os.getpid(), 9)"]
    killed = run("run", "evaluating", "--config_file", EVALUATE, *io, *kill, cwd=str(tmp_path))
    assert killed.returncode == -signal.SIGKILL
    assert (out / "eval" / "dice_summary.json").read_text() == summary
    assert (out / "eval.partial").is_dir()  # the unfinished one stays apart, under a name that says so
    again = run("run", "evaluating", "--config_file", EVALUATE, *io, cwd=str(tmp_path))
    assert again.returncode == 0 and not (out / "eval.partial").exists()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and sends signals to ranks")
@pytest.mark.parametrize("fault", ["frozen", "dead"])
def test_a_frozen_or_dead_ddp_rank_ends_the_job_with_a_message(data, tmp_path, fault):
    args = _train_args(data, tmp_path, "--epochs", "50", "--slices_per_volume", "40", "--ckpt_dir",
                       str(tmp_path / "models"), "--ddp_timeout", "10", "--device", "cpu")  # fmt: skip
    args[3] = MULTI_GPU
    port = "29541" if fault == "frozen" else "29542"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    job = subprocess.Popen(_command(*args, launcher=launcher), cwd=str(tmp_path), env=_env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / "models" / LATEST_FILE).is_file():
            time.sleep(0.1)
        rank1 = [pid for pid in _children(job.pid) if "RANK=1" in open(f"/proc/{pid}/environ").read().split("\0")]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGSTOP if fault == "frozen" else signal.SIGKILL)
        started = time.time()
        output, _ = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and time.time() - started < 200
    if fault == "frozen":  # rank 0 gives up after --ddp_timeout, and says why
        expected = "ERROR: distributed training stopped on rank 0: another rank died or did not answer within"
    else:  # torchrun sees the dead rank and ends the others
        expected = "Signal 9 (SIGKILL) received by PID"
    assert expected in output, output[-3000:]
