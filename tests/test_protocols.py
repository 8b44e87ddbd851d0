"""The data protocols (configs/data/*.yaml): label mapping, preprocessing, refusals, and runs on the shared real data.

Tests that need ../shared/data are skipped when it is absent; the rest run on arrays made here.
"""

from __future__ import annotations

import csv
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
        "image": _volume(str(tmp_path / "ct.nii.gz"), np.arange(1600, dtype=np.int16).reshape(20, 20, 4), affine),
        "label": _volume(str(tmp_path / "seg.nii.gz"), label, affine),
    }
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [item], "validation": [item], "test": [item]}))
    args = ["--datalist", str(datalist), "--output_dir", str(tmp_path), "--ckpt_dir", str(tmp_path)]
    result = bundle("run", "training", "--config_file", f"['{TRAIN}','{CT}']", *args, cwd=str(tmp_path), check=False)
    assert result.returncode != 0
    assert "seg.nii.gz' has values [200] outside the declared labels 0..117" in result.stderr


BRAIN = os.path.join(CONFIGS, "data", "brain27.yaml")
EVALUATE = os.path.join(CONFIGS, "evaluate.yaml")


def test_brain27_maps_freesurfer_labels_and_parcels():
    parser = parse(TRAIN, BRAIN)
    names = parser["label_names"]
    remap = parser.get_parsed_content("remap_transforms")[0]
    values = [2, 41, 1005, 2010, 24, 515, 60, 0, 17]
    out = remap({"label": torch.tensor(values, dtype=torch.int16).view(1, 1, 1, -1)})["label"].flatten().tolist()
    expected = ["left cerebral white matter", "right cerebral white matter", "left cerebral cortex",
                "right cerebral cortex", "background", "background", "right ventral DC", "background",
                "left hippocampus"]  # fmt: skip
    assert out == [names.index(n) for n in expected]
    assert parser["slice_axis"] == 1 and parser["axcodes"] == "RAS"  # coronal slices
    assert len(names) == 28 and len(parser["freesurfer_labels"]) == 27


def test_brain27_writes_freesurfer_values_with_output_label_values_freesurfer():
    # FreeSurferColorLUT names and colours aseg values, not the protocol's indices: each class goes back to its value
    parser = parse(INFERENCE, BRAIN, output_label_values="freesurfer")
    (write,) = parser.get_parsed_content("output_label_transforms")
    indices = torch.arange(28, dtype=torch.uint8).view(1, 1, 1, -1)
    values = write({"pred": indices})["pred"]
    assert values.flatten().int().tolist() == [0, *parser["freesurfer_labels"]]
    assert values.flatten()[[1, 2, 16, 17]].int().tolist() == [2, 3, 41, 42]  # white matter and cortex, left and right
    remap = parse(TRAIN, BRAIN).get_parsed_content("remap_transforms")[0]  # what the scorer's --prediction_values
    assert torch.equal(remap({"label": values})["label"].int(), indices.int())  # source applies: the indices again
    assert parse(INFERENCE, BRAIN).get_parsed_content("output_label_transforms") == []  # the default: indices
    with pytest.raises(RuntimeError) as info:  # MONAI's parser wraps the check's one-line error
        parse(INFERENCE, BRAIN, output_label_values="aseg").get_parsed_content("output_label_transforms")
    assert str(info.value.__cause__) == "--output_label_values 'aseg' is not one of indices, freesurfer"


def test_brain27_reads_label_indices_with_label_values_indices():
    """As MONAI Label saves labels (and the packaged bundle's train.json reads them): no remapping, values 0-27."""
    parser = parse(TRAIN, BRAIN)
    parser["label_values"] = "indices"
    assert parser.get_parsed_content("remap_transforms") == []
    assert parser.get_parsed_content("allowed_labels") == list(range(28))
    parser = parse(TRAIN, BRAIN)
    parser["label_values"] = "aseg"
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content("allowed_labels")
    assert "--label_values 'aseg' is not one of freesurfer, indices" in str(raised.value.__cause__)


def _freesurfer_maps(folder, count: int, shape=(32, 32, 32)) -> str:
    """Label maps with FreeSurfer values, from the generated heads (3 mm), plus some extra-cerebral tissue (515)."""
    from scripts.data.synthetic import FREESURFER_LABELS, generate_subject

    os.makedirs(folder, exist_ok=True)
    lut = np.asarray(FREESURFER_LABELS, dtype=np.int16)
    for i in range(count):
        _, label = generate_subject(i, shape=shape, seed=5)
        fs = lut[label]
        fs[:2] = 515  # a skull-like slab the protocol maps to background
        _volume(os.path.join(folder, f"map_{i:02d}.nii.gz"), fs, np.diag([3.0, 3.0, 3.0, 1.0]))
    return str(folder)


@pytest.mark.parametrize("spacing", ["3.0", "6.0"])
def test_brain27_from_label_maps_trains_and_evaluates(tmp_path, spacing):
    """The maps are 3 mm; at 6 mm the network works on a coarser grid than the reference's, and the evaluation must
    still score the reference file as it is (not the label carried to 6 mm and back)."""
    maps = _freesurfer_maps(tmp_path / "maps", 5)
    config = f"['{TRAIN}','{BRAIN}']"
    args = ["--source", "label_maps", "--dataset_dir", maps, "--num_test", "1", "--num_validation", "1",
            "--spacing", f"[{spacing},{spacing},{spacing}]", "--slice_size", "[32,32]", "--features", "4",
            "--epochs", "1", "--slices_per_volume", "2"]  # fmt: skip
    args += ["--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "m")]
    # the training images synthesised a batch at a time on the trainer's device (the shared maps' test below
    # synthesises them in the loader)
    bundle("run", "training", "--config_file", config, *args, "--synthesis_on", "device", cwd=str(tmp_path))
    bundle("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}','{BRAIN}']", *args, cwd=str(tmp_path))
    summary = json.load(open(tmp_path / "out" / "eval" / "dice_summary.json"))
    assert summary["volumes"] == ["map_04.nii.gz"] and len(summary["structures"]) == 27
    source, seg = nib.load(os.path.join(maps, "map_04.nii.gz")), nib.load(
        str(tmp_path / "out" / "eval" / "predictions" / "map_04_seg.nii.gz")
    )
    assert seg.shape == source.shape and np.allclose(seg.affine, source.affine)
    # the synthesised test image is saved too (save_inputs), on the label's grid, for figures
    image = nib.load(str(tmp_path / "out" / "eval" / "inputs" / "map_04_image.nii.gz"))
    assert image.shape == source.shape and np.allclose(image.affine, source.affine)
    assert float(np.asarray(image.dataobj).std()) > 0
    label = nib.load(str(tmp_path / "out" / "eval" / "inputs" / "map_04_label.nii.gz"))  # protocol values, not FS
    assert label.shape == source.shape and set(np.unique(np.asarray(label.dataobj))) <= set(range(28))
    assert np.array_equal(np.asarray(label.dataobj) > 0, np.isin(np.asarray(source.dataobj), [0, 515], invert=True))
    # the evaluation's Dice is the standalone scorer's on the saved prediction against the map file
    from scripts.evaluation.segmentations import dice_per_structure, protocol

    names, remap = protocol([TRAIN, BRAIN])
    reference = np.asarray(remap({"label": np.asarray(source.dataobj)[None]})["label"])[0]
    expected = dice_per_structure(np.asarray(seg.dataobj), reference, len(names))
    with open(tmp_path / "out" / "eval" / "dice_per_volume.csv") as f:
        row = next(csv.DictReader(f))
    measured = np.array([float(row[name]) if row[name] not in ("", "nan") else np.nan for name in names[1:]])
    assert np.allclose(measured, expected, atol=1e-4, equal_nan=True)
    split = json.load(open(tmp_path / "out" / "datalist.json"))  # the split is recorded beside the outputs
    assert [len(split[k]) for k in ("training", "validation", "test")] == [3, 1, 1]


def test_brain27_refuses_unknown_values_and_empty_folders(tmp_path):
    maps = _freesurfer_maps(tmp_path / "maps", 3)
    bad = nib.load(os.path.join(maps, "map_00.nii.gz"))
    data = np.asarray(bad.dataobj).copy()
    data[0, 0, :2] = [99, 1234]
    nib.save(nib.Nifti1Image(data, bad.affine), os.path.join(maps, "map_00.nii.gz"))
    io = ["--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "m"), "--source", "label_maps"]
    config = f"['{TRAIN}','{BRAIN}']"
    result = bundle("run", "training", "--config_file", config, "--dataset_dir", maps, "--num_test", "1",
                    "--num_validation", "1", *io, cwd=str(tmp_path), check=False)  # fmt: skip
    assert (
        result.returncode != 0 and "map_00.nii.gz' has values [99, 1234] outside the declared labels" in result.stderr
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = bundle("run", "training", "--config_file", config, "--dataset_dir", str(empty), *io, cwd=str(tmp_path),
                    check=False)  # fmt: skip
    assert result.returncode != 0 and f"label map folder '{empty}' holds no label maps" in result.stderr


@pytest.mark.skipif(not os.path.isdir(BRAIN_DIR), reason="shared brain label maps not present")
def test_brain27_on_the_shared_label_maps(tmp_path):
    args = ["--source", "label_maps", "--dataset_dir", BRAIN_DIR, "--num_test", "1", "--num_validation", "1",
            "--spacing", "[4.0,4.0,4.0]", "--slice_size", "[64,64]", "--features", "4", "--epochs", "1",
            "--slices_per_volume", "1"]  # fmt: skip
    args += ["--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "m")]
    result = bundle("run", "training", "--config_file", f"['{TRAIN}','{BRAIN}']", *args, cwd=str(tmp_path))
    assert "val_mean_dice" in result.stdout + result.stderr
    split = json.load(open(tmp_path / "out" / "datalist.json"))
    assert [len(split[k]) for k in ("training", "validation", "test")] == [18, 1, 1]


@pytest.mark.parametrize("protocol", [BRAIN, CT])
def test_protocols_merge_over_inference(tmp_path, protocol):
    """MONAI Label and the inference command read inference.yaml with the protocol merged over it."""
    parser = parse(INFERENCE, protocol)
    image = _volume(str(tmp_path / "scan.nii.gz"), np.random.rand(24, 20, 18).astype(np.float32), np.eye(4))
    out = parser.get_parsed_content("preprocessing")({"image": image})
    assert out["image"].ndim == 4 and float(out["image"].max()) <= 1.0
    net = parser.get_parsed_content("network_def")
    assert net.classifier.out_channels == len(parser["label_names"])


def test_brain27_from_images_with_aseg_labels(tmp_path):
    """source: images: T1 images with FreeSurfer-valued labels in a Decathlon layout (imagesTr/, labelsTr/)."""
    from scripts.data.synthetic import FREESURFER_LABELS, generate_subject

    lut = np.asarray(FREESURFER_LABELS, dtype=np.int16)
    for i in range(5):
        image, label = generate_subject(i, shape=(32, 32, 32), seed=9)
        for sub, data in (("imagesTr", image), ("labelsTr", lut[label])):
            os.makedirs(tmp_path / "data" / sub, exist_ok=True)
            _volume(str(tmp_path / "data" / sub / f"case_{i}.nii.gz"), data, np.diag([3.0, 3.0, 3.0, 1.0]))
    args = ["--dataset_dir", str(tmp_path / "data"), "--spacing", "[3.0,3.0,3.0]", "--slice_size", "[32,32]",
            "--features", "4", "--epochs", "1", "--slices_per_volume", "2", "--num_test", "1", "--num_validation", "1",
            "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "m")]  # fmt: skip
    bundle("run", "training", "--config_file", f"['{TRAIN}','{BRAIN}']", *args, cwd=str(tmp_path))
    bundle("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}','{BRAIN}']", *args, cwd=str(tmp_path))
    summary = json.load(open(tmp_path / "out" / "eval" / "dice_summary.json"))
    assert summary["volumes"] == ["case_4.nii.gz"] and summary["overall"]["n"] == 1
    assert os.path.isfile(tmp_path / "m" / "model.pt")


REAL_T1 = os.path.join(SHARED, "real_t1_aseg")
SHIPPED = os.path.join(os.path.dirname(CONFIGS), "models", "brain27", "model.pt")
SHIPPED_AXIAL = os.path.join(os.path.dirname(CONFIGS), "models", "brain27", "axial", "model.pt")
SHIPPED_SAGITTAL = os.path.join(os.path.dirname(CONFIGS), "models", "brain27", "sagittal", "model.pt")
MIN_REAL_DICE = 0.7  # the shipped weights measured 0.801 on mne_sample_3mm (docs/README.md)


@pytest.mark.parametrize("views", [False, True], ids=["coronal", "coronal+sagittal+axial"])
def test_the_shipped_brain_model_segments_a_scan_in_any_orientation(tmp_path, views):
    """The inference command of the README with no other flag (and with the shipped sagittal and axial views), on a
    head in an oblique-free but unusual orientation (LPI-like axes, anisotropic voxels): labels on the input's grid."""
    from scripts.data.synthetic import generate_subject

    shipped = (SHIPPED, SHIPPED_AXIAL, SHIPPED_SAGITTAL)
    assert all(os.path.isfile(f) for f in shipped), "the shipped weights must be committed"
    image, _ = generate_subject(0, shape=(48, 40, 36), seed=1)
    affine = np.array([[-1.2, 0, 0, 30], [0, 0, -1.5, 20], [0, -1.0, 0, 40], [0, 0, 0, 1]])
    scans = tmp_path / "scans"
    scans.mkdir()
    _volume(str(scans / "head.nii.gz"), image.astype(np.float32), affine)
    config = f"['{INFERENCE}','{BRAIN}']"
    extra = ["--views", f"{{0: '{SHIPPED_SAGITTAL}', 2: '{SHIPPED_AXIAL}'}}"] if views else []
    # one view writes FreeSurfer's aseg values (--output_label_values freesurfer), the other the class indices
    extra = extra or ["--output_label_values", "freesurfer"]
    bundle("run", "inference", "--config_file", config, "--dataset_dir", str(scans), "--output_dir",
           str(tmp_path / "out"), *extra, cwd=str(tmp_path))  # fmt: skip
    seg = nib.load(str(tmp_path / "out" / "head_seg.nii.gz"))
    assert seg.shape == image.shape and np.allclose(seg.affine, affine)
    values = set(np.unique(np.asarray(seg.dataobj)).tolist())
    assert values <= (set(range(28)) if views else {0, *parse(TRAIN, BRAIN)["freesurfer_labels"]})
    assert views or values & {41, 42, 60}  # aseg values beyond the indices were written


@pytest.mark.skipif(not os.path.isdir(REAL_T1), reason="shared real T1 scans not present")
def test_the_shipped_brain_model_on_a_real_scan(tmp_path):
    """A regression check of the shipped weights on the real 3 mm development scan with skull (never trained on):
    its mean Dice over the 27 structures was measured with these weights (docs/README.md); a much lower value means
    the weights or the inference pipeline broke."""
    from scripts.evaluation.segmentations import main as dice_main

    scans = tmp_path / "scans"
    scans.mkdir()
    os.symlink(os.path.join(REAL_T1, "images", "mne_sample_3mm.nii.gz"), scans / "mne_sample_3mm.nii.gz")
    bundle("run", "inference", "--config_file", f"['{INFERENCE}','{BRAIN}']", "--dataset_dir", str(scans),
           "--output_dir", str(tmp_path / "out"), cwd=str(tmp_path))  # fmt: skip
    assert dice_main(["--predictions", str(tmp_path / "out"), "--labels", os.path.join(REAL_T1, "labels"),
                      "--config_file", f"['{TRAIN}','{BRAIN}']", "--out", str(tmp_path / "dice")]) == 0  # fmt: skip
    summary = json.load(open(tmp_path / "dice" / "dice_summary.json"))
    assert summary["overall"]["n"] == 1 and summary["overall"]["mean"] > MIN_REAL_DICE


def test_training_volumes_are_padded_and_cropped_in_plane_once_as_each_slice_would_be():
    """train#volume_resize pads/crops a cached volume to slice_size in the slice plane: every slice of it is the
    slice padded/cropped on its own (what the pipeline did per drawn slice before)."""
    from monai.transforms import Compose, ResizeWithPadOrCrop

    label = torch.as_tensor(np.random.default_rng(1).integers(0, 3, (1, 20, 9, 30)).astype(np.uint8))
    for slice_axis in (0, 1, 2):
        parser = parse(TRAIN, slice_axis=slice_axis, slice_size=[16, 12])
        resized = Compose(parser.get_parsed_content("train#volume_resize"))({"label": label})["label"]
        assert resized.shape[slice_axis + 1] == label.shape[slice_axis + 1]
        for j in range(label.shape[slice_axis + 1]):
            expected = ResizeWithPadOrCrop([16, 12])(label.select(slice_axis + 1, j))
            assert torch.equal(resized.select(slice_axis + 1, j).as_tensor(), torch.as_tensor(expected))


def test_training_slices_from_listed_voxels_equal_monais_draw_from_the_volume():
    """train#slice_sampling lists each volume's voxels once (FgBgToIndicesd, cached): the slices drawn are the ones
    RandCropByPosNegLabeld draws when it lists them itself at every draw, and no index list reaches the batch."""
    from monai.transforms import Compose, RandCropByPosNegLabeld, SqueezeDimd

    rng = np.random.default_rng(0)
    label = np.zeros((1, 20, 24, 18), dtype=np.uint8)
    label[0, 5:12, 6:20, 4:9] = 3
    label[0, 14:16, 2:5, 10:17] = 7
    item = {"image": torch.as_tensor(rng.random(label.shape, dtype=np.float32)), "label": torch.as_tensor(label)}
    for slice_axis in (0, 1, 2):
        parser = parse(TRAIN, slice_axis=slice_axis)
        ours = Compose(parser.get_parsed_content("train#slice_sampling"))
        plain = Compose(
            [
                RandCropByPosNegLabeld(
                    keys=["image", "label"],
                    label_key="label",
                    spatial_size=[1 if i == slice_axis else -1 for i in range(3)],
                    pos=parser["foreground_slice_ratio"],
                    neg=1.0,
                    num_samples=1,
                ),
                SqueezeDimd(keys=["image", "label"], dim=slice_axis + 1),
            ]
        )
        ours.set_random_state(seed=3)
        plain.set_random_state(seed=3)
        for _ in range(12):
            a, b = ours(dict(item))[0], plain(dict(item))[0]
            assert set(a) == {"image", "label"}
            assert torch.equal(a["label"].as_tensor(), b["label"].as_tensor())
            assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())


@pytest.mark.parametrize("protocol, interpolated", [(None, False), (BRAIN, True), (CT, False)])
def test_evaluation_carries_predictions_back_as_inference_does(protocol, interpolated):
    """brain27's coarser network: the evaluation interpolates the class probabilities, as inference.yaml does."""
    from scripts.aggregation import InvertProbabilitiesd
    from scripts.evaluation.reference import ReferenceLabeld

    files = [TRAIN, EVALUATE] + ([protocol] if protocol else [])
    steps = parse(*files).get_parsed_content("eval_postprocessing")
    assert any(isinstance(t, InvertProbabilitiesd) for t in steps) == interpolated
    assert isinstance(steps[-1], ReferenceLabeld)
    assert (
        parse(INFERENCE, *([protocol] if protocol else [])).get_parsed_content("interpolation_enabled") == interpolated
    )
