"""The generated default dataset: determinism, layout, label coverage and sizes, T1-like contrast, safe generation."""

from __future__ import annotations

import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest

from scripts.data import synthetic
from scripts.data.synthetic import LABEL_NAMES, ensure_default_dataset, generate_dataset, generate_subject, main

SMALL = (32, 32, 32)
# Structures the task must find although each is under 1% of the brain (MALC's hard cases).
SMALL_STRUCTURES = [
    "3rd ventricle",
    "4th ventricle",
    "left hippocampus",
    "right hippocampus",
    "left amygdala",
    "right amygdala",
    "left caudate",
    "right caudate",
    "left pallidum",
    "right pallidum",
]


def _digest(folder: str) -> str:
    """Hash of the arrays and affines of every volume under ``folder``, in name order."""
    sha = hashlib.sha256()
    for sub in ("imagesTr", "labelsTr"):
        for name in sorted(os.listdir(os.path.join(folder, sub))):
            image = nib.load(os.path.join(folder, sub, name))
            sha.update(name.encode())
            sha.update(np.ascontiguousarray(image.get_fdata(dtype=np.float32)).tobytes())
            sha.update(image.affine.tobytes())
    return sha.hexdigest()


def test_label_names():
    assert LABEL_NAMES[0] == "background"
    assert len(LABEL_NAMES) == len(set(LABEL_NAMES)) >= 17
    for name in LABEL_NAMES:
        if name.startswith("left "):
            assert "right " + name[len("left ") :] in LABEL_NAMES


def test_determinism(tmp_path):
    kwargs = {"num_subjects": 3, "shape": SMALL, "seed": 5, "num_validation": 1, "num_test": 1}
    first = generate_dataset(str(tmp_path / "a"), **kwargs)
    second = generate_dataset(str(tmp_path / "b"), **kwargs)
    other = generate_dataset(str(tmp_path / "c"), **{**kwargs, "seed": 6})
    assert _digest(os.path.dirname(first)) == _digest(os.path.dirname(second))
    assert _digest(os.path.dirname(first)) != _digest(os.path.dirname(other))
    # nibabel writes gzip with a fixed timestamp, so the files themselves are identical too.
    for name in ("imagesTr/subject_000.nii.gz", "labelsTr/subject_002.nii.gz", "datalist.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # A subject depends on (seed, index) only, not on how many subjects are generated.
    image, label = generate_subject(1, SMALL, seed=5)
    saved_image = nib.load(str(tmp_path / "a" / "imagesTr" / "subject_001.nii.gz"))
    saved_label = nib.load(str(tmp_path / "a" / "labelsTr" / "subject_001.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(saved_image.dataobj), image)
    np.testing.assert_array_equal(np.asanyarray(saved_label.dataobj), label)


def test_datalist_layout_and_affine(tmp_path):
    path = generate_dataset(
        str(tmp_path / "ds"), num_subjects=5, shape=(32, 30, 28), spacing=2.5, seed=1, num_validation=1, num_test=2
    )
    assert path == str(tmp_path / "ds" / "datalist.json")
    with open(path) as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [2, 1, 2]
    assert datalist["labels"] == {str(i): n for i, n in enumerate(LABEL_NAMES)}
    assert datalist["seed"] == 1
    names = [item["image"] for k in ("training", "validation", "test") for item in datalist[k]]
    assert names == [f"imagesTr/subject_{i:03d}.nii.gz" for i in range(5)]
    item = datalist["test"][0]
    assert item["label"] == item["image"].replace("imagesTr", "labelsTr")
    image = nib.load(str(tmp_path / "ds" / item["image"]))
    label = nib.load(str(tmp_path / "ds" / item["label"]))
    assert image.shape == label.shape == (32, 30, 28)
    assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
    expected = np.diag([2.5, 2.5, 2.5, 1.0])
    expected[:3, 3] = -(np.array([32, 30, 28]) - 1) / 2 * 2.5  # centred on the world origin
    np.testing.assert_allclose(image.affine, expected)
    np.testing.assert_allclose(label.affine, expected)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no staging folder left behind


def test_labels_cover_all_structures_and_small_ones_are_small():
    image, label = generate_subject(0, (48, 48, 48), seed=0)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    counts = np.bincount(label.ravel(), minlength=len(LABEL_NAMES))
    assert len(counts) == len(LABEL_NAMES) and counts.all()
    fractions = counts[1:] / counts[1:].sum()
    report = {n: round(100 * f, 2) for n, f in zip(LABEL_NAMES[1:], fractions)}
    print("\nvoxel % of the brain:", report)
    for name in SMALL_STRUCTURES:
        assert 0 < report[name] < 1.0, (name, report[name])
    # Large structures dominate, as in real brains (cerebral white matter and cortex are about 20% each).
    assert report["left cerebral white matter"] > 10 and report["right cerebral cortex"] > 10


def test_t1_contrast_and_unlabelled_tissue():
    image, label = generate_subject(2, SMALL, seed=0)
    index = {n: i for i, n in enumerate(LABEL_NAMES)}

    def mean(*names: str) -> float:
        return float(image[np.isin(label, [index[n] for n in names])].mean())

    wm = mean("left cerebral white matter", "right cerebral white matter")
    gm = mean("left cerebral cortex", "right cerebral cortex")
    csf = mean("left lateral ventricle", "right lateral ventricle", "3rd ventricle")
    assert wm > gm > csf
    assert np.isfinite(image).all() and image.min() >= 0
    # Background is not trivially dark: scalp and skull are part of it, with intensities up to white matter's.
    background = image[label == 0]
    assert np.percentile(background, 95) > 0.5 * wm
    # Left and right share one intensity distribution (only the smooth bias field differs), so a network must use
    # spatial context to tell them apart.
    ratios = []
    for subject in range(4):
        img, lab = generate_subject(subject, SMALL, seed=0)
        for left in ("left thalamus", "left putamen", "left cerebral cortex"):
            right = left.replace("left", "right")
            ratios.append(img[lab == index[left]].mean() / img[lab == index[right]].mean())
    assert 0.93 < np.mean(ratios) < 1.07


def test_subjects_differ():
    _, first = generate_subject(0, SMALL, seed=0)
    _, second = generate_subject(1, SMALL, seed=0)
    assert (first != second).mean() > 0.05


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        generate_dataset(str(tmp_path / "out"), num_subjects=3, shape=SMALL, num_validation=1, num_test=1)
    with pytest.raises(ValueError, match="no training subject"):
        generate_dataset(str(tmp_path / "new"), num_subjects=2, shape=SMALL, num_validation=1, num_test=1)


def test_ensure_default_dataset(tmp_path):
    kwargs = {"num_subjects": 3, "shape": SMALL, "num_validation": 1, "num_test": 1}
    empty = tmp_path / "empty"
    empty.mkdir()
    path = ensure_default_dataset(str(empty), **kwargs)
    assert os.path.isfile(path) and len(os.listdir(empty / "imagesTr")) == 3
    stamp = os.stat(path).st_mtime_ns
    assert ensure_default_dataset(str(empty), **kwargs) == path and os.stat(path).st_mtime_ns == stamp  # reused
    assert os.path.isfile(ensure_default_dataset(str(tmp_path / "missing" / "deeper"), **kwargs))


def test_interrupted_generation_is_refused(tmp_path):
    # What an interrupted copy or an older partial run leaves: volumes but no datalist.json.
    folder = tmp_path / "partial"
    generate_dataset(str(folder), num_subjects=3, shape=SMALL, num_validation=1, num_test=1)
    os.remove(folder / "datalist.json")
    os.remove(folder / "labelsTr" / "subject_002.nii.gz")
    with pytest.raises(ValueError, match=r"partial' is not empty but has no datalist\.json") as info:
        ensure_default_dataset(str(folder), num_subjects=3, shape=SMALL)
    assert "\n" not in str(info.value)


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_save", broken)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(str(tmp_path / "ds"), num_subjects=3, shape=SMALL, num_validation=1, num_test=1)
    assert os.listdir(tmp_path) == []


def test_cli(tmp_path, capsys):
    main(["--output_dir", str(tmp_path / "cli"), "--num_subjects", "3", "--shape", "16", "16", "16", "--seed", "2",
          "--num_validation", "1", "--num_test", "1"])  # fmt: skip
    assert "datalist.json" in capsys.readouterr().out
    with open(tmp_path / "cli" / "datalist.json") as f:
        assert json.load(f)["seed"] == 2
