# Copyright (c) the scSE bundle contributors.
# Licensed under the Apache License, Version 2.0.
"""
Datalists from folders, and checks of the input volumes before any work starts.

A run should fail in its first seconds, with one line that names the file and what was expected, rather than hours
later inside a data loader worker. The configs therefore resolve the data to a Decathlon-style datalist JSON
(:py:func:`resolve_datalist`), load one split of it (:py:func:`load_split`) and pass the items through
:py:func:`check_volumes` before the trainer or evaluator is built. Every error raised here is an ``InputError`` (a
``ValueError``) whose message is a single line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
from monai.data import load_decathlon_datalist
from nibabel.filebasedimages import ImageFileError

from ..errors import InputError
from ..outputs import atomic_write
from .synthetic import ensure_default_dataset

__all__ = [
    "VOLUME_SUFFIXES",
    "UsableVolumes",
    "check_volumes",
    "is_volume",
    "list_volumes",
    "load_split",
    "resolve_datalist",
    "volume_stem",
]

# the volume files the bundle reads (NIfTI, and FreeSurfer's MGH: nibabel reads both, through MONAI's NibabelReader,
# which the configs' LoadImaged name since MONAI picks readers by suffix and none claims .mgz)
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mgz", ".mgh")
VOLUME_GLOBS = "*.nii, *.nii.gz, *.mgz, *.mgh"
# volumes of other formats that users keep beside their scans: named, with how to convert them, not ignored
_OTHER_VOLUME_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".img", ".hdr")
_CONVERT_HINT = "convert them to NIfTI first (SimpleITK, nibabel, dcm2niix for DICOM)"
# label volumes FreeSurfer writes into a subject's mri/ folder beside its scans: such a folder is not a folder of scans
_FREESURFER_LABEL_VOLUMES = frozenset(
    f"{name}.mgz"
    for name in (
        *("aseg", "aseg.auto", "aseg.auto_noCCseg", "aseg.presurf", "aparc+aseg", "aparc.a2009s+aseg"),
        *("aparc.DKTatlas+aseg", "wmparc", "ribbon", "filled", "wm", "wm.seg", "wm.asegedit"),
    )
)
# Marks datalists this module wrote, so they are rebuilt when the folder changes instead of being trusted as the
# user's own.
_GENERATED_BY = "scripts.data.datalist"
logger = logging.getLogger(__name__)
# Exceptions nibabel, gzip and zlib raise on truncated or corrupt files.
_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ImageFileError, ValueError, struct.error)


def is_volume(name: str) -> bool:
    """Whether a file name is a volume the bundle reads (NIfTI or MGH; hidden files, such as macOS ``._x.nii.gz``
    forks, are not)."""
    return not name.startswith(".") and name.endswith(VOLUME_SUFFIXES)


def volume_stem(name: str) -> str:
    """A file name (or path) without its folder and volume suffix (``T1.mgz`` -> ``T1``; other names unchanged).
    Outputs and pairings use it: ``<stem>_seg.nii.gz``, a reference ``<stem>.nii.gz`` or ``<stem>.mgz``."""
    name = os.path.basename(name)
    return next((name[: -len(s)] for s in VOLUME_SUFFIXES if name.endswith(s)), name)


def _volume_files(folder: str) -> list[str]:
    """Sorted volume file names directly in ``folder`` (none if it is not a folder)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if is_volume(n) and os.path.isfile(os.path.join(folder, n)))


def _one_line(error: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def _read_json(path: str) -> dict:
    """Read a datalist JSON object, with one-line errors."""
    if not os.path.isfile(path):
        raise InputError(f"datalist '{path}' does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read datalist '{path}': {_one_line(e)}") from e
    if not isinstance(data, dict):
        raise InputError(f"datalist '{path}' holds a {type(data).__name__}; expected a JSON object with split keys")
    return data


def _write_json(data: dict, path: str) -> None:
    """Write JSON atomically, so concurrent ranks never read half a file."""

    def dump(staging: str) -> None:
        with open(staging, "w") as f:
            json.dump(data, f, indent=2)

    atomic_write(path, dump)


def _split_counts(
    num_cases: int, dataset_dir: str, num_validation: int | None, num_test: int | None
) -> tuple[int, int, int]:
    """(training, validation, test) counts: the given ones, else the last 20% (at least 1) test and 10% validation."""
    num_test = max(1, num_cases // 5) if num_test is None else num_test
    num_validation = max(1, num_cases // 10) if num_validation is None else num_validation
    num_training = num_cases - num_test - num_validation
    if num_training < 1 or num_validation < 1 or num_test < 0:
        raise InputError(
            f"dataset_dir '{dataset_dir}' has {num_cases} labelled volumes; expected enough for at least 1 training "
            f"and 1 validation volume besides {num_test} test volumes"
        )
    return num_training, num_validation, num_test


def _label_map_split(
    dataset_dir: str, relative_to: str | None, num_validation: int | None, num_test: int | None
) -> dict:
    """Deterministic split of a folder of label maps (no images: they are synthesised), sorted by name.

    Args:
        dataset_dir: folder of label maps (NIfTI or MGH, e.g. FreeSurfer's aseg.mgz).
        relative_to: folder the paths are written relative to; ``None`` writes absolute paths.
        num_validation: validation maps (taken before the test maps); ``None``: 10% (at least 1).
        num_test: test maps (the last by name); ``None``: 20% (at least 1).

    Returns:
        the datalist as a dict, items ``{"label": path}``.
    """
    names = _volume_files(dataset_dir)
    if not names:
        raise InputError(f"label map folder '{dataset_dir}' holds no label maps ({VOLUME_GLOBS})")
    num_training, num_validation, num_test = _split_counts(len(names), dataset_dir, num_validation, num_test)
    items = [
        {"label": os.path.relpath(full, relative_to) if relative_to else os.path.abspath(full)}
        for full in (os.path.join(dataset_dir, n) for n in names)
    ]
    return {
        "name": os.path.basename(os.path.normpath(dataset_dir)),
        "description": f"label maps by name: last {num_test} test, {num_validation} before them validation",
        "generated_by": _GENERATED_BY,
        "dataset_dir": os.path.abspath(dataset_dir),
        "training": items[:num_training],
        "validation": items[num_training : num_training + num_validation],
        "test": items[num_training + num_validation :],
    }


def _decathlon_split(
    dataset_dir: str, relative_to: str | None, num_validation: int | None = None, num_test: int | None = None
) -> dict:
    """Deterministic split of a Decathlon layout (``imagesTr/``, ``labelsTr/``, optional ``imagesTs/``).

    Sorted by name, the last 20% (at least 1) are the test split, the 10% before them (at least 1) validation, the
    rest training; unlabelled ``imagesTs/`` volumes are listed under ``inference``.

    Args:
        dataset_dir: the dataset folder.
        relative_to: folder the paths are written relative to; ``None`` writes absolute paths.

    Returns:
        the datalist as a dict.
    """
    images_dir, labels_dir = os.path.join(dataset_dir, "imagesTr"), os.path.join(dataset_dir, "labelsTr")
    # nnU-Net names images case_0000.nii.gz (channel 0) and labels case.nii.gz; accept both conventions.
    images = {}
    for name in _volume_files(images_dir):
        stem = volume_stem(name)
        images[stem[:-5] if stem.endswith("_0000") else stem] = name
    labels = {volume_stem(name): name for name in _volume_files(labels_dir)}
    if not images and not labels:
        raise InputError(
            f"dataset_dir '{dataset_dir}' holds no volumes ({VOLUME_GLOBS}; expected datalist.json, or imagesTr/ and "
            "labelsTr/)"
        )
    unlabelled, orphans = sorted(set(images) - set(labels)), sorted(set(labels) - set(images))
    if unlabelled or orphans:
        raise InputError(
            f"dataset_dir '{dataset_dir}' has images without labels {unlabelled[:5]} and labels without images "
            f"{orphans[:5]}; expected the same file names in imagesTr/ and labelsTr/"
        )
    cases = sorted(images)
    num_training, num_validation, num_test = _split_counts(len(cases), dataset_dir, num_validation, num_test)

    def path(*parts: str) -> str:
        full = os.path.join(dataset_dir, *parts)
        return os.path.relpath(full, relative_to) if relative_to else os.path.abspath(full)

    items = [{"image": path("imagesTr", images[c]), "label": path("labelsTr", labels[c])} for c in cases]
    datalist = {
        "name": os.path.basename(os.path.normpath(dataset_dir)),
        "description": "split of imagesTr/ and labelsTr/ by name: last 20% test, 10% before them validation",
        "generated_by": _GENERATED_BY,
        "dataset_dir": os.path.abspath(dataset_dir),
        "training": items[:num_training],
        "validation": items[num_training : num_training + num_validation],
        "test": items[num_training + num_validation :],
    }
    inference = _volume_files(os.path.join(dataset_dir, "imagesTs"))
    if inference:
        datalist["inference"] = [{"image": path("imagesTs", n)} for n in inference]
    return datalist


def resolve_datalist(
    dataset_dir: str,
    default_dir: str | None = None,
    datalist: str | None = None,
    cache_dir: str | None = None,
    label_maps: bool = False,
    num_validation: int | None = None,
    num_test: int | None = None,
    **generate_kwargs,
) -> str:
    """Path of a Decathlon-style datalist JSON for the data a run is given.

    In order: an explicit ``datalist`` file; the generated default dataset when ``dataset_dir`` is ``default_dir``
    (generated on first use); ``dataset_dir/datalist.json``; a split of a Decathlon layout ``dataset_dir/imagesTr/`` +
    ``labelsTr/`` (see :py:func:`_decathlon_split`), written to ``cache_dir/datalist.json``, else to
    ``dataset_dir/datalist.json`` when the folder is writable, else to a file in the temporary folder.

    Args:
        dataset_dir: folder of the data.
        default_dir: folder of the bundle's generated default dataset; ``None`` never generates.
        datalist: an explicit datalist JSON; overrides the folder.
        cache_dir: where to write a datalist built from a Decathlon layout or a label map folder.
        label_maps: ``dataset_dir`` is a folder of label maps without images (they are synthesised); its split has
            items ``{"label": path}``.
        num_validation: validation volumes of a split built here or of the generated dataset (default: 10% of a
            folder, at least 1; the generator's own default).
        num_test: test volumes of a split built here or of the generated dataset (default: 20% of a folder, at
            least 1; the generator's own default).
        generate_kwargs: arguments of :py:func:`scripts.data.synthetic.generate_dataset` for the default dataset.

    Returns:
        path of the datalist JSON.

    Raises:
        ValueError: when the datalist or folder is missing, or the folder holds no usable volumes.
    """
    if datalist:
        if not os.path.isfile(datalist):
            raise InputError(f"datalist '{datalist}' does not exist")
        return datalist
    if default_dir and os.path.realpath(dataset_dir) == os.path.realpath(default_dir):
        counts = {"num_validation": num_validation, "num_test": num_test}
        return ensure_default_dataset(
            dataset_dir, **{k: v for k, v in counts.items() if v is not None}, **generate_kwargs
        )
    if os.path.isfile(dataset_dir) and dataset_dir.endswith(".json"):
        return dataset_dir
    if not os.path.isdir(dataset_dir):
        raise InputError(f"dataset_dir '{dataset_dir}' does not exist")

    own = os.path.join(dataset_dir, "datalist.json")
    if os.path.isfile(own) and _read_json(own).get("generated_by") != _GENERATED_BY:
        return own
    has_layout = os.path.isdir(os.path.join(dataset_dir, "imagesTr")) or os.path.isdir(
        os.path.join(dataset_dir, "labelsTr")
    )
    if not has_layout and not label_maps:
        loose = _volume_files(dataset_dir)
        if loose:
            raise InputError(
                f"dataset_dir '{dataset_dir}' holds {len(loose)} volumes but no labels (expected datalist.json, "
                "or imagesTr/ and labelsTr/)"
            )
        raise InputError(
            f"dataset_dir '{dataset_dir}' holds no volumes ({VOLUME_GLOBS}; expected datalist.json, or imagesTr/ and "
            "labelsTr/)"
        )

    if cache_dir:
        target = os.path.join(cache_dir, "datalist.json")
    elif os.access(dataset_dir, os.W_OK):
        target = own
    else:
        digest = hashlib.sha1(os.path.abspath(dataset_dir).encode()).hexdigest()[:12]
        target = os.path.join(tempfile.gettempdir(), f"datalist_{digest}.json")
    # Relative paths keep a datalist inside the dataset portable; anywhere else they must be absolute.
    inside = os.path.realpath(os.path.dirname(target)) == os.path.realpath(dataset_dir)
    relative_to = dataset_dir if inside else None
    if label_maps:
        split = _label_map_split(dataset_dir, relative_to, num_validation, num_test)
    else:
        split = _decathlon_split(dataset_dir, relative_to, num_validation, num_test)
    # Rewrite only on change: concurrent ranks then agree and the file's time records the last real change.
    if not os.path.isfile(target) or _read_json(target) != split:
        _write_json(split, target)
    return target


def load_split(datalist_path: str, split: str, keys: Sequence[str] = ()) -> list[dict]:
    """One split of a Decathlon-style datalist, with paths resolved against the datalist's folder (relative paths
    are relative to the datalist file, not to the working folder).

    Args:
        datalist_path: the datalist JSON.
        split: key of the split, e.g. ``"training"``, ``"validation"``, ``"test"``.
        keys: the keys every item must hold (``["image", "label"]`` for training on images; a misspelled or missing
            key is refused here rather than failing in the transforms, after the volumes are cached).

    Returns:
        list of dicts such as ``{"image": path, "label": path}``.

    Raises:
        InputError: when the file is missing or unreadable, the split is missing or empty, or an item lacks a key.
    """
    data = _read_json(datalist_path)
    if split not in data:
        present = [k for k, v in data.items() if isinstance(v, list) and all(isinstance(i, (dict, str)) for i in v)]
        hint = (
            "; a datalist for training lists 'training' and 'validation' items (or give --dataset_dir a folder with "
            "imagesTr/ and labelsTr/, split automatically)"
            if split in ("training", "validation")
            else ""
        )
        raise InputError(f"datalist '{datalist_path}' has no key '{split}' (split keys present: {present}){hint}")
    if not data[split]:
        raise InputError(f"datalist '{datalist_path}' key '{split}' is empty; expected at least one item")
    try:
        items = load_decathlon_datalist(
            datalist_path, is_segmentation=True, data_list_key=split, base_dir=os.path.dirname(datalist_path)
        )
    except TypeError as e:
        raise InputError(
            f"datalist '{datalist_path}' key '{split}' must list {{'image': ..., 'label': ...}} objects: {_one_line(e)}"
        ) from e
    for index, item in enumerate(items):
        missing = [k for k in keys if not isinstance(item, dict) or k not in item]
        if missing:
            has = ", ".join(map(str, item)) if isinstance(item, dict) else repr(item)
            raise InputError(
                f"datalist '{datalist_path}' item {index} of '{split}' has no {', '.join(map(repr, missing))} (it has: "
                f"{has}); expected {', '.join(map(repr, keys))} in every item"
            )
    return items


def refuse_name_clashes(items: Sequence[dict], key: str = "image", what: str = "output") -> None:
    """Refuse items whose ``key`` files share a name: their outputs (``<name>_seg.nii.gz`` in one folder, a row of
    the Dice table) would overwrite each other.

    Raises:
        InputError: naming the first two files of one name.
    """
    seen: dict[str, object] = {}
    for item in items:
        path = item.get(key) if isinstance(item, dict) else None
        if not isinstance(path, (str, os.PathLike)):
            continue
        name = volume_stem(str(path))
        if name in seen:
            raise InputError(
                f"'{seen[name]}' and '{path}' would both give the {what} of '{name}'; expected volumes of distinct "
                "file names (rename them, or run each folder on its own)"
            )
        seen[name] = path


def list_volumes(folder_or_datalist: str, output_dir: str | None = None) -> list[dict]:
    """Volumes to run inference on.

    Args:
        folder_or_datalist: a folder (every volume in it, sorted: ``VOLUME_SUFFIXES``; not a FreeSurfer subject's
            ``mri/`` folder), a datalist JSON (its ``"test"``
            images, else its ``"inference"`` images) or a single volume file (NIfTI or MGH).
        output_dir: where the labels go; refused when it is the input folder (the next run would segment them).

    Returns:
        list of ``{"image": path}``.

    Raises:
        InputError: when the path is missing or yields no volume, an item has no image, two volumes share a file name
            (their outputs would overwrite each other) or ``output_dir`` is the input folder.
    """
    path = folder_or_datalist
    items = _list_volumes(path)
    refuse_name_clashes(items)
    if output_dir is not None and os.path.isdir(path) and os.path.realpath(output_dir) == os.path.realpath(path):
        raise InputError(
            f"--output_dir '{output_dir}' is the folder of the scans; expected another folder (a later run would "
            "segment the labels written there as scans)"
        )
    return items


def _other_volumes(names: Sequence[str]) -> list[str]:
    """The names among ``names`` of volume files in formats the bundle does not read (``.nrrd``, DICOM, ...)."""
    return sorted(n for n in names if not n.startswith(".") and n.lower().endswith(_OTHER_VOLUME_SUFFIXES))


def _list_volumes(path: str) -> list[dict]:
    if os.path.isdir(path):
        labels = sorted(_FREESURFER_LABEL_VOLUMES.intersection(os.listdir(path)))
        if labels:
            scan = next((n for n in ("orig.mgz", "T1.mgz", "rawavg.mgz") if os.path.isfile(os.path.join(path, n))), "")
            raise InputError(
                f"folder '{path}' is a FreeSurfer subject's mri/ folder: {', '.join(labels[:3])}"
                f"{', ...' if len(labels) > 3 else ''} are label volumes, not scans, and would be segmented as scans; "
                f"give the scan itself (--dataset_dir {os.path.join(path, scan or 'orig.mgz')})"
            )
        items = [{"image": os.path.abspath(os.path.join(path, n))} for n in _volume_files(path)]
        others = _other_volumes(os.listdir(path))
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        if not items:
            hint = f", only other formats ({shown}); {_CONVERT_HINT}" if others else ""
            raise InputError(f"folder '{path}' holds no volumes ({VOLUME_GLOBS}){hint}")
        if others:
            logger.warning(f"folder '{path}': not segmented, as neither NIfTI nor MGH: {shown}; {_CONVERT_HINT}")
        return items
    if os.path.isfile(path) and path.endswith(".json"):
        data = _read_json(path)
        key = next((k for k in ("test", "inference") if data.get(k)), None)
        if key is None:
            raise InputError(f"datalist '{path}' has no 'test' or 'inference' volumes (keys present: {list(data)})")
        items = load_split(path, key)
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "image" not in item:
                raise InputError(
                    f"datalist '{path}' item {index} of '{key}' has no 'image' ({item!r}); expected images to segment "
                    "(a label-map datalist is for training and evaluation)"
                )
        return [{"image": item["image"]} for item in items]
    if os.path.isfile(path) and is_volume(os.path.basename(path)):
        return [{"image": os.path.abspath(path)}]
    if not os.path.exists(path):
        raise InputError(f"'{path}' does not exist; expected a folder of volumes ({VOLUME_GLOBS}) or a datalist JSON")
    if _other_volumes([os.path.basename(path)]):
        raise InputError(
            f"'{path}' is not a volume the bundle reads ({VOLUME_GLOBS}); {_CONVERT_HINT.replace('them', 'it')}"
        )
    raise InputError(f"'{path}' is neither a folder, a datalist JSON nor a volume ({VOLUME_GLOBS})")


def _load(path: str) -> nib.spatialimages.SpatialImage:
    """Load an image; a ``.nii.gz`` or ``.mgz`` (gzip-compressed MGH) is decompressed whole, so that a damaged stream
    fails its CRC check.

    nibabel reads only the bytes the header announces and never reaches the gzip trailer, so corrupted data would
    otherwise pass as valid intensities.
    """
    if not path.endswith((".nii.gz", ".mgz")):
        return nib.load(path)
    with open(path, "rb") as f:
        raw = gzip.decompress(f.read())
    if path.endswith(".mgz"):
        return nib.MGHImage.from_bytes(raw)
    nifti2 = len(raw) >= 4 and 540 in (struct.unpack("<i", raw[:4])[0], struct.unpack(">i", raw[:4])[0])  # sizeof_hdr
    return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)


def _read_volume(path: object, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a whole volume (which also proves the file is not truncated) as a 3D array.

    Args:
        path: the file.
        role: ``"image"`` or ``"label"``, for messages.

    Returns:
        the 3D data array and the 4x4 affine.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{role} {path!r} is not a file path; expected one volume file per item")
    if not os.path.isfile(path):
        raise InputError(f"{role} '{path}' does not exist")
    try:
        volume = _load(str(path))
        data = np.asanyarray(volume.dataobj)
    except _READ_ERRORS as e:
        raise InputError(f"cannot read '{path}': {_one_line(e)}") from e
    if data.ndim == 4 and data.shape[-1] == 1:  # what MONAI's loader also takes as 3D
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(
            f"{role} '{path}' has shape {tuple(data.shape)}; expected a 3D volume (4D only with a last dimension of 1)"
        )
    return data, np.asarray(volume.affine)


def _label_values(data: np.ndarray, path: object) -> list[int]:
    """Distinct values of a label volume, which must be integers."""
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all() or not np.array_equal(data, np.round(data)):
            bad = data[~finite] if not finite.all() else data[data != np.round(data)]
            raise InputError(f"label '{path}' has non-integer values (e.g. {bad.flat[0]}); expected integer labels")
        data = data.astype(np.int64)
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        raise InputError(f"label '{path}' has data type {data.dtype}; expected integer labels")
    flat = data.ravel()
    low, high = int(flat.min()), int(flat.max())
    if low >= 0 and high < 1 << 16:
        return np.flatnonzero(np.bincount(flat.astype(np.intp, copy=False))).tolist()  # far faster than np.unique
    return [int(v) for v in np.unique(flat)]


def _describe(values: set[int]) -> str:
    """``0..18`` for a contiguous set of labels, else the sorted list."""
    ordered = sorted(values)
    if ordered and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}..{ordered[-1]}"
    return str(ordered)


def _slice_shape(
    shape: tuple[int, ...],
    affine: np.ndarray,
    axcodes: str,
    slice_axis: int,
    spacing: Sequence[float] | None = None,
) -> tuple[int, ...]:
    """The 2D slice size of a volume once reoriented to ``axcodes``, resampled to ``spacing`` (mm per reoriented
    axis, ``-1`` or ``None``: kept; MONAI's ``Spacing`` gives ``floor((n - 1) * voxel / spacing) + 1`` voxels) and cut
    along ``slice_axis``."""
    ornt = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt(axcodes))
    voxel = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    oriented = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        size, target = int(shape[axis]), int(target)
        mm = float(spacing[target]) if spacing is not None else -1.0
        oriented[target] = int(np.floor((size - 1) * voxel[axis] / mm + 1e-6)) + 1 if mm > 0 else size
    return tuple(size for axis, size in enumerate(oriented) if axis != slice_axis)


def check_volumes(
    items: Sequence[dict],
    allowed_labels: Sequence[int] | int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    affine_tolerance: float = 1e-3,
    axcodes: str | None = None,
    slice_axis: int | None = None,
    min_size: int | None = None,
    equal_slices: bool = False,
    skip_bad: bool = False,
    unique_names: Sequence[str] = (),
    spacing: Sequence[float] | None = None,
    view_axes: Sequence[int] = (),
) -> list[dict]:
    """Check every volume of a datalist before training, evaluation or inference starts.

    For every item: the files exist and read completely; image and label are 3D (a last dimension of 1 is allowed)
    and of equal shape and affine; the image is finite and not constant; the label holds integers within
    ``allowed_labels`` and not only background; slices are at least ``min_size`` voxels each way. Items without
    ``label_key`` (inference) only have their image checked, items without ``image_key`` (label maps from which
    images are synthesised) only their label. Every item is checked, and all the bad ones are named in one message.

    Args:
        items: datalist items, such as ``{"image": path, "label": path}``.
        allowed_labels: the label values a label may hold, or their number ``n`` for ``0..n-1``; ``None`` accepts any
            integers.
        image_key: key of the image path.
        label_key: key of the label path.
        affine_tolerance: largest difference allowed between the image's and the label's affine entries (mm).
        axcodes: orientation the volumes are sliced in (e.g. ``"RAS"``); with ``slice_axis``, the slices are sized
            in it. ``None``: every dimension must be at least ``min_size``.
        slice_axis: the axis (after reorientation) the 2D slices are cut along.
        min_size: smallest slice size, each way (the configs give the network's ``min_size``); ``None``: no limit.
        equal_slices: all volumes must give slices of one size (training batches without ``slice_size``).
        skip_bad: return the good items as :class:`UsableVolumes` and log the bad ones (inference), instead of
            refusing them all; all bad is refused all the same.
        spacing: the voxel size (mm, per axis after reorientation; -1 keeps an axis) the volumes are resampled to
            before slicing, so that ``min_size`` and ``equal_slices`` judge the slices the network gets.
        unique_names: keys whose files must have distinct names (evaluation: a prediction file and a row of the
            Dice table per name), checked before any file is read.
        view_axes: further axes the volumes are sliced along (inference with several views, ``--views``); their
            slices must be at least ``min_size`` each way too.

    Returns:
        the items (the good ones with ``skip_bad``), so the check can wrap a datalist in a config expression.

    Raises:
        InputError: with a one-line message naming every bad file and what was expected.
    """
    for key in unique_names:
        refuse_name_clashes(items, key, what="evaluation's prediction and Dice row")
    if isinstance(allowed_labels, int):
        allowed_labels = range(allowed_labels)
    allowed = None if allowed_labels is None else {int(v) for v in allowed_labels}

    def slice_size(data: np.ndarray, affine: np.ndarray) -> tuple[int, ...]:
        if axcodes is None or slice_axis is None:
            return tuple(data.shape)
        return _slice_shape(data.shape, affine, axcodes, slice_axis, spacing)

    def refuse_small(size: tuple[int, ...], name: str, where: str = "") -> None:
        if min_size is not None and min(size) < min_size:
            raise InputError(
                f"'{name}' gives slices of {'x'.join(map(str, size))} voxels{where}; expected at least {min_size} "
                "each way (the network pools 4 times)"
            )

    def check_views(data: np.ndarray, affine: np.ndarray, name: str) -> None:
        for axis in view_axes if axcodes is not None else ():
            size = _slice_shape(data.shape, affine, axcodes, int(axis), spacing)
            refuse_small(size, name, f" along the view axis {axis} (--views)")

    def check(index_item: tuple[int, dict]) -> tuple[str, tuple[int, ...]]:
        index, item = index_item
        if not isinstance(item, dict) or (image_key not in item and label_key not in item):
            raise InputError(f"datalist item {index} is {item!r}; expected a dict with an '{image_key}' path")
        image = image_affine = label = None
        if image_key in item:
            image_path = item[image_key]
            image, image_affine = _read_volume(image_path, "image")
            if np.issubdtype(image.dtype, np.floating):
                bad = int(np.count_nonzero(~np.isfinite(image)))
                if bad:
                    raise InputError(
                        f"image '{image_path}' has {bad} NaN or infinite values; expected finite intensities"
                    )
            low, high = image.min(), image.max()
            if low == high:
                raise InputError(f"image '{image_path}' is constant (every voxel is {low}); expected an image")
            size = slice_size(image, image_affine)
            name = str(image_path)
        if label_key in item:
            label_path = item[label_key]
            label, label_affine = _read_volume(label_path, "label")
            if image is not None:
                if label.shape != image.shape:
                    raise InputError(
                        f"image '{image_path}' has shape {tuple(image.shape)} but label '{label_path}' has shape "
                        f"{tuple(label.shape)}; expected equal shapes"
                    )
                if not np.allclose(label_affine, image_affine, atol=affine_tolerance):
                    raise InputError(
                        f"image '{image_path}' and label '{label_path}' have different affines (largest difference "
                        f"{np.abs(label_affine - image_affine).max():.3g} mm); expected the label on the image's grid"
                    )
            values = _label_values(label, label_path)
            if allowed is not None:
                unexpected = [v for v in values if v not in allowed]
                if unexpected:
                    shown = ", ".join(str(v) for v in unexpected[:20]) + (", ..." if len(unexpected) > 20 else "")
                    raise InputError(
                        f"label '{label_path}' has values [{shown}] outside the declared labels {_describe(allowed)}"
                    )
            if values == [0]:
                raise InputError(f"label '{label_path}' holds only background (0); expected labelled structures")
            if image is None:
                size, name = slice_size(label, label_affine), str(label_path)
        refuse_small(size, name)
        if image is not None:
            check_views(image, image_affine, name)
        return name, size

    # Reading is mostly decompression, which releases the GIL. Every item is checked; errors in datalist order.
    results: list[tuple[str, tuple[int, ...]] | None] = []
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(check, pair) for pair in enumerate(items)]:
            try:
                results.append(future.result())
            except InputError as e:
                results.append(None)
                errors.append(str(e))
    good = [item for item, result in zip(items, results) if result is not None]
    if errors and not (skip_bad and good):
        if len(errors) == 1:
            raise InputError(errors[0])
        raise InputError(f"{len(errors)} of {len(results)} volumes cannot be used: " + " | ".join(errors))
    sizes = {result[1]: result[0] for result in results if result is not None}
    if equal_slices and len(sizes) > 1:
        (size_a, name_a), (size_b, name_b) = list(sizes.items())[:2]
        raise InputError(
            f"volumes give slices of different sizes ('{name_a}' {'x'.join(map(str, size_a))}, '{name_b}' "
            f"{'x'.join(map(str, size_b))}); expected one size, or --slice_size [H, W] to pad or crop them to one"
        )
    if not skip_bad:
        return items
    return UsableVolumes(good, errors, len(results))


class UsableVolumes(list):
    """The items :func:`check_volumes` accepted with ``skip_bad``; the reasons for the others in ``skipped``.

    Inference segments the good volumes, and :meth:`refuse_skipped`, the last step of its run, then names the skipped
    ones, so that the exit code tells a pipeline that some volumes were not segmented.
    """

    def __init__(self, good: Sequence[dict], skipped: Sequence[str], total: int) -> None:
        super().__init__(good)
        self.skipped, self.total = list(skipped), total
        if self.skipped:
            logger.warning(f"{len(self.skipped)} of {total} volumes are skipped: " + " | ".join(self.skipped))

    def refuse_skipped(self) -> bool:
        """Raise ``InputError`` naming every skipped volume and why; ``True`` when none was skipped."""
        if self.skipped:
            raise InputError(
                f"{len(self.skipped)} of {self.total} volumes were skipped (the others are done): "
                + " | ".join(self.skipped)
            )
        return True
