"""Datalists from folders and the input checks: every error is one ValueError line naming the file or value."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.data.datalist import check_volumes, list_volumes, load_split, resolve_datalist

SHAPE = (12, 10, 8)


def _save(path, data: np.ndarray) -> str:
    """Write ``data`` as NIfTI at ``path`` (folders created) and return the path as a string."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return str(path)


def _pair(folder, name: str = "case", shape=SHAPE, labels=(0, 1, 2)) -> dict:
    """A valid image/label pair under ``folder``."""
    rng = np.random.default_rng(0)
    image = _save(folder / f"{name}_img.nii.gz", rng.normal(size=shape).astype(np.float32))
    label = _save(folder / f"{name}_seg.nii.gz", rng.choice(np.array(labels, dtype=np.uint8), size=shape))
    return {"image": image, "label": label}


def _decathlon(root, cases: int, test_images: int = 0) -> None:
    """A Decathlon layout with ``cases`` labelled volumes and ``test_images`` unlabelled ones."""
    volume = (np.indices(SHAPE).sum(0) % 3).astype(np.uint8)
    for i in range(cases):
        _save(root / "imagesTr" / f"case_{i:02d}.nii.gz", volume.astype(np.float32))
        _save(root / "labelsTr" / f"case_{i:02d}.nii.gz", volume)
    for i in range(test_images):
        _save(root / "imagesTs" / f"new_{i}.nii.gz", volume.astype(np.float32))


def _raises(match: str, function, *args, **kwargs) -> str:
    """Assert ``function`` raises a one-line ValueError matching ``match``; return the message."""
    with pytest.raises(ValueError, match=match) as info:
        function(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# resolve_datalist ---------------------------------------------------------------------------------------------------


def test_missing_dataset_dir(tmp_path):
    missing = str(tmp_path / "nowhere")
    _raises(f"^dataset_dir '{missing}' does not exist$", resolve_datalist, missing)


def test_missing_explicit_datalist(tmp_path):
    _raises(
        "datalist '.*nope.json' does not exist", resolve_datalist, str(tmp_path), datalist=str(tmp_path / "nope.json")
    )


def test_empty_folder_and_unrelated_files(tmp_path):
    expected = (
        r"holds no volumes \(\*.nii, \*.nii.gz, \*.mgz, \*.mgh; expected datalist.json, or imagesTr/ and labelsTr/\)"
    )
    _raises(f"dataset_dir '{tmp_path}' {expected}", resolve_datalist, str(tmp_path))
    (tmp_path / "notes.txt").write_text("not a volume")
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 10)
    (tmp_path / "._hidden.nii.gz").write_bytes(b"macOS resource fork")
    _raises(expected, resolve_datalist, str(tmp_path))


def test_loose_volumes_without_labels(tmp_path):
    _save(tmp_path / "a.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    _raises("holds 1 volumes but no labels", resolve_datalist, str(tmp_path))
    assert list_volumes(str(tmp_path)) == [{"image": str(tmp_path / "a.nii.gz")}]


def test_existing_datalist_is_used(tmp_path):
    (tmp_path / "datalist.json").write_text(json.dumps({"training": []}))
    assert resolve_datalist(str(tmp_path)) == str(tmp_path / "datalist.json")
    explicit = tmp_path / "other.json"
    explicit.write_text("{}")
    assert resolve_datalist(str(tmp_path / "missing"), datalist=str(explicit)) == str(explicit)


def test_default_dir_generates(tmp_path):
    default = tmp_path / "data" / "synthetic"
    kwargs = {"num_subjects": 3, "shape": (16, 16, 16), "num_validation": 1, "num_test": 1}
    # The same folder spelled differently still counts as the default one.
    path = resolve_datalist(
        str(default) + "/", default_dir=str(tmp_path / "data" / ".." / "data" / "synthetic"), **kwargs
    )
    assert os.path.isfile(path)
    assert len(load_split(path, "training")) == 1 and len(load_split(path, "test")) == 1
    # Elsewhere the folder must exist: nothing is generated for a typo.
    _raises("does not exist", resolve_datalist, str(tmp_path / "typo"), default_dir=str(default), **kwargs)


def test_decathlon_layout_split(tmp_path):
    _decathlon(tmp_path, cases=10, test_images=2)
    (tmp_path / "imagesTr" / "._case_00.nii.gz").write_bytes(b"macOS resource fork")
    path = resolve_datalist(str(tmp_path))
    assert path == str(tmp_path / "datalist.json")
    with open(path) as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in ("training", "validation", "test", "inference")] == [7, 1, 2, 2]
    assert datalist["test"][-1] == {"image": "imagesTr/case_09.nii.gz", "label": "labelsTr/case_09.nii.gz"}
    assert datalist["validation"] == [{"image": "imagesTr/case_07.nii.gz", "label": "labelsTr/case_07.nii.gz"}]
    items = load_split(path, "training")
    assert items[0]["image"] == str(tmp_path / "imagesTr" / "case_00.nii.gz") and os.path.isfile(items[0]["label"])
    assert check_volumes(items, allowed_labels=[0, 1, 2]) is items

    # A datalist this module wrote follows the folder when cases are added.
    _decathlon(tmp_path, cases=20)
    assert resolve_datalist(str(tmp_path)) == path
    with open(path) as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [14, 2, 4]


def test_decathlon_small_counts_and_cache_dir(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _decathlon(data, cases=3)
    path = resolve_datalist(str(data), cache_dir=str(cache))
    assert path == str(cache / "datalist.json") and not (data / "datalist.json").exists()
    with open(path) as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [1, 1, 1]
    assert os.path.isabs(datalist["training"][0]["image"])  # outside the dataset, paths must be absolute
    assert os.path.isfile(load_split(path, "test")[0]["label"])


def test_read_only_dataset_goes_to_temp(tmp_path, monkeypatch):
    _decathlon(tmp_path, cases=3)
    monkeypatch.setattr(os, "access", lambda *args: False)
    path = resolve_datalist(str(tmp_path))
    assert not path.startswith(str(tmp_path)) and os.path.isfile(load_split(path, "validation")[0]["image"])
    os.remove(path)


def test_decathlon_errors(tmp_path):
    _decathlon(tmp_path, cases=2)
    _raises("has 2 labelled volumes; expected enough for at least 1 training", resolve_datalist, str(tmp_path))
    _save(tmp_path / "imagesTr" / "extra.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    _raises(r"images without labels \['extra'\]", resolve_datalist, str(tmp_path))


def test_nnunet_channel_suffix(tmp_path):
    for i in range(3):
        _save(tmp_path / "imagesTr" / f"c{i}_0000.nii.gz", np.zeros(SHAPE, dtype=np.float32))
        _save(tmp_path / "labelsTr" / f"c{i}.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    items = load_split(resolve_datalist(str(tmp_path)), "training")
    assert items[0]["image"].endswith("c0_0000.nii.gz") and items[0]["label"].endswith("c0.nii.gz")


# load_split and list_volumes ----------------------------------------------------------------------------------------


def test_load_split_errors(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"name": "x", "training": [{"image": "a.nii.gz", "label": "b.nii.gz"}], "test": []}))
    message = _raises("has no key 'validation'", load_split, str(path), "validation")
    assert str(path) in message and "['training', 'test']" in message
    _raises("key 'test' is empty", load_split, str(path), "test")
    assert load_split(str(path), "training") == [
        {"image": str(tmp_path / "a.nii.gz"), "label": str(tmp_path / "b.nii.gz")}
    ]
    path.write_text("{not json")
    _raises("cannot read datalist", load_split, str(path), "training")
    _raises("does not exist", load_split, str(tmp_path / "none.json"), "training")


def test_a_split_with_an_item_missing_a_key_is_refused_before_work(tmp_path):
    # a misspelled "lable" failed in the transforms after caching; a validation item without a label after an epoch
    path = tmp_path / "datalist.json"
    items = [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}, {"image": "b.nii.gz", "lable": "b_seg.nii.gz"}]
    path.write_text(json.dumps({"training": items, "validation": [{"label": "c_seg.nii.gz"}], "shape": [32, 32]}))
    assert len(load_split(str(path), "training")) == 2  # no keys asked: inference and label-map training
    _raises(
        f"^datalist '{path}' item 1 of 'training' has no 'label' \\(it has: image, lable\\); expected 'image', "
        "'label' in every item$",
        load_split,
        str(path),
        "training",
        keys=["image", "label"],
    )
    assert load_split(str(path), "validation", keys=["label"])[0]["label"] == str(tmp_path / "c_seg.nii.gz")
    _raises("item 0 of 'validation' has no 'image'", load_split, str(path), "validation", keys=["image", "label"])
    # a missing split names the splits (not other lists) and how to get one made
    message = _raises("has no key 'test' \\(split keys present: \\['training', 'validation'\\]\\)$", load_split,
                      str(path), "test")  # fmt: skip
    path.write_text(json.dumps({"training": items}))
    message = _raises("has no key 'validation'", load_split, str(path), "validation")
    assert "or give --dataset_dir a folder with imagesTr/ and labelsTr/" in message


def test_the_configs_ask_every_split_for_the_protocols_keys():
    configs = os.path.join(os.path.dirname(__file__), "..", "configs")
    for files, keys in (
        (["train.yaml"], ["image", "label"]),
        (["train.yaml", "evaluate.yaml"], ["image", "label"]),
        (["train.yaml", "data/brain27.yaml"], ["image", "label"]),
    ):
        parser = ConfigParser()
        parser.read_config([os.path.join(configs, f) for f in files])
        assert parser.get_parsed_content("datalist_keys") == keys
        for split in ("train_datalist", "val_datalist", "test_datalist"):
            if split in parser:
                assert parser[split]["items"]["keys"] == "@datalist_keys"
    parser.update({"source": "label_maps"})
    assert parser.get_parsed_content("datalist_keys") == ["label"]


def test_list_volumes(tmp_path):
    for name in ("b.nii.gz", "a.nii", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [v["image"] for v in list_volumes(str(tmp_path))] == [str(tmp_path / "a.nii"), str(tmp_path / "b.nii.gz")]
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"test": ["x.nii.gz"]}))
    assert list_volumes(str(datalist)) == [{"image": str(tmp_path / "x.nii.gz")}]
    datalist.write_text(json.dumps({"test": [], "inference": [{"image": "y.nii.gz"}]}))
    assert list_volumes(str(datalist)) == [{"image": str(tmp_path / "y.nii.gz")}]
    datalist.write_text(json.dumps({"training": []}))
    _raises("no 'test' or 'inference' volumes", list_volumes, str(datalist))
    _raises("does not exist", list_volumes, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    _raises("holds no volumes", list_volumes, str(tmp_path / "empty"))


def test_list_volumes_names_the_volumes_of_other_formats(tmp_path, caplog):
    # a scan.nrrd beside NIfTI scans was skipped without a word
    for name in ("scan.nrrd", "scan.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    with caplog.at_level("WARNING"):
        assert [v["image"] for v in list_volumes(str(tmp_path))] == [str(tmp_path / "scan.nii.gz")]
    assert "not segmented, as neither NIfTI nor MGH: scan.nrrd; convert them to NIfTI first" in caplog.text
    os.remove(tmp_path / "scan.nii.gz")
    _raises(
        r"holds no volumes \(\*.nii, \*.nii.gz, \*.mgz, \*.mgh\), only other formats \(scan.nrrd\); convert them",
        list_volumes,
        str(tmp_path),
    )
    _raises(
        r"scan.nrrd' is not a volume the bundle reads .*; convert it to NIfTI",
        list_volumes,
        str(tmp_path / "scan.nrrd"),
    )


def test_freesurfer_volumes_are_read_like_nifti(tmp_path):
    # FreeSurfer's .mgz / .mgh (T1.mgz, aseg.mgz) were refused with a conversion hint; nibabel reads them
    volume = (np.indices(SHAPE).sum(0) % 3).astype(np.uint8)
    affine = np.array([[-1.0, 0, 0, 5], [0, 0, 1, -3], [0, -1, 0, 2], [0, 0, 0, 1]])  # FreeSurfer's LIA
    for name in ("T1.mgz", "b.mgh", ".hidden.mgz"):
        nib.save(nib.MGHImage(volume.astype(np.float32), affine), str(tmp_path / name))
    _save(tmp_path / "c.nii.gz", volume.astype(np.float32))
    assert [os.path.basename(v["image"]) for v in list_volumes(str(tmp_path))] == ["T1.mgz", "b.mgh", "c.nii.gz"]
    assert list_volumes(str(tmp_path / "T1.mgz")) == [{"image": str(tmp_path / "T1.mgz")}]
    items = [{"image": str(tmp_path / "T1.mgz"), "label": str(tmp_path / "b.mgh")}]
    assert check_volumes(items, allowed_labels=[0, 1, 2]) is items
    # a Decathlon layout and a folder of label maps of FreeSurfer volumes
    for folder in ("imagesTr", "labelsTr"):
        os.makedirs(tmp_path / "data" / folder)
    for i in range(4):
        nib.save(nib.MGHImage(volume.astype(np.float32), affine), str(tmp_path / "data" / "imagesTr" / f"s{i}.mgz"))
        nib.save(nib.MGHImage(volume.astype(np.int32), affine), str(tmp_path / "data" / "labelsTr" / f"s{i}.mgz"))
    training = load_split(resolve_datalist(str(tmp_path / "data")), "training")
    assert [os.path.basename(item["label"]) for item in training] == ["s0.mgz", "s1.mgz"]
    assert check_volumes(training, allowed_labels=[0, 1, 2]) is training
    path = resolve_datalist(str(tmp_path / "data" / "labelsTr"), label_maps=True, cache_dir=str(tmp_path))
    assert os.path.basename(load_split(path, "test")[0]["label"]) == "s3.mgz"
    # MONAI's loader as the configs declare it reads them with their affine
    loader = ConfigParser({"t": {"_target_": "LoadImage", "image_only": True, "reader": "NibabelReader"}})
    image = loader.get_parsed_content("t")(str(tmp_path / "T1.mgz"))
    assert np.array_equal(image.numpy(), volume) and np.allclose(image.affine.numpy(), affine)
    # a damaged .mgz is refused like a damaged .nii.gz (its gzip CRC is checked)
    raw = bytearray(open(tmp_path / "T1.mgz", "rb").read())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = bytes(16)
    (tmp_path / "T1.mgz").write_bytes(raw)
    _raises(f"^cannot read '{tmp_path / 'T1.mgz'}': ", check_volumes, items)


def test_a_freesurfer_subjects_mri_folder_is_refused_naming_its_scan(tmp_path):
    # its aseg.mgz, wm.mgz, ... would each have been segmented as a scan
    for name in ("orig.mgz", "T1.mgz", "aseg.mgz", "wm.mgz", "aparc+aseg.mgz", "filled.mgz"):
        nib.save(nib.MGHImage(np.ones(SHAPE, np.float32), np.eye(4)), str(tmp_path / name))
    _raises(
        rf"^folder '{tmp_path}' is a FreeSurfer subject's mri/ folder: aparc\+aseg.mgz, aseg.mgz, filled.mgz, \.\.\. "
        rf"are label volumes, not scans, and would be segmented as scans; give the scan itself \(--dataset_dir "
        rf"{tmp_path}/orig.mgz\)$",
        list_volumes,
        str(tmp_path),
    )
    assert list_volumes(str(tmp_path / "orig.mgz")) == [{"image": str(tmp_path / "orig.mgz")}]


def test_the_configs_read_volumes_with_nibabel():
    # MONAI picks a reader by suffix when none is named, and none claims .mgz
    configs = [("train.yaml", "load_transforms"), ("inference.yaml", "load_transforms")]
    configs += [("data/brain27.yaml", "read_transforms"), ("data/abdomen_ct.yaml", "load_transforms")]
    for name, key in configs:
        with open(os.path.join(os.path.dirname(__file__), "..", "configs", name)) as f:
            load = ConfigParser.load_config_file(f.name)[key][0]
        assert load["_target_"] == "LoadImaged" and load["reader"] == "NibabelReader", name


def test_list_volumes_refuses_what_would_overwrite_or_is_no_image(tmp_path):
    # two scans of one name (a BIDS layout) would write one <name>_seg.nii.gz
    datalist = tmp_path / "bids.json"
    datalist.write_text(json.dumps({"test": ["sub-01/anat/T1w.nii.gz", "sub-02/anat/T1w.nii.gz"]}))
    message = _raises("would both give the output of 'T1w'", list_volumes, str(datalist))
    assert str(tmp_path / "sub-01" / "anat" / "T1w.nii.gz") in message
    # a label-map datalist (label keys only) has nothing to segment
    datalist.write_text(json.dumps({"test": [{"label": "x.nii.gz"}]}))
    _raises("item 0 of 'test' has no 'image'", list_volumes, str(datalist))
    # labels written into the folder of the scans would be segmented as scans by the next run
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.nii.gz").write_bytes(b"")
    _raises("is the folder of the scans", list_volumes, str(tmp_path / "scans"), output_dir=str(tmp_path / "scans"))
    assert len(list_volumes(str(tmp_path / "scans"), output_dir=str(tmp_path / "out"))) == 1
    # evaluation: one prediction file and one Dice row per name
    items = [{"label": str(tmp_path / "a" / "map.nii.gz")}, {"label": str(tmp_path / "b" / "map.nii.gz")}]
    _raises("would both give the evaluation's prediction and Dice row of 'map'", check_volumes, items,
            unique_names=["image", "label"])  # fmt: skip


# check_volumes ------------------------------------------------------------------------------------------------------


def test_check_valid_and_returns_items(tmp_path):
    items = [_pair(tmp_path, "a"), _pair(tmp_path, "b"), {"image": _pair(tmp_path, "c")["image"]}]
    assert check_volumes(items, allowed_labels=[0, 1, 2]) is items
    assert check_volumes(items, allowed_labels=3) is items
    assert check_volumes(items) is items


def test_check_missing_file(tmp_path):
    item = _pair(tmp_path)
    os.remove(item["label"])
    _raises(f"^label '{item['label']}' does not exist$", check_volumes, [item])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_check_truncated(tmp_path, suffix):
    data = np.random.default_rng(1).normal(size=(24, 24, 24)).astype(np.float32)
    path = _save(tmp_path / f"img{suffix}", data)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    message = _raises(f"^cannot read '{path}': ", check_volumes, [{"image": path}])
    assert len(message) > len(f"cannot read '{path}': ")


def test_check_corrupted_gzip(tmp_path):
    # nibabel alone would return the damaged intensities: the gzip CRC must be checked.
    path = _save(tmp_path / "img.nii.gz", np.random.default_rng(1).normal(size=(24, 24, 24)).astype(np.float32))
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    open(path, "wb").write(raw)
    _raises(f"^cannot read '{path}': CRC check failed$", check_volumes, [{"image": path}])


def test_check_not_nifti(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_text("this is not a volume")
    _raises(f"cannot read '{path}'", check_volumes, [{"image": str(path)}])


def test_check_shape_mismatch(tmp_path):
    image = _pair(tmp_path, "a")["image"]
    label = _pair(tmp_path, "b", shape=(12, 10, 9))["label"]
    message = _raises("expected equal shapes", check_volumes, [{"image": image, "label": label}])
    assert image in message and label in message and "(12, 10, 8)" in message and "(12, 10, 9)" in message


def test_check_label_values_out_of_range(tmp_path):
    item = _pair(tmp_path, labels=(0, 3, 29, 30))
    message = _raises(r"has values \[29, 30\] outside the declared labels 0\.\.18$", check_volumes, [item], range(19))
    assert item["label"] in message
    _raises(r"outside the declared labels \[0, 3, 7\]", check_volumes, [_pair(tmp_path, "b", labels=(0, 5))], [0, 3, 7])


def test_check_non_integer_label(tmp_path):
    image = _pair(tmp_path)["image"]
    label = _save(tmp_path / "float_seg.nii.gz", np.full(SHAPE, 0.5, dtype=np.float32))
    _raises("non-integer values", check_volumes, [{"image": image, "label": label}])
    whole = _save(tmp_path / "whole_seg.nii.gz", np.ones(SHAPE, dtype=np.float32))
    check_volumes([{"image": image, "label": whole}], allowed_labels=2)  # integer-valued floats are labels


def test_check_nan_image(tmp_path):
    data = np.zeros(SHAPE, dtype=np.float32)
    data[1, 2, 3], data[2, 2, 2] = np.nan, np.inf
    path = _save(tmp_path / "nan.nii.gz", data)
    _raises(
        f"^image '{path}' has 2 NaN or infinite values; expected finite intensities$", check_volumes, [{"image": path}]
    )


def test_check_dimensions(tmp_path):
    four = _save(tmp_path / "four.nii.gz", np.zeros((*SHAPE, 3), dtype=np.float32))
    _raises(r"has shape \(12, 10, 8, 3\); expected a 3D volume", check_volumes, [{"image": four}])
    flat = _save(tmp_path / "flat.nii.gz", np.zeros(SHAPE[:2], dtype=np.float32))
    _raises("expected a 3D volume", check_volumes, [{"image": flat}])
    single = _save(tmp_path / "single.nii.gz", np.random.default_rng(0).random((*SHAPE, 1)).astype(np.float32))
    label = _pair(tmp_path)["label"]
    check_volumes([{"image": single, "label": label}], allowed_labels=3)  # a trailing channel of 1 is a 3D volume
    five = _save(tmp_path / "five.nii.gz", np.random.default_rng(0).random((*SHAPE, 1, 1)).astype(np.float32))
    _raises(r"has shape \(12, 10, 8, 1, 1\); expected a 3D volume", check_volumes, [{"image": five}])


def test_check_bad_items(tmp_path):
    _raises("datalist item 0 .* expected a dict with an 'image' path", check_volumes, [{"mask": "x"}])
    _raises("label 'x' does not exist", check_volumes, [{"label": "x"}])  # label maps alone are accepted
    _raises("is not a file path", check_volumes, [{"image": ["a.nii.gz", "b.nii.gz"]}])
    # The first failing item in datalist order is reported, whatever thread finished first.
    good = _pair(tmp_path)
    _raises("'missing_1.nii.gz' does not exist", check_volumes, [good, {"image": "missing_1.nii.gz"}, {"image": "m2"}])


def test_image_and_label_with_different_affines_are_refused(tmp_path):
    item = _pair(tmp_path)
    shifted = nib.load(item["label"])
    affine = shifted.affine.copy()
    affine[0, 3] += 2.0
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), affine), item["label"])
    _raises(r"have different affines \(largest difference 2 mm\)", check_volumes, [item])


def test_label_map_folder_split_and_errors(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(7):
        _save(str(maps / f"map_{i:02d}.nii.gz"), ((np.indices(SHAPE).sum(0) + i) % 3).astype(np.uint8))
    path = resolve_datalist(str(maps), label_maps=True, num_validation=1, num_test=3, cache_dir=str(tmp_path))
    splits = {k: load_split(path, k) for k in ("training", "validation", "test")}
    assert [len(v) for v in splits.values()] == [3, 1, 3]
    assert all(set(item) == {"label"} for v in splits.values() for item in v)
    assert os.path.basename(splits["test"][-1]["label"]) == "map_06.nii.gz"
    assert check_volumes(splits["training"], allowed_labels=[0, 1, 2]) == splits["training"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises("label map folder '.*' holds no label maps", resolve_datalist, str(empty), label_maps=True)
    _raises("has 7 labelled volumes; expected enough", resolve_datalist, str(maps), label_maps=True, num_test=7)


def test_check_constant_image_and_background_only_label(tmp_path):
    pair = _pair(tmp_path)
    zeros = _save(tmp_path / "zeros.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    _raises(
        rf"^image '{zeros}' is constant \(every voxel is 0.0\); expected an image$", check_volumes, [{"image": zeros}]
    )
    empty = _save(tmp_path / "empty_seg.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    _raises(
        f"^label '{empty}' holds only background \\(0\\); expected labelled structures$",
        check_volumes,
        [{"image": pair["image"], "label": empty}],
    )


def test_check_slice_size_in_the_slicing_orientation(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "thin.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((20, 8, 20)).astype(np.float32), np.eye(4)), path)
    assert check_volumes([{"image": path}], axcodes="RAS", slice_axis=1, min_size=16)  # 20x20 coronal slices
    _raises(
        f"^'{path}' gives slices of 20x8 voxels; expected at least 16 each way",
        check_volumes,
        [{"image": path}],
        axcodes="RAS",
        slice_axis=2,
        min_size=16,
    )
    # FreeSurfer's LIA: voxel axis 1 runs inferior, so it is RAS axis 2; slicing along RAS axis 1 cuts it in-plane
    lia = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float)
    nib.save(nib.Nifti1Image(rng.random((20, 8, 20)).astype(np.float32), lia), path)
    _raises("gives slices of 20x8 voxels", check_volumes, [{"image": path}], axcodes="RAS", slice_axis=1, min_size=16)
    assert check_volumes([{"image": path}], axcodes="RAS", slice_axis=2, min_size=16)


def test_the_views_slices_are_checked_too(tmp_path):
    # a single coronal slice: fine for the coronal model, but an axial view would cut it into 20x1 slices
    path = str(tmp_path / "coronal.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 1, 20)).astype(np.float32), np.eye(4)), path)
    assert check_volumes([{"image": path}], axcodes="RAS", slice_axis=1, min_size=16)
    _raises(
        f"^'{path}' gives slices of 20x1 voxels along the view axis 2 \\(--views\\); expected at least 16 each way",
        check_volumes,
        [{"image": path}],
        axcodes="RAS",
        slice_axis=1,
        min_size=16,
        view_axes=[2],
    )


def test_check_names_every_bad_volume_and_equal_slices(tmp_path):
    good, other = _pair(tmp_path, "good"), _pair(tmp_path, "other", shape=(12, 11, 8))
    missing = {"image": str(tmp_path / "missing.nii.gz")}
    zeros = {"image": _save(tmp_path / "zeros.nii.gz", np.zeros(SHAPE, dtype=np.float32))}
    message = _raises("^2 of 3 volumes cannot be used: ", check_volumes, [missing, good, zeros])
    assert "missing.nii.gz' does not exist" in message and "zeros.nii.gz' is constant" in message
    assert check_volumes([good, other]) == [good, other]
    _raises(
        r"^volumes give slices of different sizes \('.*good_img.nii.gz' 12x10, '.*other_img.nii.gz' 12x11\); "
        r"expected one size, or --slice_size \[H, W\]",
        check_volumes,
        [good, other],
        axcodes="RAS",
        slice_axis=2,
        equal_slices=True,
    )
    usable = check_volumes([missing, good, zeros], skip_bad=True)
    assert list(usable) == [good] and len(usable.skipped) == 2
    _raises("^2 of 3 volumes were skipped \\(the others are done\\): ", usable.refuse_skipped)
    assert check_volumes([good], skip_bad=True).refuse_skipped() is True
    _raises("^2 of 2 volumes cannot be used", check_volumes, [missing, zeros], skip_bad=True)  # nothing left to do


def test_an_epoch_is_one_loader_pass_of_whole_batches_with_every_volume_equally_often():
    # one loader iterator serves a whole epoch (workers never wait for a new pass) and a batch may span two passes:
    # with 16 training maps, --batch_size 32 trained the shipped brain model on batches of 16 before (session 15)
    parser = ConfigParser()
    parser.read_config(os.path.join(os.path.dirname(__file__), "..", "configs", "train.yaml"))
    parser.update({"train#dataset": list(range(16)), "batch_size": 32, "iterations_per_epoch": 3})
    batches = list(parser.get_parsed_content("train#dataloader"))
    assert [len(b) for b in batches] == [32] * 3 and parser.get_parsed_content("train#epoch_length") == 3
    assert np.bincount(torch.cat(batches).numpy()).tolist() == [6] * 16  # whole shuffled passes over the volumes
    parser.update({"batch_size": 4, "iterations_per_epoch": None})  # slices_per_volume 16 of each volume per epoch
    loader = parser.get_parsed_content("train#dataloader", lazy=False)
    assert len(loader) == 64 and np.bincount(torch.cat(list(loader)).numpy()).tolist() == [16] * 16


def test_slices_are_judged_after_the_protocols_resampling(tmp_path):
    """A 1 mm volume 24 voxels deep gives 12 at 2 mm (refused before work), a 6 mm one 14 deep gives 40 (accepted)."""
    rng = np.random.default_rng(0)
    thin = str(tmp_path / "thin.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((64, 64, 24)).astype(np.float32), np.eye(4)), thin)
    check_volumes([{"image": thin}], axcodes="RAS", slice_axis=1, min_size=16)  # 64 x 24 at 1 mm
    _raises("gives slices of 32x12 voxels", check_volumes, [{"image": thin}], axcodes="RAS", slice_axis=1, min_size=16,
            spacing=[2.0, 2.0, 2.0])  # fmt: skip
    coarse = str(tmp_path / "coarse.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((64, 64, 14)).astype(np.float32), np.diag([1.0, 1.0, 6.0, 1.0])), coarse)
    _raises(
        "gives slices of 64x14 voxels", check_volumes, [{"image": coarse}], axcodes="RAS", slice_axis=1, min_size=16
    )
    check_volumes([{"image": coarse}], axcodes="RAS", slice_axis=1, min_size=16, spacing=[2.0, 2.0, 2.0])
    check_volumes([{"image": coarse}], axcodes="RAS", slice_axis=2, min_size=16, spacing=[2.0, 2.0, -1])  # CT-like
