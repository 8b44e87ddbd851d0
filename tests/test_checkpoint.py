"""Checkpoint policy: atomic writes, checks of checkpoints, one training per folder, earlier trainings kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from scripts.checkpoint import (
    BEST_FILE,
    LATEST_FILE,
    BestCheckpoint,
    atomic_torch_save,
    check_checkpoint,
    claim_checkpoint_dir,
    keep_earlier_training,
    network_state,
    release_checkpoint_dir,
)
from scripts.errors import InputError
from scripts.inference import check_model
from scripts.networks import get_network
from scripts.outputs import lock_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net(features: int = 4, classes: int = 3) -> torch.nn.Module:
    return get_network("unet", "scse", 2, 1, classes, features=features)


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "model.pt")
    atomic_torch_save({"w": torch.ones(3)}, path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary file left behind


def test_atomic_save_gives_the_permissions_of_a_new_file(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_torch_save({"w": torch.ones(1)}, str(tmp_path / "model.pt"))
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "model.pt").st_mode & 0o777 == 0o644


def test_best_checkpoint_replaces_the_file_only_on_a_better_score(tmp_path):
    net = _net()
    best = BestCheckpoint(net, str(tmp_path), "dice")
    engine = Engine(lambda e, b: None)
    path = tmp_path / BEST_FILE
    for score, value in ((0.5, 1.0), (0.3, 2.0), (0.7, 3.0)):
        engine.state.metrics = {"dice": score}
        with torch.no_grad():
            net.classifier.bias.fill_(value)
        best.checkpoint(engine)
        assert path.is_file()
    assert torch.load(path, weights_only=True)["classifier.bias"][0] == 3.0
    assert os.listdir(tmp_path) == [BEST_FILE]
    # its state (the best score) travels in checkpoint_latest.pt and is restored on resume
    restored = BestCheckpoint(_net(), str(tmp_path), "dice")
    restored.load_state_dict(best.state_dict())
    engine.state.metrics = {"dice": 0.6}
    restored.checkpoint(engine)  # worse than 0.7: model.pt stays
    assert torch.load(path, weights_only=True)["classifier.bias"][0] == 3.0


def test_checkpoint_checks_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_checkpoint(str(tmp_path / "none.pt"))
    good = str(tmp_path / "good.pt")
    torch.save(_net().state_dict(), good)
    assert check_checkpoint(good, _net()) == good
    truncated = str(tmp_path / "truncated.pt")
    with open(good, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:4000])
    with pytest.raises(InputError, match=r"truncated\.pt' cannot be read") as caught:
        check_checkpoint(truncated)
    assert "weights_only=False" not in str(caught.value) and "\n" not in str(caught.value)
    code = str(tmp_path / "code.pt")
    torch.save({"w": torch.ones(1), "f": Engine}, code)  # pickled code is never loaded
    with pytest.raises(InputError, match=r"code\.pt' cannot be read"):
        check_checkpoint(code)
    with pytest.raises(InputError, match=r"does not fit .* of other shape .*'classifier.weight' is \[3, 4, 1, 1\]"):
        check_checkpoint(good, _net(features=4, classes=5))
    plain = str(tmp_path / "plain.pt")
    torch.save(get_network("unet", "none", 2, 1, 3, features=4).state_dict(), plain)
    with pytest.raises(InputError, match=r"plain.pt' does not fit .*: \d+ weights missing \(e.g. '.*se"):
        check_checkpoint(plain, _net())
    # a training checkpoint's network is read as MONAI's CheckpointLoader reads it: inference, evaluation, views and
    # initial weights take checkpoint_latest.pt as they take model.pt
    net = _net()
    latest = str(tmp_path / "latest.pt")
    torch.save({"model": net.state_dict(), "optimizer": {"state": {}}, "trainer": {"epoch": 1}}, latest)
    assert check_checkpoint(latest, _net()) == latest
    assert check_model("torch", latest, "", _net()) == latest
    assert network_state(latest).keys() == net.state_dict().keys()
    loaded = _net()
    CheckpointLoader(load_path=latest, load_dict={"model": loaded})(Engine(lambda engine, batch: None))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    with pytest.raises(InputError, match=r"latest\.pt' does not fit .* of other shape"):
        check_checkpoint(latest, _net(features=4, classes=5))


_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from scripts.checkpoint import claim_checkpoint_dir
claim_checkpoint_dir({folder!r})
print("claimed", flush=True)
time.sleep(60)
"""


def test_a_second_training_into_the_same_folder_is_refused_until_the_first_ends(tmp_path):
    folder = str(tmp_path / "models")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(root=ROOT, folder=folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(InputError, match=rf"in use by another training \(pid {holder.pid} since"):
            claim_checkpoint_dir(folder)
    finally:
        holder.kill()  # kill -9: the operating system releases the lock
        holder.wait()
    assert claim_checkpoint_dir(folder) == folder


def test_a_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path):
    # the lock is the first thing written there (an evaluation's output_dir, a training's ckpt_dir): it gave a traceback
    (tmp_path / "file").write_text("not a folder")
    folder = str(tmp_path / "file" / "models")
    with pytest.raises(InputError, match=rf"^--ckpt_dir '{folder}' cannot be written: .*; expected a writable folder$"):
        claim_checkpoint_dir(folder)
    with pytest.raises(InputError, match=rf"^--output_dir '{folder}' cannot be written: "):
        lock_folder(folder, ".evaluation.lock", "evaluation", "output_dir")


def test_a_new_training_keeps_the_earlier_ones_files(tmp_path, caplog):
    folder = tmp_path / "models"
    folder.mkdir()
    torch.save({"w": torch.ones(1)}, folder / BEST_FILE)
    (folder / ".partial-abc.pt").write_bytes(b"left by a kill")
    os.utime(folder / ".partial-abc.pt", (0, 0))  # untouched since long ago
    claim_checkpoint_dir(str(folder))
    assert not (folder / "previous").exists()  # not yet: a training refused for its inputs leaves no copy
    assert keep_earlier_training(str(folder), resume="true") == str(folder) and not (folder / "previous").exists()
    keep_earlier_training(str(folder))
    (kept,) = (folder / "previous").iterdir()
    assert torch.equal(torch.load(kept / BEST_FILE, weights_only=True)["w"], torch.ones(1))
    assert (folder / BEST_FILE).is_file()  # still usable until the new training writes its first best
    assert not (folder / ".partial-abc.pt").exists()
    assert "kept in" in caplog.text
    atomic_torch_save({"w": torch.zeros(1)}, str(folder / BEST_FILE))  # the new training's first best
    assert torch.equal(torch.load(kept / BEST_FILE, weights_only=True)["w"], torch.ones(1))


def test_resume_needs_a_checkpoint_with_epochs_left(tmp_path):
    folder = str(tmp_path)
    with pytest.raises(InputError, match=f"--resume true but '{folder}/{LATEST_FILE}' does not exist"):
        claim_checkpoint_dir(folder, resume=True)
    trainer = Engine(lambda engine, batch: None)
    trainer.run(range(3), max_epochs=4)  # what CheckpointSaver stores: ignite's state_dict, iterations, no epoch
    assert "epoch" not in trainer.state_dict()
    torch.save({"model": _net().state_dict(), "trainer": trainer.state_dict()}, tmp_path / LATEST_FILE)
    for epochs in (4, 3):  # the same --epochs again (nothing to do), or fewer (ignite refused with a traceback)
        with pytest.raises(InputError, match=f"already ran 4 of --epochs {epochs}; give a larger --epochs"):
            claim_checkpoint_dir(folder, resume=True, network=_net(), max_epochs=epochs)
    with pytest.raises(InputError, match="does not fit"):
        claim_checkpoint_dir(folder, resume=True, network=_net(features=8), max_epochs=8)
    before = time.time()
    assert claim_checkpoint_dir(folder, resume=True, network=_net(), max_epochs=8) == folder
    assert not (tmp_path / "previous").exists() and os.path.getmtime(tmp_path / LATEST_FILE) <= before


def test_a_training_in_a_process_that_goes_on_releases_its_folder(tmp_path):
    """MONAI Label trains in its server's process: once a training ends, another process may train there."""
    folder = str(tmp_path / "models")
    claim_checkpoint_dir(folder)
    assert claim_checkpoint_dir(folder) == folder  # the same process may train again
    assert release_checkpoint_dir(folder) and not release_checkpoint_dir(folder)
    other = subprocess.run(
        [sys.executable, "-c", _HOLD.format(root=ROOT, folder=folder).replace("time.sleep(60)", "")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0 and "claimed" in other.stdout, other.stderr[-2000:]


def test_an_iteration_schedule_with_snapshots_and_reduced_precision(tmp_path):
    from scripts.data.synthetic import generate_dataset

    data = str(tmp_path / "data")
    generate_dataset(data, num_subjects=4, shape=(24, 24, 24), seed=2, num_validation=1, num_test=1)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
           "--dataset_dir", data, "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out"),
           "--features", "4", "--epochs", "2", "--iterations_per_epoch", "3", "--snapshot_interval", "1",
           "--train_precision", "bf16"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training forward pass in bf16 autocast" in result.stderr + result.stdout
    latest = torch.load(tmp_path / "models" / LATEST_FILE, weights_only=True)
    assert latest["trainer"]["iteration"] == 6  # 2 epochs of 3 iterations, whatever the dataset's size
    snapshots = sorted(os.listdir(tmp_path / "models" / "snapshots"))
    assert snapshots == ["model_epoch0001.pt", "model_epoch0002.pt"]
    last = torch.load(tmp_path / "models" / "snapshots" / snapshots[-1], weights_only=True)
    assert all(torch.equal(last[k], v) for k, v in latest["model"].items())
    assert all(v.dtype == torch.float32 for v in last.values() if v.is_floating_point())  # weights stay float32


def test_a_training_can_start_from_given_weights(tmp_path):
    from scripts.data.synthetic import generate_dataset

    data = str(tmp_path / "data")
    generate_dataset(data, num_subjects=4, shape=(24, 24, 24), seed=2, num_validation=1, num_test=1)
    initial = _net(features=4, classes=28)
    torch.save(initial.state_dict(), tmp_path / "start.pt")

    def train(weights: str, *extra: str):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
               "--dataset_dir", data, "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out"),
               "--epochs", "1", "--iterations_per_epoch", "1", "--initial_weights", weights, *extra]  # fmt: skip
        return subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)

    result = train(str(tmp_path / "start.pt"), "--features", "4", "--learning_rate", "1e-12")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = torch.load(tmp_path / "models" / BEST_FILE, weights_only=True)
    for key, value in initial.state_dict().items():
        if key.endswith("weight") and value.dim() > 1:  # convolutions: unchanged by a step of lr 1e-12
            assert torch.allclose(trained[key], value, atol=1e-6), key
    result = train(str(tmp_path / "start.pt"), "--features", "8")
    assert result.returncode != 0 and "does not fit the configured network" in result.stderr.strip().splitlines()[-1]
