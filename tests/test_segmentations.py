"""Dice of written segmentations against reference labels on the reference's grid, with the protocol's remapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np

from scripts.evaluation.segmentations import dice_per_structure, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRAIN = "['configs/train.yaml','configs/data/brain27.yaml']"


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine), str(path))


def test_dice_per_structure_with_monai():
    ref = np.zeros((10, 10, 10), dtype=np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[6:8, 6:8, 6:8] = 2
    pred = ref.copy()
    pred[2:4, 2:6, 2:6] = 0  # half of structure 1 missed
    dice = dice_per_structure(pred, ref, num_classes=4)
    assert np.isclose(dice[0], 2 * 32 / (64 + 32)) and dice[1] == 1.0 and np.isnan(dice[2])  # class 3: absent


def test_freesurfer_references_are_mapped_to_the_protocol(tmp_path, capsys, caplog):
    preds, labels = tmp_path / "pred", tmp_path / "labels"
    preds.mkdir(), labels.mkdir()
    aseg = np.zeros((12, 12, 12), dtype=np.int16)
    aseg[2:6, 2:10, 2:10] = 2  # left cerebral white matter -> class 1
    aseg[6:10, 2:10, 2:10] = 1003  # a left cortical parcel -> class 2 (left cerebral cortex)
    aseg[0, 0, 0] = 24  # CSF -> background
    protocol_labels = np.zeros_like(aseg, dtype=np.uint8)
    protocol_labels[2:6, 2:10, 2:10] = 1
    protocol_labels[6:10, 2:10, 2:10] = 2
    _save(labels / "sub1.nii.gz", aseg)
    _save(preds / "sub1_seg.nii.gz", protocol_labels)
    assert main(["--predictions", str(preds), "--labels", str(labels), "--config_file", BRAIN, "--out",
                 str(tmp_path / "dice")]) == 0  # fmt: skip
    summary = json.load(open(tmp_path / "dice" / "dice_summary.json"))
    assert summary["overall"]["mean"] == 1.0 and summary["structures"]["left cerebral cortex"]["n"] == 1
    assert summary["structures"]["right thalamus"]["n"] == 0  # absent from the reference: left out
    assert "sub1: mean Dice 1.000 over 2 structures" in capsys.readouterr().out
    # a reference without a segmentation (a scan inference skipped) is named, not silently left out of the mean
    _save(labels / "sub0.nii.gz", aseg)
    with caplog.at_level("WARNING"):
        assert main(["--predictions", str(preds), "--labels", str(labels), "--config_file", BRAIN, "--out",
                     str(tmp_path / "dice")]) == 0  # fmt: skip
    assert "1 of the 2 references in" in caplog.text and "have no segmentation" in caplog.text
    assert caplog.text.rstrip().endswith("are not scored: sub0")
    # FreeSurfer's own aseg.mgz as the reference (LIA, int32), the segmentation written as NIfTI on its grid
    os.remove(labels / "sub0.nii.gz")
    lia = np.array([[-1.0, 0, 0, 6], [0, 0, 1, -6], [0, -1, 0, 6], [0, 0, 0, 1]])
    aseg[10:12, 2:10, 2:10] = 41  # right cerebral white matter -> class 16
    protocol_labels[10:12, 2:10, 2:10] = 16
    nib.save(nib.MGHImage(aseg.astype(np.int32), lia), str(labels / "sub2.mgz"))
    _save(preds / "sub2_seg.nii.gz", protocol_labels, lia)
    args = ["--predictions", str(preds), "--labels", str(labels), "--config_file", BRAIN, "--out", str(tmp_path / "d")]
    assert main(args) == 0
    assert "sub2: mean Dice 1.000 over 3 structures" in capsys.readouterr().out
    # a segmentation in aseg values (inference's --output_label_values freesurfer) is refused as class indices and
    # scored with --prediction_values source, mapped like the references
    fs_values = np.where(aseg == 1003, 3, np.where(aseg == 24, 0, aseg)).astype(np.uint8)
    _save(preds / "sub2_seg.nii.gz", fs_values, lia)
    assert main(args) == 2
    assert "sub2_seg.nii.gz' holds the value 41, not a class index 0-27" in capsys.readouterr().err
    assert main([*args, "--prediction_values", "source"]) == 0
    assert "sub2: mean Dice 1.000 over 3 structures" in capsys.readouterr().out
    # two references of one name: which one would be scored is refused, not guessed
    _save(labels / "sub2.nii.gz", aseg)
    assert main(["--predictions", str(preds), "--labels", str(labels), "--out", str(tmp_path / "dice")]) == 2
    err = capsys.readouterr().err
    assert "sub2.mgz' and '" in err and "sub2.nii.gz' would both give the reference of 'sub2'" in err


def test_mismatched_grids_and_missing_references_are_refused_in_one_line(tmp_path):
    preds, labels = tmp_path / "pred", tmp_path / "labels"
    preds.mkdir(), labels.mkdir()
    _save(labels / "sub1.nii.gz", np.full((8, 8, 8), 2, dtype=np.uint8))  # FreeSurfer's left cerebral white matter
    _save(preds / "sub1_seg.nii.gz", np.ones((8, 8, 8), dtype=np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    cmd = [sys.executable, "-m", "scripts.evaluation.segmentations", "--predictions", str(preds), "--labels",
           str(labels), "--out", str(tmp_path / "dice")]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("ERROR: ")
    assert "another affine" in result.stderr and "Traceback" not in result.stderr
    _save(preds / "sub2_seg.nii.gz", np.ones((8, 8, 8), dtype=np.uint8))
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "no reference label" in result.stderr and "sub2_seg.nii.gz" in result.stderr


def test_round_trip_gives_the_ceiling_of_a_coarser_model(tmp_path):
    from scripts.evaluation.segmentations import round_trip

    ref = np.zeros((24, 24, 24), dtype=np.int64)
    ref[4:20, 4:20, 4:20] = 1
    ref[10:13, 10:13, 10:13] = 2  # a structure smaller than the coarse voxels
    assert np.array_equal(round_trip(ref, (1, 1, 1), 1.0, 3), ref)
    coarse = dice_per_structure(round_trip(ref, (1, 1, 1), 4.0, 3), ref, 3)
    assert 0.8 < coarse[0] < 1.0 and coarse[1] < coarse[0]
    labels = tmp_path / "labels"
    labels.mkdir()
    _save(labels / "sub1.nii.gz", ref.astype(np.uint8))
    assert main(["--round_trip_mm", "1.0", "--labels", str(labels), "--config_file", "configs/train.yaml", "--out",
                 str(tmp_path / "dice")]) == 0  # fmt: skip
    assert json.load(open(tmp_path / "dice" / "dice_summary.json"))["overall"]["mean"] == 1.0


def test_unknown_or_unreadable_references_and_trailing_dimensions(tmp_path):
    preds, labels = tmp_path / "pred", tmp_path / "labels"
    preds.mkdir(), labels.mkdir()
    aseg = np.zeros((8, 8, 8), dtype=np.int16)
    aseg[2:6, 2:6, 2:6] = 2  # left cerebral white matter
    aseg[0, 0, 0] = 29  # a FreeSurfer value the protocol does not declare
    _save(labels / "sub1.nii.gz", aseg)
    pred = (aseg == 2).astype(np.uint8)
    _save(preds / "sub1_seg.nii.gz", pred[..., None])  # a 3D volume written with a last dimension of 1
    args = ["--predictions", str(preds), "--labels", str(labels), "--config_file", BRAIN, "--out", str(tmp_path / "d")]
    assert main(args) == 2  # refused, not scored as some class
    aseg[0, 0, 0] = 0
    _save(labels / "sub1.nii.gz", aseg)
    assert main(args) == 0  # the trailing dimension of 1 is the same grid
    assert json.load(open(tmp_path / "d" / "dice_summary.json"))["overall"]["mean"] == 1.0
    (labels / "sub1.nii.gz").write_bytes(open(labels / "sub1.nii.gz", "rb").read()[:-40])  # truncated
    cmd = [sys.executable, "-m", "scripts.evaluation.segmentations", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "sub1.nii.gz" in result.stderr
