"""Shifted copies of development scans (scripts/evaluation/shifted.py): contrast reversed, thick slices."""

import os

import nibabel as nib
import numpy as np
import pytest

from scripts.errors import InputError
from scripts.evaluation.shifted import inverted_contrast, main, thick_slices, world_axis

LIA = np.array([[-1.0, 0, 0, 128], [0, 0, 1, -128], [0, -1, 0, 128], [0, 0, 0, 1]])


def test_inverted_contrast_reverses_the_head_and_keeps_the_background():
    image = np.zeros((6, 6, 6), np.float32)
    image[1:5, 1:5, 1:5] = 50.0  # grey
    image[2:4, 2:4, 2:4] = 100.0  # white, brightest in T1
    out = inverted_contrast(image, high_percentile=100.0)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.all(out[image == 0] == 0)
    assert out[2, 2, 2] < out[1, 1, 1]  # white matter now darker than grey matter
    with pytest.raises(InputError):
        inverted_contrast(np.zeros((3, 3, 3)))


def test_thick_slices_average_blocks_and_keep_the_grid():
    rng = np.random.default_rng(0)
    image = rng.random((4, 12, 5)).astype(np.float32)
    assert np.allclose(thick_slices(image, axis=1, k=1), image)
    out = thick_slices(image, axis=1, k=3)
    assert out.shape == image.shape
    # the centre voxel of every block of 3 is that block's mean; voxels between two centres mix the two
    for j in range(4):
        assert np.allclose(out[:, 3 * j + 1], image[:, 3 * j : 3 * j + 3].mean(axis=1), atol=1e-6)
    assert np.allclose(out[:, 2], (2 * image[:, 0:3].mean(1) + image[:, 3:6].mean(1)) / 3, atol=1e-6)
    # constant along the axis stays constant; less variance across the axis than the input
    flat = np.repeat(image[:, :1], 12, axis=1)
    assert np.allclose(thick_slices(flat, axis=1, k=5), flat, atol=1e-6)
    assert np.diff(out, axis=1).std() < np.diff(image, axis=1).std()


def test_world_axis_finds_the_axial_direction():
    assert world_axis(LIA, "S") == 1 and world_axis(LIA, "A") == 2 and world_axis(LIA, "R") == 0
    with pytest.raises(InputError):
        world_axis(LIA, "X")


def test_cli_writes_shifted_scans_on_the_same_grid(tmp_path, capsys):
    images, labels, out = tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    images.mkdir(), labels.mkdir()
    data = np.zeros((8, 10, 6), np.float32)
    data[2:6, 2:8, 1:5] = 80.0
    affine = LIA.copy()
    affine[:3, :3] *= 2.0  # 2 mm voxels: 5 mm rounds to slices of 2 voxels, 4 mm
    nib.save(nib.Nifti1Image(data, affine), str(images / "head.nii.gz"))
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8), affine), str(labels / "head.nii.gz"))
    assert main(["--images", str(images), "--labels", str(labels), "--out", str(out)]) == 0
    for tag in ("inverted", "thick4mm"):
        img = nib.load(str(out / "images" / f"head_{tag}.nii.gz"))
        assert img.shape == data.shape and np.allclose(img.affine, affine)
        assert os.path.exists(out / "labels" / f"head_{tag}.nii.gz")
    # FreeSurfer's .mgz, and a .nii label: written as the .nii.gz they are named (a copy was unreadable under it)
    nib.save(nib.MGHImage(data, affine), str(images / "fs.mgz"))
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8), affine), str(labels / "fs.nii"))
    assert main(["--images", str(images), "--labels", str(labels), "--out", str(out)]) == 0
    for sub in ("images", "labels"):
        img = nib.load(str(out / sub / "fs_thick4mm.nii.gz"))
        assert img.shape == data.shape and np.allclose(img.affine, affine)
    assert np.array_equal(np.asarray(img.dataobj), data > 0)
    os.remove(images / "fs.mgz"), os.remove(labels / "fs.nii")
    assert main(["--images", str(tmp_path / "missing"), "--labels", str(labels), "--out", str(out)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["--images", str(images), "--labels", str(labels), "--out", str(out), "--thickness_mm", "0"]) == 2
    assert "--thickness_mm must be a positive" in capsys.readouterr().err
    # an empty scan: one line naming the file
    nib.save(nib.Nifti1Image(np.zeros_like(data), affine), str(images / "head.nii.gz"))
    assert main(["--images", str(images), "--labels", str(labels), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "head.nii.gz" in err and "no positive voxel" in err and len(err.strip().splitlines()) == 1
