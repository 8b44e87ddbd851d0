"""ONNX: every network exports with dynamic batch and slice size, and ONNX Runtime gives the network's output, alone
and through the inference config (--backend onnxruntime)."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.networks.utils import convert_to_onnx

from scripts.inference import OnnxRuntimeNetwork
from scripts.networks import ARCHS, SE_TYPES, get_network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT_ARGS = os.path.join(ROOT, "configs", "onnx_export.yaml")
TRAIN = os.path.join(ROOT, "configs", "train.yaml")
INFERENCE = os.path.join(ROOT, "configs", "inference.yaml")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("se", SE_TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_network_exports_with_dynamic_batch_and_size(arch, se, tmp_path):
    args = yaml.safe_load(open(EXPORT_ARGS))
    torch.manual_seed(0)
    net = get_network(arch, se, 2, 1, 5, features=8).eval()
    path = str(tmp_path / "net.onnx")
    convert_to_onnx(net, [torch.rand(*args["input_shape"])], filename=path, use_trace=True, **args["converter_kwargs"])
    x = torch.rand(3, 1, 48, 40)  # another batch and slice size than the export's
    with torch.no_grad():
        expected = net(x)
    runner = OnnxRuntimeNetwork(path)
    got = runner(x)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # the threads torch was given, not ONNX Runtime's count of the machine's cores
    assert runner.session.get_session_options().intra_op_num_threads == torch.get_num_threads()


def _bundle(*args: str, cwd: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def test_inference_with_onnxruntime_gives_the_torch_labels(tiny_onnx_model, tmp_path):
    # a trained checkpoint and its export by the documented command, from the bundle root (tests/conftest.py)
    data, models = tiny_onnx_model["data"], tiny_onnx_model["models"]
    scans = os.path.join(data, "imagesTr")
    common = ["run", "inference", "--config_file", INFERENCE, "--bundle_root", ROOT, "--dataset_dir", scans,
              "--ckpt_dir", str(models), "--features", "4"]  # fmt: skip
    _bundle(*common, "--output_dir", str(tmp_path / "torch"), cwd=str(tmp_path))
    _bundle(*common, "--output_dir", str(tmp_path / "onnx"), "--backend", "onnxruntime", cwd=str(tmp_path))
    names = sorted(os.listdir(tmp_path / "torch"))
    assert len(names) == 4 and names == sorted(os.listdir(tmp_path / "onnx"))
    for name in names:
        a, b = (nib.load(str(tmp_path / k / name)) for k in ("torch", "onnx"))
        assert np.allclose(a.affine, b.affine)
        assert (np.asarray(a.dataobj) == np.asarray(b.dataobj)).mean() > 0.999
    missing = _bundle(*common, "--output_dir", str(tmp_path / "x"), "--backend", "onnxruntime", "--onnx_file",
                      str(tmp_path / "none.onnx"), cwd=str(tmp_path), check=False)  # fmt: skip
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert (
        missing.stderr.strip().splitlines()[-1].startswith(f"ERROR: --onnx_file '{tmp_path}/none.onnx' does not exist")
    )


def test_an_export_of_another_protocol_is_refused_before_work(tmp_path):
    """check_model compares the export's classes with the configured network's (a 5-class export, 28 configured)."""
    from scripts.errors import InputError
    from scripts.inference import check_model

    args = yaml.safe_load(open(EXPORT_ARGS))
    path = str(tmp_path / "five.onnx")
    five = get_network("unet", "scse", 2, 1, 5, features=4).eval()
    convert_to_onnx(five, [torch.rand(*args["input_shape"])], filename=path, use_trace=True, **args["converter_kwargs"])
    assert OnnxRuntimeNetwork(path).out_channels == 5
    assert check_model("onnxruntime", "unused.pt", path, five) == path
    with pytest.raises(InputError, match=f"--onnx_file '{path}' gives 5 classes but the configured protocol has 28"):
        check_model("onnxruntime", "unused.pt", path, get_network("unet", "scse", 2, 1, 28, features=4))
