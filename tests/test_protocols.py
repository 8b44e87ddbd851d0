"""The data protocols (configs/data/*.yaml): label mapping, preprocessing, refusals, and runs on the shared real data.

Tests that need ../shared/data are skipped when it is absent; the rest run on arrays made here.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from test_bundle import CONFIGS, TRAIN, bundle

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
CT_DIR = os.path.join(SHARED, "ct_example")
BRAIN_DIR = os.path.join(SHARED, "brain_label_maps")
CT = os.path.join(CONFIGS, "data", "abdomen_ct.yaml")
CT_BTCV = os.path.join(CONFIGS, "data", "abdomen_ct_btcv.yaml")
INFERENCE = os.path.join(CONFIGS, "inference.yaml")


def parse(*files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(overrides)
    return parser


def _volume(path: str, data: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_ct_protocol_maps_totalsegmentator_labels(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    label = np.zeros((40, 30, 6), dtype=np.uint8)
    # TotalSegmentator values: liver 5, right kidney cyst 24, right lung lobes 12/14, iliopsoas 88, stomach 6
    for i, value in enumerate([5, 24, 12, 14, 88, 6]):
        label[5 * i : 5 * i + 5, :, :] = value
    image = np.full(label.shape, -1200, dtype=np.int16)
    image[:, 15:, :] = 900
    item = {
        "image": _volume(str(tmp_path / "ct.nii.gz"), image, affine),
        "label": _volume(str(tmp_path / "seg.nii.gz"), label, affine),
    }
    parser = parse(TRAIN, CT)
    out = parser.get_parsed_content("validate#preprocessing")(item)
    names = parser["label_names"]
    assert len(names) == 11
    # 1.5 mm in plane (40 x 0.8 mm -> 21 or 22 voxels), slice spacing kept
    assert out["label"].shape[1:3] in ((21, 16), (22, 16)) and out["label"].shape[3] == 6
    assert np.allclose(out["image"].affine[:3, :3].abs().diagonal(), [1.5, 1.5, 2.5])
    mapped = {int(v) for v in torch.unique(out["label"])}
    expected = {names.index(n) for n in ("liver", "right kidney", "right lung", "left psoas major")} | {0}
    assert mapped == expected  # stomach (6) became background
    # HU window [-1000, 500] -> [0, 1], clipped
    assert float(out["image"].min()) == 0.0 and float(out["image"].max()) == 1.0


def test_ct_btcv_variant_maps_btcv_labels():
    parser = parse(TRAIN, CT, CT_BTCV)
    mapper = parser.get_parsed_content("load_transforms")[4]
    label = torch.tensor([[[[6, 1, 11, 2, 3, 7, 13]]]], dtype=torch.uint8)
    out = mapper({"label": label})["label"].flatten().tolist()
    names = parser["label_names"]
    assert out == [names.index(n) for n in ("liver", "spleen", "pancreas", "right kidney", "left kidney")] + [0, 0]
    assert parser.get_parsed_content("allowed_labels") == list(range(14))


@pytest.mark.skipif(not os.path.isdir(CT_DIR), reason="shared CT examples not present")
def test_ct_protocol_trains_on_the_shared_ct_and_segments_every_volume(tmp_path):
    volumes = {
        "slab": ("ct_512x512x20.nii.gz", "ct_512x512x20_totalseg_labels.nii.gz"),
        "abdomen": ("example_ct_3mm_30slices.nii.gz", "example_ct_3mm_30slices_totalseg_labels.nii.gz"),
    }
    items = {k: {"image": os.path.join(CT_DIR, i), "label": os.path.join(CT_DIR, s)} for k, (i, s) in volumes.items()}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        json.dumps({"training": [items["slab"]], "validation": [items["abdomen"]], "test": [items["abdomen"]]})
    )
    images = ["ct_512x512x20.nii.gz", "example_ct.nii.gz", "example_ct_3mm_30slices.nii.gz"]
    infer = tmp_path / "infer.json"
    infer.write_text(json.dumps({"inference": [{"image": os.path.join(CT_DIR, n)} for n in images]}))
    models = str(tmp_path / "models")
    config = f"['{TRAIN}','{CT}']"
    bundle("run", "training", "--config_file", config, "--datalist", str(datalist), "--output_dir",
           str(tmp_path / "out"), "--ckpt_dir", models, "--epochs", "1", "--slices_per_volume", "4", "--features",
           "4", cwd=str(tmp_path))  # fmt: skip
    bundle("run", "inference", "--config_file", f"['{INFERENCE}','{CT}']", "--datalist", str(infer), "--output_dir",
           str(tmp_path / "seg"), "--ckpt_dir", models, "--features", "4", cwd=str(tmp_path))  # fmt: skip
    for name in images:
        source = nib.load(os.path.join(CT_DIR, name))
        seg = nib.load(str(tmp_path / "seg" / name.replace(".nii.gz", "_seg.nii.gz")))
        assert seg.shape == source.shape and np.allclose(seg.affine, source.affine)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(range(11))


def test_ct_protocol_refuses_unknown_label_values(tmp_path):
    affine = np.eye(4)
    label = np.zeros((20, 20, 4), dtype=np.uint8)
    label[0, 0, 0] = 200
    item = {
        "image": _volume(str(tmp_path / "ct.nii.gz"), np.zeros((20, 20, 4), dtype=np.int16), affine),
        "label": _volume(str(tmp_path / "seg.nii.gz"), label, affine),
    }
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [item], "validation": [item], "test": [item]}))
    args = ["--datalist", str(datalist), "--output_dir", str(tmp_path), "--ckpt_dir", str(tmp_path)]
    result = bundle("run", "training", "--config_file", f"['{TRAIN}','{CT}']", *args, cwd=str(tmp_path), check=False)
    assert result.returncode != 0
    assert "seg.nii.gz' has values [200] outside the declared labels 0..117" in result.stderr
