"""The Dice report: named per-volume CSV and JSON summary from known numbers; the Dice on the joint foreground box."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.metrics import DiceMetric

from scripts.evaluation.crop import CropJointForegroundd, joint_foreground_box
from scripts.evaluation.report import summarise_dice, write_dice_report
from scripts.evaluation.segmentations import dice_per_structure


def test_summary_of_known_numbers():
    dice = np.array([[0.8, 0.6], [0.6, np.nan], [1.0, 0.2]])
    s = summarise_dice(dice, ["a", "b"])
    assert s["structures"]["a"] == pytest.approx({"mean": 0.8, "std": np.std([0.8, 0.6, 1.0]), "n": 3})
    assert s["structures"]["b"] == pytest.approx({"mean": 0.4, "std": 0.2, "n": 2})
    per_volume = [0.7, 0.6, 0.6]  # NaN (structure absent in label and prediction) is skipped
    assert s["overall"] == pytest.approx({"mean": np.mean(per_volume), "std": np.std(per_volume), "n": 3})


def test_report_files(tmp_path):
    paths = write_dice_report(
        str(tmp_path), ["v1.nii.gz", "v2.nii.gz"], np.array([[0.5, 1.0], [0.25, 0.75]]), ["x", "y"]
    )
    with open(paths["csv"]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["volume", "x", "y", "mean"]
    assert rows[1] == ["v1.nii.gz", "0.5000", "1.0000", "0.7500"]
    summary = json.load(open(paths["json"]))
    assert summary["volumes"] == ["v1.nii.gz", "v2.nii.gz"]
    assert summary["overall"]["mean"] == pytest.approx(0.625)
    assert summary["structures"]["y"]["mean"] == pytest.approx(0.875)


def _label_maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference with classes 1-3 inside a block of a 3D grid and a prediction that also puts class 4 (absent from
    the reference) and class 2 outside it, channel first, as the evaluation's postprocessing hands them on."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.zeros(1, 24, 20, 16, dtype=torch.uint8)
    ref[0, 6:15, 5:14, 4:12] = torch.randint(0, 4, (9, 9, 8), generator=g, dtype=torch.uint8)
    pred = ref.clone()
    block = pred[0, 6:15, 5:14, 4:12]
    flips = torch.rand(block.shape, generator=g) < 0.2  # a fifth of the block's voxels get any class, 4 included
    block[flips] = torch.randint(0, 5, (int(flips.sum()),), generator=g, dtype=torch.uint8)
    pred[0, 20, 1, 14] = 2  # a false positive far from the reference's structures
    return pred, ref


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_on_the_joint_foreground_box_is_the_whole_volumes_dice(seed):
    pred, ref = _label_maps(seed)
    cropped = CropJointForegroundd(keys=["pred", "label"])({"pred": MetaTensor(pred), "label": MetaTensor(ref)})
    assert cropped["pred"].shape == cropped["label"].shape == (1, 15, 13, 11)  # the false positive's corner included
    assert cropped["pred"].affine[:3, 3].tolist() == [6.0, 1.0, 4.0]  # the crop's origin (MONAI's SpatialCrop)
    metric = DiceMetric(include_background=False, num_classes=5, ignore_empty=True)
    whole = metric(pred[None], ref[None])
    on_box = metric(cropped["pred"][None], cropped["label"][None])
    assert torch.isnan(whole[0, 3]) and torch.isnan(on_box[0, 3])  # class 4: absent from the reference in both
    assert torch.equal(whole[0, :3], on_box[0, :3]) and whole[0, :3].min() < 1
    assert np.array_equal(
        dice_per_structure(pred[0].numpy(), ref[0].numpy(), 5), whole[0].numpy(), equal_nan=True
    )  # the standalone evaluation's Dice, on its own crop


def test_no_crop_with_the_background_class_or_without_foreground():
    pred, ref = _label_maps()
    kept = CropJointForegroundd(keys=["pred", "label"], include_background=True)({"pred": pred, "label": ref})
    assert kept["pred"].shape == pred.shape  # the background's Dice counts the voxels a crop would drop
    empty = torch.zeros_like(ref)
    assert CropJointForegroundd(keys=["pred", "label"])({"pred": empty, "label": empty})["label"].shape == ref.shape
    assert joint_foreground_box([empty, empty]) is None
    with pytest.raises(ValueError, match="one shape"):
        joint_foreground_box([ref, ref[:, 1:]])


def test_the_reference_is_the_label_file_with_the_protocols_values(tmp_path):
    """ReferenceLabeld reads the label file again with the value transforms only (the spatial ones are Invertd's)."""
    import nibabel as nib
    from monai.transforms import EnsureChannelFirstd, LoadImaged, MapLabelValued, Orientationd, Spacingd

    from scripts.errors import InputError
    from scripts.evaluation.reference import ReferenceLabeld, value_transforms

    values = np.zeros((12, 10, 8), dtype=np.int16)
    values[2:9, 3:7, 1:6], values[4:6, 4:6, 2:4] = 41, 17
    path = str(tmp_path / "map.nii.gz")
    nib.save(nib.Nifti1Image(values, np.diag([1.0, 1.0, 1.0, 1.0])), path)
    transforms = [
        LoadImaged("label", image_only=True),
        EnsureChannelFirstd("label"),
        Orientationd("label", axcodes="LPS"),
        Spacingd("label", pixdim=(2.0, 2.0, 2.0), mode="nearest"),
        MapLabelValued("label", orig_labels=[0, 41, 17], target_labels=[0, 1, 2]),
    ]
    assert [type(t).__name__ for t in value_transforms(transforms)] == [
        "LoadImaged",
        "EnsureChannelFirstd",
        "MapLabelValued",
    ]
    carried = transforms[0]({"label": path})
    for t in transforms[1:]:
        carried = t(carried)  # the label as the network's grid has it: reoriented, 2 mm, protocol values
    pred = torch.zeros((1, 12, 10, 8))
    out = ReferenceLabeld("label", transforms, like="pred")({"label": carried["label"], "pred": pred})
    expected = np.select([values == 41, values == 17], [1, 2], 0)
    assert np.array_equal(np.asarray(out["label"])[0], expected)
    with pytest.raises(InputError, match="came back as \\(6, 5, 4\\)"):
        ReferenceLabeld("label", transforms)({"label": carried["label"], "pred": torch.zeros((1, 6, 5, 4))})
    with pytest.raises(InputError, match="'label' has no file name"):
        ReferenceLabeld("label", transforms)({"label": torch.zeros((1, 4, 4, 4)), "pred": pred})
