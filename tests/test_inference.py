"""Fast inference paths give the labels of the plain float32 path: precision, channels-last, crop to the head."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer

from scripts import benchmark, inference
from scripts.benchmark import paired_ratio, peer_networks
from scripts.data.synthetic import generate_dataset
from scripts.errors import InputError
from scripts.inference import (
    ArgmaxInferer,
    AutocastInferer,
    FastInference,
    ForegroundBoxNetwork,
    SliceBatches,
    argmax_in_inferer,
    resolve_precision,
    slice_boxes,
)
from scripts.networks import get_network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "configs", "train.yaml")
INFERENCE = os.path.join(ROOT, "configs", "inference.yaml")


def test_auto_precision_follows_the_hardware(monkeypatch):
    measured = []
    monkeypatch.setattr(inference, "bf16_speedup", lambda threads: measured.append(threads) or 2.0)
    monkeypatch.setattr(inference, "native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"  # emulated bf16 is slower than fp32
    assert measured == []  # nothing to measure without native BF16
    monkeypatch.setattr(inference, "native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"  # native and measured faster (Zen 4, AMX)
    assert measured == [torch.get_num_threads()]
    # native BF16 that is slower than float32 (an Intel Xeon with AVX-512 BF16 but no AMX: 0.55-0.65x)
    monkeypatch.setattr(inference, "bf16_speedup", lambda threads: 0.6)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(inference, "bf16_speedup", lambda threads: inference.BF16_MIN_SPEEDUP)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for by name: not measured
    assert resolve_precision("auto", "cuda:0") == "fp16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match="--precision 'half' is not one of auto, fp32, bf16, fp16"):
        resolve_precision("half", "cpu")


def test_bf16_speedup_is_measured_once_without_touching_the_random_stream(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="scripts.inference")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    inference.bf16_speedup.cache_clear()
    speedup = inference.bf16_speedup(torch.get_num_threads())
    assert math.isfinite(speedup) and speedup > 0
    assert torch.equal(torch.rand(3), expected)  # a training seeded before the checks draws the same numbers
    chosen = "bf16" if speedup >= inference.BF16_MIN_SPEEDUP else "fp32"
    assert f"as fast as float32 on this CPU ({torch.get_num_threads()} threads): --precision auto is {chosen}" in (
        caplog.text
    )
    caplog.clear()
    monkeypatch.setattr(inference, "native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == chosen
    assert "as fast as float32" not in caplog.text  # cached: measured and said once per process


@pytest.mark.parametrize("arch", ["unet", "sdnet", "densenet"])
def test_fast_paths_match_the_plain_network(arch):
    torch.manual_seed(0)
    net = get_network(arch, "scse", 2, 1, 5, features=8).eval()
    x = torch.rand(2, 1, 48, 40)
    with torch.no_grad():
        plain = net(x)
        fast = FastInference(net, precision="fp32", channels_last=True)(x)
        assert fast.dtype == torch.float32 and torch.allclose(fast, plain, atol=1e-4)
        half = FastInference(net, precision="bf16", channels_last=True)(x)
    assert half.dtype == torch.float32 and half.shape == plain.shape
    assert (half.argmax(1) == plain.argmax(1)).float().mean() > 0.95


def test_fast_inference_keeps_3d_networks_as_they_are():
    net = get_network("unet", "sse", 3, 1, 3, features=4).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(FastInference(net, precision="fp32")(x), net(x))


def _run(*args: str, cwd: str) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", *args, "--bundle_root", ROOT]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_cropped_fast_inference_gives_the_plain_labels_on_the_input_grid(tmp_path):
    data = str(tmp_path / "data")
    generate_dataset(data, num_subjects=4, shape=(40, 36, 32), seed=5, num_validation=1, num_test=1)
    io = ["--dataset_dir", data, "--default_dataset_dir", str(tmp_path / "unused"), "--features", "8"]
    # batches of 2: 8 updates per epoch (a batch may span passes over the 2 volumes, so batches of 4 would give 4)
    _run("run", "training", "--config_file", TRAIN, *io, "--epochs", "3", "--slices_per_volume", "8", "--batch_size",
         "2", "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "models"),
         cwd=str(tmp_path))  # fmt: skip
    # a scan with empty air around the head, as real scans have: the crop leaves out the padding
    source = nib.load(glob.glob(os.path.join(data, "imagesTr", "*.nii.gz"))[0])
    padded = np.pad(np.asarray(source.dataobj, dtype=np.float32), 12)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(padded, source.affine), str(scans / "head.nii.gz"))
    common = ["--dataset_dir", str(scans), "--checkpoint", str(tmp_path / "models" / "model.pt"), "--features", "8"]
    plain_path = ["--precision", "fp32", "--channels_last", "false", "--crop_foreground", "false"]
    _run("run", "inference", "--config_file", INFERENCE, *common, "--output_dir", str(tmp_path / "plain"),
         *plain_path, cwd=str(tmp_path))  # fmt: skip
    _run("run", "inference", "--config_file", INFERENCE, *common, "--output_dir", str(tmp_path / "fast"),
         "--precision", "fp32", cwd=str(tmp_path))  # fmt: skip
    plain, fast = (nib.load(str(tmp_path / k / "head_seg.nii.gz")) for k in ("plain", "fast"))
    assert fast.shape == plain.shape == padded.shape and np.allclose(fast.affine, source.affine)
    a, b = np.asarray(plain.dataobj), np.asarray(fast.dataobj)
    # the argmax of every batch of slices (the default here) gives the labels of the argmax of the stitched logits
    _run("run", "inference", "--config_file", INFERENCE, *common, "--output_dir", str(tmp_path / "logits"),
         *plain_path, "--argmax_in_inferer", "false", cwd=str(tmp_path))  # fmt: skip
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "logits" / "head_seg.nii.gz")).dataobj), a)
    assert len(np.unique(a)) > 2  # a real segmentation, not background everywhere
    # where the head is (the crop's foreground, scaled as load_transforms scales it), the labels are nearly the plain
    # ones; outside the crop the fast path says background, wherever a barely trained network might see structures in
    # air. Nearly: the box moves labels where the network's receptive field meets its edge, by how much depends on
    # the weights, which each CPU kind's rounding trains its own way (0.968 on an Intel Xeon without AMX, above 0.98
    # on the CPUs before); the plain labels moved by one voxel along any axis agree at only 0.86-0.93
    low, high = np.percentile(padded, [0.5, 99.5])
    head = (padded - low) / (high - low) > 0.05
    assert (a[head] == b[head]).mean() > 0.95
    # --crop_foreground slices: only the slices through the head, each whole, so exactly the plain path's labels there
    _run("run", "inference", "--config_file", INFERENCE, *common, "--output_dir", str(tmp_path / "slices"),
         "--precision", "fp32", "--crop_foreground", "slices", cwd=str(tmp_path))  # fmt: skip
    c = np.asarray(nib.load(str(tmp_path / "slices" / "head_seg.nii.gz")).dataobj)
    through_head = head.any(axis=(0, 1))  # RAS axis 2: the default config's axial slices (the input is RAS already)
    assert 0 < through_head.sum() < through_head.size
    assert np.array_equal(c[..., through_head], a[..., through_head])
    first, last = np.flatnonzero(through_head)[[0, -1]]
    beyond_margin = np.ones(through_head.size, dtype=bool)
    beyond_margin[max(first - 8, 0) : last + 9] = False  # crop_margin: 8
    assert not c[..., beyond_margin].any()


class _Pointwise(torch.nn.Module):
    """A network without spatial context (a 1x1 convolution), so a crop cannot change its output; counts its calls
    and the slice sizes it saw."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, classes, 1)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[2:]))
        return self.conv(x)


def test_each_batch_of_slices_is_segmented_in_its_own_foreground_box():
    net = _Pointwise()
    boxed = ForegroundBoxNetwork(net, num_classes=5, threshold=0.05, margin=3, k_divisible=8, background=0)
    x = torch.zeros(2, 1, 60, 50)
    x[0, 0, 20:25, 10:14] = 1.0  # foreground of the first slice, and of the second: the batch's box holds both
    x[1, 0, 30:33, 30:31] = 0.5
    with torch.no_grad():
        out, plain = boxed(x), net(x)
    assert out.shape == (2, 5, 60, 50) and out.dtype == torch.float32 and net.sizes[0] == (24, 32)
    # rows 17-35 plus margin (19) round up to 24, centred: 14-38; columns 7-33 (27) to 32: 4-36
    assert torch.equal(out[..., 14:38, 4:36], plain[..., 14:38, 4:36])
    outside = torch.ones(60, 50, dtype=torch.bool)
    outside[14:38, 4:36] = False
    assert (out.argmax(1)[:, outside] == 0).all()  # background there, with probability 1
    assert torch.allclose(torch.softmax(out, 1)[:, 0, outside], torch.ones(1))
    # a batch without foreground is not run; a box as large as the slice runs the slice whole
    assert (boxed(torch.zeros(3, 1, 60, 50)).argmax(1) == 0).all() and len(net.sizes) == 2
    edge = torch.zeros(1, 1, 20, 20)
    edge[..., 0, 0], edge[..., 19, 19] = 1.0, 1.0
    with torch.no_grad():
        assert torch.equal(boxed(edge), net(edge).float()) and net.sizes[-2] == (20, 20)


def test_a_batch_of_slices_runs_in_parts_of_at_most_max_pixels():
    net = _Pointwise()
    x = torch.rand(7, 1, 8, 6)
    with torch.no_grad():
        whole = net(x)
        for max_pixels, parts in [(2 * 48 + 5, 4), (10, 7), (None, 1), (10**6, 1)]:  # one slice at least
            calls = len(net.sizes)
            out = SliceBatches(net, max_pixels)(x)
            # the same values (up to rounding: the convolution may pick another kernel for another batch size)
            assert len(net.sizes) - calls == parts and torch.allclose(out, whole, atol=1e-6)
        assert SliceBatches(net, "null").max_pixels == 0  # as typed on the command line
    for bad in (-1, 2.5, "many", True):
        with pytest.raises(InputError, match=rf"--max_batch_pixels {bad!r} is not a whole number of pixels >= 0"):
            SliceBatches(net, bad)


@pytest.mark.parametrize("crop, boxes", [("boxes", True), (True, False), ("slices", False), ("false", False)])
def test_the_crop_option_chooses_the_slice_boxes(crop, boxes):
    assert slice_boxes(crop) is boxes
    assert len(inference.foreground_crop(crop, 0.05, 8, 2, 16)) == int(crop != "false")  # boxes: the volume's box too
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update({"crop_foreground": crop, "features": 8})
    network = parser.get_parsed_content("fast_network")
    assert isinstance(network, ForegroundBoxNetwork) is boxes
    if boxes:  # the volume's crop and the boxes share the threshold, margin and size multiple
        assert (network.threshold, network.margin, network.k_divisible, network.num_classes) == (0.05, 8, 16, 28)
        network = network.network
    # on the CPU in parts of 4 slices of 256^2 (inside the boxes); whole batches on CUDA
    cpu = parser.get_parsed_content("device").type == "cpu"
    assert isinstance(network, SliceBatches) is cpu and (not cpu or network.max_pixels == 2**18)
    assert isinstance(network.network if cpu else network, FastInference)
    with pytest.raises(InputError, match="--crop_foreground 'box' is not one of true, false, slices, boxes"):
        inference.foreground_crop("box", 0.05, 8, 2, 16)


def test_argmax_inferer_stitches_the_labels_of_the_stitched_logits():
    torch.manual_seed(0)
    net = get_network("unet", "scse", spatial_dims=2, out_channels=5, features=4).eval()
    volume = torch.randn(1, 1, 24, 16, 20)
    slices = SliceInferer(spatial_dim=2, roi_size=(-1, -1), sw_batch_size=7, progress=False)
    with torch.no_grad():
        logits = slices(volume, net)
        labels = ArgmaxInferer(slices)(volume, net)
    assert labels.shape == (1, 1, 24, 16, 20) and labels.dtype == torch.float32
    assert torch.equal(labels, logits.argmax(dim=1, keepdim=True).float())


def test_argmax_in_inferer_only_where_it_gives_the_same_labels():
    assert argmax_in_inferer("auto", interpolate=False, views={}) is True
    assert argmax_in_inferer("auto", interpolate=True, views={}) is False
    assert argmax_in_inferer("auto", interpolate=False, views={2: "axial.pt"}) is False
    assert argmax_in_inferer("auto", interpolate=False, views={}, mirror=True) is False
    assert argmax_in_inferer("false", interpolate=False, views={}) is False
    for interpolate, views, mirror in ((True, {}, False), (False, {2: "axial.pt"}, False), (False, {}, True)):
        with pytest.raises(InputError, match="argmax_in_inferer"):
            argmax_in_inferer(True, interpolate=interpolate, views=views, mirror=mirror)


def test_volume_benchmark_prints_the_chosen_settings(tiny_onnx_model):
    image = glob.glob(os.path.join(tiny_onnx_model["data"], "imagesTr", "*.nii.gz"))[0]
    onnx, checkpoint = tiny_onnx_model["onnx"], tiny_onnx_model["ckpt"]
    # the default's bundle run is in every other inference test; each setting here is a bundle run of its own
    chosen = ["fp32 + channels-last + crop slices only", "fp32 + channels-last + crop boxes per batch"]
    cmd = [sys.executable, "-m", "scripts.benchmark", "volume", "--image", image, "--checkpoint", checkpoint,
           "--onnx", onnx, "--only", *chosen,
           "--", "--features", "4"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and "matmul peak" in lines[1]
    rows = [line for line in lines if line.startswith(("plain fp32", "default (", "fp32 +", "auto precision", "onnxr"))]
    # the plain path always (the Dice columns' reference), the chosen ones, ONNX Runtime
    assert [row[:62].strip() for row in rows] == ["plain fp32", *chosen, "onnxruntime (fp32 + crop)"]
    assert resolve_precision("auto", "cpu") == "bf16" or ": --precision auto is fp32" in result.stdout
    assert rows[1].split()[-2:] == ["1.0000", "1.0000"]  # whole slices through the head: the plain path's labels
    plain = rows[0].split()
    assert plain[-2:] == ["1.0000", "1.0000"]  # the reference against itself


def test_volume_benchmark_refuses_an_unknown_setting_before_work(tmp_path, capsys):
    for name in ("scan.nii.gz", "model.pt"):  # present: only the setting is wrong
        (tmp_path / name).write_bytes(b"")
    args = ["volume", "--image", str(tmp_path / "scan.nii.gz"), "--checkpoint", str(tmp_path / "model.pt"),
            "--only", "default", "--", "--features", "4"]  # fmt: skip
    with pytest.raises(SystemExit) as refused:
        benchmark.main(args)
    assert "matmul" not in capsys.readouterr().out
    assert "--only: unknown setting 'default'" in str(refused.value.code)
    assert "default (fp32 + channels-last + crop)" in str(refused.value.code)


@pytest.mark.parametrize(
    "args,message",
    [
        (["peers", "--repeats", "0"], "--repeats 0 is out of range; expected at least 1"),
        (["peers", "--threads", "-1"], "--threads -1 is out of range; expected at least 0"),
        (["peers", "--device", "gpu"], "--device 'gpu' is not a device; expected cpu, cuda or cuda:N"),
        (
            ["volume", "--image", "{tmp}/none.nii.gz", "--checkpoint", "{tmp}/none.pt"],
            "--image '{tmp}/none.nii.gz' does not exist",
        ),
    ],
)
def test_benchmark_arguments_are_refused_in_one_line_before_work(tmp_path, capsys, args, message):
    # a missing --image failed with a traceback after the matmul peak; --repeats 0 and --threads -1 with tracebacks
    with pytest.raises(SystemExit) as refused:
        benchmark.main([a.replace("{tmp}", str(tmp_path)) for a in args])
    captured = capsys.readouterr()
    assert refused.value.code == 2 and "matmul" not in captured.out
    assert captured.err.strip().splitlines()[-1].endswith(message.replace("{tmp}", str(tmp_path)))


def test_peer_benchmark_prints_ours_beside_monais_networks(tmp_path, capsys):
    figures = str(tmp_path / "peers.json")
    cmd = [sys.executable, "-m", "scripts.benchmark", "peers", "--size", "32", "--features", "4", "--batch", "2",
           "--repeats", "1", "--volume_slices", "3", "--threads", "1", "--device", "cpu", "--json", figures,
           "--memory", "false"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and "inference channels-last" in lines[0] and "matmul peak" in lines[1]
    table = [line for line in lines if line.startswith("| ours") or line.startswith("| MONAI")]
    names = [line.split("|")[1].strip() for line in table]
    assert names == [f"ours {a} + {se}" for a in ("unet", "sdnet", "densenet") for se in ("none", "scse")] + [
        "MONAI BasicUNet", "MONAI Quicknat + None", "MONAI Quicknat + CSE"]  # fmt: skip
    assert sum(line.startswith("scSE / no SE, ours") for line in lines) == 3
    assert "Quicknat + CSE / ours densenet" in lines[-1]
    saved = json.load(open(figures))
    rows = {row["network"]: row for row in saved["rows"]}
    line_of = dict(zip(names, table))
    for arch in ("unet", "sdnet", "densenet"):  # one repeat: the paired ratio is the ratio of the two times
        ratio = saved["se_ratios"][arch]["training_step"]
        expected = rows[f"ours {arch} + scse"]["train_step_ms"] / rows[f"ours {arch} + none"]["train_step_ms"]
        assert ratio["min"] == ratio["q1"] == ratio["median"] == ratio["q3"] == ratio["max"] == pytest.approx(expected)
    assert rows["ours unet + scse"]["inference_ratio"] == 1.0 and rows["ours unet + scse"]["train_ratio"] == 1.0
    for row in rows.values():
        assert row["inference_ms_per_slice"] > 0 and row["train_step_ms"] > 0 and row["volume_s"] > 0
        assert row["gflop_per_slice"] > 0 and row["peak_gib"] is None and line_of[row["network"]].endswith(" - |")
    # the SE blocks add parameters, and the FLOPs torch counts grow with them
    assert rows["ours unet + scse"]["parameters"] > rows["ours unet + none"]["parameters"]
    # every network's peak memory comes from a process of its own (one here: each imports MONAI again)
    args = argparse.Namespace(size=32, features=4, kernel_size=5, classes=28, batch=2, precision="fp32",
                              channels_last=True, device="cpu", threads=1)  # fmt: skip
    assert benchmark._peer_memory(args, "MONAI Quicknat + CSE") > 0.05  # resident memory of that process
    for switch in ("--channels_last", "--peers", "--memory"):
        with pytest.raises(SystemExit) as refused:
            benchmark.main(["peers", switch, "maybe"])
        assert refused.value.code == 2
        message = f"argument {switch}: {switch} 'maybe' is not a switch; expected true or false"
        assert capsys.readouterr().err.strip().endswith(message)


def test_paired_ratio_takes_the_median_of_the_ratios_within_each_repeat():
    # ratios 1.1, 1.1, 1.1, 1.0 and one outlier of 2.0 within repeats, on a machine that slows down 8x over them
    ratio = paired_ratio([1.1, 2.2, 4.4, 8.0, 16.0], [1.0, 2.0, 4.0, 8.0, 8.0])
    assert ratio == pytest.approx({"median": 1.1, "q1": 1.1, "q3": 1.1, "min": 1.0, "max": 2.0})
    assert list(peer_networks(3, 4, 3, monai_peers=False)) == [
        f"ours {a} + {se}" for a in ("unet", "sdnet", "densenet") for se in ("none", "scse")]  # fmt: skip


def test_autocast_inferer_runs_the_forward_pass_in_the_chosen_precision(monkeypatch):
    net = get_network("unet", "scse", 2, 1, 3, features=4).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        plain = net(x)
        assert torch.equal(AutocastInferer("fp32")(x, net), plain)
        bf16 = AutocastInferer("bf16")(x, net)
    assert bf16.dtype == torch.float32 and bf16.shape == plain.shape
    assert (bf16.argmax(1) == plain.argmax(1)).float().mean() > 0.9
    monkeypatch.setattr("scripts.inference.native_bf16", lambda: False)
    assert AutocastInferer("auto", "cpu").precision == "fp32"  # emulated bf16 is slower than fp32
    with pytest.raises(ValueError, match="precision"):
        AutocastInferer("int8")


def test_float16_training_on_cuda_scales_its_loss():
    """fp16 autocast on CUDA needs MONAI's GradScaler (amp); bf16, fp32 and the CPU do not (no GPU needed)."""
    from monai.bundle import ConfigParser

    from scripts.inference import needs_loss_scaling

    assert needs_loss_scaling("fp16", "cuda") and needs_loss_scaling("auto", "cuda:1")
    assert not any(needs_loss_scaling(p, "cuda") for p in ("bf16", "fp32"))
    assert not any(needs_loss_scaling(p, "cpu") for p in ("fp16", "auto", "bf16"))
    parser = ConfigParser()
    parser.read_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "train.yaml"))
    parser.update({"device": "$torch.device('cpu')", "train_precision": "fp16"})
    assert parser.get_parsed_content("train#trainer#amp") is False
