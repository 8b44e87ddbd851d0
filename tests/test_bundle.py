"""End-to-end runs of every config through the bundle runner, on tiny generated data, and the configs' consistency."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from scripts.data.datalist import volume_stem
from scripts.data.synthetic import LABEL_NAMES, generate_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TRAIN = os.path.join(CONFIGS, "train.yaml")
EVALUATE = f"['{TRAIN}','{os.path.join(CONFIGS, 'evaluate.yaml')}']"
INFERENCE = os.path.join(CONFIGS, "inference.yaml")
MULTI_GPU = f"['{TRAIN}','{os.path.join(CONFIGS, 'multi_gpu_train.yaml')}']"
TINY = ["--features", "4", "--slices_per_volume", "2", "--epochs", "2"]


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def bundle(*args: str, cwd: str, check: bool = True, launcher=None, **env: str):
    """Run ``python -m monai.bundle ARGS`` from ``cwd`` (not the bundle root: --bundle_root says where it is)."""
    cmd = [*(launcher or [sys.executable]), "-m", "monai.bundle", *args, "--bundle_root", ROOT]
    result = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Six 32^3 subjects (3 training, 2 validation, 1 test) and a model trained on them for 2 epochs."""
    root = tmp_path_factory.mktemp("tiny")
    data = str(root / "data")
    generate_dataset(data, num_subjects=6, shape=(32, 32, 32), seed=3, num_validation=2, num_test=1)
    io = ["--dataset_dir", data, "--default_dataset_dir", str(root / "unused"), "--output_dir", str(root / "out")]
    io += ["--ckpt_dir", str(root / "models")]
    bundle("run", "training", "--config_file", TRAIN, *io, *TINY, cwd=str(root))
    return {"root": root, "data": data, "io": io, "ckpt": str(root / "models" / "model.pt")}


def test_train_generates_the_default_dataset_and_saves_a_cpu_checkpoint(tmp_path):
    default = str(tmp_path / "default")
    io = ["--dataset_dir", default, "--default_dataset_dir", default, "--output_dir", str(tmp_path / "out")]
    io += ["--ckpt_dir", str(tmp_path / "models")]
    result = bundle("run", "run", "--config_file", TRAIN, *io, "--features", "4", "--slices_per_volume", "1",
                    "--epochs", "1", "--se", "sse", "--arch", "sdnet", cwd=str(tmp_path))  # fmt: skip
    datalist = json.load(open(os.path.join(default, "datalist.json")))
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [12, 4, 4]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values())
    assert any("squeeze" in k for k in state)  # sSE blocks are in the saved network
    assert glob.glob(str(tmp_path / "out" / "tensorboard" / "*"))
    assert "val_mean_dice" in result.stdout + result.stderr
    assert "torch threads: 1 (OMP_NUM_THREADS)" in result.stdout  # scripts/threads.py, before any work


def test_evaluate_writes_dice_tables_and_predictions(tiny):
    result = bundle("run", "evaluating", "--config_file", EVALUATE, *tiny["io"], "--features", "4", "--threads", "2",
                    cwd=str(tiny["root"]))  # fmt: skip
    assert "torch threads: 2 (the threads option)" in result.stdout
    eval_dir = tiny["root"] / "out" / "eval"
    summary = json.load(open(eval_dir / "dice_summary.json"))
    assert list(summary["structures"]) == list(LABEL_NAMES[1:])
    assert summary["overall"]["n"] == 1 and 0.0 <= summary["overall"]["mean"] <= 1.0
    rows = open(eval_dir / "dice_per_volume.csv").read().splitlines()
    assert rows[0].split(",")[1] == LABEL_NAMES[1] and len(rows) == 2
    test_image = json.load(open(os.path.join(tiny["data"], "datalist.json")))["test"][0]["image"]
    source = nib.load(os.path.join(tiny["data"], test_image))
    (prediction,) = glob.glob(str(eval_dir / "predictions" / "*_seg.nii.gz"))
    pred = nib.load(prediction)
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
    assert not os.path.exists(eval_dir / "inputs")  # images on disk are not copied (save_inputs: false)


def test_a_bad_evaluation_switch_is_refused_before_work(tiny, tmp_path):
    io = ["--dataset_dir", tiny["data"], "--output_dir", str(tmp_path / "out"), "--ckpt_dir", tiny["io"][-1]]
    result = bundle("run", "evaluating", "--config_file", EVALUATE, *io, "--features", "4",
                    "--metric_include_background", "maybe", cwd=str(tmp_path), check=False)  # fmt: skip
    assert result.returncode != 0
    assert "metric_include_background" in result.stderr and "'maybe'" in result.stderr
    assert not os.path.exists(tmp_path / "out" / "eval.partial") and not os.path.exists(tmp_path / "out" / "eval")


_HOLD_EVALUATION = """
import sys, time
sys.path.insert(0, {root!r})
from scripts.outputs import lock_folder
lock_folder({folder!r}, ".evaluation.lock", "evaluation", "output_dir")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_evaluation_into_the_same_output_dir_is_refused(tiny, tmp_path):
    # it cleared the staging folder (eval.partial) that the first one was filling
    out = tmp_path / "out"
    (out / "eval.partial").mkdir(parents=True)
    (out / "eval.partial" / "dice_per_volume.csv").write_text("being written")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_EVALUATION.format(root=ROOT, folder=str(out))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        io = ["--dataset_dir", tiny["data"], "--output_dir", str(out), "--ckpt_dir", tiny["io"][-1]]
        result = bundle("run", "evaluating", "--config_file", EVALUATE, *io, "--features", "4", cwd=str(tmp_path),
                        check=False)  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0
    assert f"output_dir '{out}' is in use by another evaluation (pid {holder.pid} since" in result.stderr
    assert (out / "eval.partial" / "dice_per_volume.csv").read_text() == "being written"


def test_inference_writes_one_label_volume_per_input_with_its_affine(tiny, tmp_path):
    folder = str(tmp_path / "scans")
    shutil.copytree(os.path.join(tiny["data"], "imagesTr"), folder)
    # a single axial slice is written (H, W, 1) like its input, not squeezed to a 2D file (MONAI's writer squeezed
    # it, and failed on the 2D affine after the segmentation where the slice was not the file's first two axes)
    source = nib.load(glob.glob(os.path.join(folder, "*.nii.gz"))[0])
    single = np.asarray(source.dataobj)[:, :, 16:17]
    nib.save(nib.Nifti1Image(single, source.affine), os.path.join(folder, "single_slice.nii.gz"))
    # the same scan as FreeSurfer's MGH (T1.mgz): read like the NIfTI, its labels written as NIfTI
    nib.save(nib.MGHImage(np.asarray(source.dataobj, dtype=np.float32), source.affine), os.path.join(folder, "T1.mgz"))
    out = tmp_path / "seg"
    args = ["--dataset_dir", folder, "--output_dir", str(out), "--checkpoint", tiny["ckpt"], "--features", "4"]
    bundle("run", "inference", "--config_file", INFERENCE, *args, cwd=str(tmp_path))
    inputs = sorted(glob.glob(os.path.join(folder, "*.nii.gz")))
    outputs = sorted(set(glob.glob(str(out / "*_seg.nii.gz"))) - {str(out / "T1_seg.nii.gz")})
    assert len(outputs) == len(inputs) == 7
    assert nib.load(out / "single_slice_seg.nii.gz").shape == (32, 32, 1)
    from_mgh, from_nifti = (nib.load(out / f"{n}_seg.nii.gz") for n in ("T1", volume_stem(source.get_filename())))
    assert np.array_equal(np.asarray(from_mgh.dataobj), np.asarray(from_nifti.dataobj))
    assert np.allclose(from_mgh.affine, source.affine, atol=1e-5)
    for src, seg in zip(inputs, outputs):
        a, b = nib.load(src), nib.load(seg)
        assert b.shape == a.shape and np.allclose(b.affine, a.affine)
        assert set(np.unique(np.asarray(b.dataobj))) <= set(range(len(LABEL_NAMES)))


def test_multi_gpu_config_trains_with_two_cpu_processes(tiny, tmp_path):
    io = ["--dataset_dir", tiny["data"], "--default_dataset_dir", str(tmp_path / "unused")]
    io += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out")]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    bundle("run", "training", "--config_file", MULTI_GPU, *io, *TINY, cwd=str(tmp_path), launcher=launcher)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)


def test_multi_gpu_training_with_fewer_validation_volumes_than_ranks(tmp_path):
    # one validation volume, two ranks: MONAI's DistributedSampler refuses to split it; every rank validates all of it
    data = str(tmp_path / "data")
    generate_dataset(data, num_subjects=4, shape=(32, 32, 32), seed=4, num_validation=1, num_test=1)
    io = ["--dataset_dir", data, "--default_dataset_dir", str(tmp_path / "unused")]
    io += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out")]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534"]
    result = bundle("run", "training", "--config_file", MULTI_GPU, *io, *TINY, cwd=str(tmp_path), launcher=launcher)
    logged = result.stdout + result.stderr
    assert "Epoch[1] Metrics -- val_loss" in logged and "Epoch[2] Metrics -- val_loss" in logged
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.parametrize("where", ["bundle root", "elsewhere with PYTHONPATH"])
def test_torchscript_export_of_the_trained_checkpoint(tiny, tmp_path, where):
    # ckpt_export never puts the bundle on sys.path: run it from the bundle root or with PYTHONPATH (README)
    cwd, env = (ROOT, {}) if where == "bundle root" else (str(tmp_path), {"PYTHONPATH": ROOT})
    ts = str(tmp_path / "model.ts")
    args = ["--filepath", ts, "--ckpt_file", tiny["ckpt"], "--config_file", INFERENCE, "--features", "4"]
    bundle("ckpt_export", "network_def", *args, cwd=cwd, **env)
    exported = torch.jit.load(ts)
    from scripts.networks import get_network

    net = get_network("unet", "scse", 2, 1, len(LABEL_NAMES), features=4)
    net.load_state_dict(torch.load(tiny["ckpt"], weights_only=True))
    net.eval()
    x = torch.rand(2, 1, 48, 40)
    with torch.no_grad():
        assert torch.allclose(exported(x), net(x), atol=1e-5)


def test_verify_net_in_out_with_the_metadata(tmp_path):
    bundle("verify_net_in_out", "network_def", "--meta_file", os.path.join(CONFIGS, "metadata.json"),
           "--config_file", INFERENCE, "--features", "4", "--n", "2", cwd=ROOT)  # fmt: skip


@pytest.mark.parametrize(
    "override,message",
    [
        (["--arch", "resnet"], "unknown arch 'resnet'; valid: unet, sdnet, densenet"),
        (["--se", "se"], "unknown se 'se'; valid: none, cse, sse, scse"),
        (["--dataset_dir", "/no/such/folder"], "dataset_dir '/no/such/folder' does not exist"),
        (["--device", "cuda:99"], "ERROR: --device cuda:99: "),  # a CPU-only build here; 99 past the GPUs elsewhere
        (["--threads", "0"], "threads must be a positive whole number or null (one per available core), got 0"),
        (["--slice_size", "[8,8]"], "--slice_size [8, 8] is not a slice size; expected [H, W], each -1"),
        (["--epoch", "1"], "--epoch is not an option of these configs: nothing would read it (did you mean --epochs?)"),
    ],
)
def test_bad_input_is_refused_before_training(tiny, tmp_path, override, message):
    io = ["--default_dataset_dir", str(tmp_path / "d"), "--output_dir", str(tmp_path), "--ckpt_dir", str(tmp_path)]
    result = bundle("run", "training", "--config_file", TRAIN, "--dataset_dir", tiny["data"], *io, *override,
                    cwd=str(tmp_path), check=False)  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr
    assert "Epoch" not in result.stdout + result.stderr
    assert not os.path.exists(tmp_path / "model.pt")


def test_label_values_outside_the_protocol_are_refused(tiny, tmp_path):
    items = json.load(open(os.path.join(tiny["data"], "datalist.json")))
    label_path = os.path.join(tiny["data"], items["training"][0]["label"])
    bad = nib.load(label_path)
    data = np.asarray(bad.dataobj).copy()
    data[0, 0, 0] = 40
    bad_path = str(tmp_path / "bad_label.nii.gz")
    nib.save(nib.Nifti1Image(data, bad.affine), bad_path)
    items["training"][0] = {"image": os.path.join(tiny["data"], items["training"][0]["image"]), "label": bad_path}
    for split in ("validation", "test"):
        items[split] = [{k: os.path.join(tiny["data"], v) for k, v in d.items()} for d in items[split]]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(items))
    result = bundle("run", "training", "--config_file", TRAIN, "--datalist", str(datalist), "--output_dir",
                    str(tmp_path), "--ckpt_dir", str(tmp_path), cwd=str(tmp_path), check=False)  # fmt: skip
    assert result.returncode != 0
    assert "bad_label.nii.gz" in result.stderr and "[40]" in result.stderr


def test_monai_label_style_run_with_volumes_handed_in(tiny, tmp_path):
    """MONAI Label's BundleTrainTask: run id 'run', its own device, epochs, handlers and lists of 3D volumes."""
    from monai.bundle import ConfigWorkflow

    items = json.load(open(os.path.join(tiny["data"], "datalist.json")))
    volumes = {
        split: [{k: os.path.join(tiny["data"], v) for k, v in d.items()} for d in items[split]]
        for split in ("training", "validation")
    }
    workflow = ConfigWorkflow(
        config_file=TRAIN,
        workflow_type="train",
        run_id="run",
        **{
            "bundle_root": ROOT,
            "device": torch.device("cpu"),
            "features": 4,
            "slices_per_volume": 1,
            "output_dir": str(tmp_path / "out"),
            "ckpt_dir": str(tmp_path / "models"),
            "dataset_dir": "/nonexistent/never/read",
            "train#trainer#max_epochs": 1,
            "train#dataset#data": volumes["training"],
            "validate#dataset#data": volumes["validation"],
        },
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert os.path.isfile(tmp_path / "models" / "model.pt")


def _load(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def test_configs_agree_with_each_other_and_the_metadata():
    train, inference = _load(TRAIN), _load(INFERENCE)
    for key in ("label_names", "network_def", "load_transforms", "axcodes", "slice_axis", "arch", "se", "features"):
        assert train[key] == inference[key], key
    assert train["validate"]["inferer"] == inference["slice_inferer"]
    meta = json.load(open(os.path.join(CONFIGS, "metadata.json")))
    assert meta["version"] in meta["changelog"]
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert [channel_def[str(i)] for i in range(len(channel_def))] == train["label_names"] == list(LABEL_NAMES)
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == len(LABEL_NAMES)
    for key in ("name", "version", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                "authors", "copyright", "network_data_format", "required_packages_version"):  # fmt: skip
        assert meta.get(key), key


def test_the_documented_zip_is_the_current_version():
    """The download commands name the zip ``scripts.package`` writes: ``scse_brain27_v<metadata version>.zip``."""
    version = json.load(open(os.path.join(CONFIGS, "metadata.json")))["version"]
    for path in ("README.md", os.path.join("scripts", "package.py")):
        text = open(os.path.join(ROOT, path)).read()
        named = re.findall(r"scse_brain27_v([0-9][0-9.]*[0-9])\.zip", text)
        assert named and set(named) == {version}, f"{path} names {sorted(set(named))}, the metadata {version}"
