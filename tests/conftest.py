"""Fixtures shared by several test files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scripts.data.synthetic import generate_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bundle(*args: str, cwd: str) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory) -> dict:
    """Four 32^3 subjects, a U-Net + scSE of 4 filters trained on them for one epoch (``model.pt``) and its export by
    the documented ONNX command run from the bundle root (``model.onnx``)."""
    root = tmp_path_factory.mktemp("tiny_onnx")
    data = str(root / "data")
    generate_dataset(data, num_subjects=4, shape=(32, 32, 32), seed=5, num_validation=1, num_test=1)
    models = root / "models"
    _bundle("run", "training", "--config_file", os.path.join(ROOT, "configs", "train.yaml"), "--bundle_root", ROOT,
            "--dataset_dir", data, "--default_dataset_dir", str(root / "unused"), "--features", "4", "--epochs", "1",
            "--slices_per_volume", "2", "--output_dir", str(root / "out"), "--ckpt_dir", str(models),
            cwd=str(root))  # fmt: skip
    ckpt, onnx = str(models / "model.pt"), str(models / "model.onnx")
    _bundle("onnx_export", "--args_file", os.path.join(ROOT, "configs", "onnx_export.yaml"), "--ckpt_file", ckpt,
            "--filepath", onnx, "--features", "4", cwd=ROOT)  # fmt: skip
    return {"root": root, "data": data, "models": models, "ckpt": ckpt, "onnx": onnx}
