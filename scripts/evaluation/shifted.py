"""Shifted copies of real development scans, to check what domain randomisation buys beyond T1 at 1 mm.

The development set holds T1 scans only. Two shifts can be made from them while keeping their anatomy and reference
labels voxel for voxel (same grid, same affine), so that ``scripts.evaluation.segmentations`` scores them as is:

- ``inverted``: the head's intensities reversed (``high - x`` inside the head, background kept at 0): CSF becomes the
  brightest tissue and white matter the darkest, a T2-like contrast ordering (a proxy, not a simulated T2 scan).
- ``thick<T>mm``: an acquisition with thick slices along one world direction (default S, i.e. axial slices), each
  slice the mean of ``k`` voxels (``k = round(T / voxel size)``), linearly interpolated back to the original grid, as
  a scanner's thick-slice series looks once resampled to isotropic voxels.

    python -m scripts.evaluation.shifted --images ../shared/data/real_t1_aseg/images \\
        --labels ../shared/data/real_t1_aseg/labels --out runs/shifted [--thickness_mm 5 --direction S]

writes ``out/images/<name>_inverted.nii.gz``, ``out/images/<name>_thick<T>mm.nii.gz`` and the matching reference
labels (copies) under ``out/labels/``. These are derived from the development scans: a development check, never
training data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..outputs import atomic_write
from .segmentations import pair_files

__all__ = ["inverted_contrast", "main", "thick_slices", "world_axis"]


def inverted_contrast(image: np.ndarray, head_fraction: float = 0.05, high_percentile: float = 99.5) -> np.ndarray:
    """Reverse the intensities inside the head: ``high - x + head_fraction * high`` where ``x > head_fraction * high``
    (the offset keeps every head voxel above the background), 0 elsewhere.

    Args:
        image: a 3D intensity volume.
        head_fraction: voxels above this fraction of ``high`` are the head (the rest is background, kept at 0).
        high_percentile: percentile of the positive voxels taken as ``high`` (robust to a few bright voxels).

    Returns:
        a float32 volume of the same shape.
    """
    x = np.asarray(image, dtype=np.float32)
    positive = x[x > 0]
    if positive.size == 0:
        raise InputError("the image has no positive voxel: nothing to invert")
    high = float(np.percentile(positive, high_percentile))
    head = x > head_fraction * high
    return np.where(head, np.clip(high - x, 0.0, None) + head_fraction * high, 0.0).astype(np.float32)


def thick_slices(image: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Simulate slices ``k`` voxels thick along ``axis``: block means, linearly interpolated back to every voxel.

    Args:
        image: a 3D intensity volume.
        axis: the voxel axis across the slices.
        k: slice thickness in voxels (>= 1; 1 returns a copy).

    Returns:
        a float32 volume of the same shape.
    """
    x = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)
    n = x.shape[0]
    if k < 1:
        raise InputError(f"slice thickness must be at least one voxel, got {k}")
    blocks = -(-n // k)
    padded = np.concatenate([x, np.repeat(x[-1:], blocks * k - n, axis=0)]) if blocks * k > n else x
    means = padded.reshape(blocks, k, *x.shape[1:]).mean(axis=1)  # one value per thick slice
    # slice j is centred on voxel j * k + (k - 1) / 2; every voxel takes the two nearest slices' linear mix
    t = np.clip((np.arange(n) - (k - 1) / 2.0) / k, 0.0, blocks - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, blocks - 1)
    w = (t - lo).reshape(-1, *([1] * (x.ndim - 1))).astype(np.float32)
    out = means[lo] * (1.0 - w) + means[hi] * w
    return np.moveaxis(out, 0, axis).astype(np.float32)


def world_axis(affine: np.ndarray, direction: str) -> int:
    """The voxel axis that runs along the world direction ``direction`` (one of R, L, A, P, S, I)."""
    codes = nib.aff2axcodes(affine)
    pairs = {"R": "RL", "L": "RL", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}
    if direction not in pairs:
        raise InputError(f"direction must be one of R, L, A, P, S, I, got {direction!r}")
    for axis, code in enumerate(codes):
        if code in pairs[direction]:
            return axis
    raise InputError(f"no voxel axis runs along {direction} (axis codes {codes})")


def _save(data: np.ndarray, like: nib.spatialimages.SpatialImage, path: str, dtype: type | None = np.float32) -> None:
    """``data`` as a NIfTI ``.nii.gz`` on ``like``'s grid (its NIfTI header kept; an MGH one has no NIfTI fields)."""
    out = nib.Nifti1Image(data, like.affine, like.header if isinstance(like, nib.Nifti1Image) else None)
    if dtype is not None:
        out.set_data_dtype(dtype)
    atomic_write(path, lambda staging: nib.save(out, staging))


def _copy_label(src: str, dst: str) -> None:
    """The reference label at ``dst`` (a ``.nii.gz``): the file itself, or its data written as NIfTI (``.nii``,
    ``.mgz``: copied under the ``.nii.gz`` name they were unreadable)."""
    if src.endswith(".nii.gz"):
        atomic_write(dst, lambda staging: shutil.copyfile(src, staging))
    else:
        label = nib.load(src)
        _save(np.asanyarray(label.dataobj), label, dst, dtype=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.evaluation.shifted", description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of <name>.nii.gz (or .nii, .mgz, .mgh) scans")
    parser.add_argument(
        "--labels", required=True, help="folder of the matching reference labels (<name>.nii.gz, .nii, .mgz, .mgh)"
    )
    parser.add_argument("--out", required=True, help="folder for images/ and labels/ of the shifted copies")
    parser.add_argument("--thickness_mm", type=float, default=5.0, help="slice thickness of the thick-slice copy")
    parser.add_argument("--direction", default="S", help="world direction across the thick slices (S: axial)")
    args = parser.parse_args(argv)
    try:
        if not args.thickness_mm > 0:
            raise InputError(f"--thickness_mm must be a positive slice thickness in mm, got {args.thickness_mm}")
        pairs = pair_files(args.images, args.labels, suffix="")
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(args.out, sub), exist_ok=True)
        for name, image_path, label_path in pairs:
            img = nib.load(image_path)
            data = np.asarray(img.dataobj, dtype=np.float32)
            try:
                axis = world_axis(img.affine, args.direction)
                voxel = float(img.header.get_zooms()[axis])
                k = max(1, round(args.thickness_mm / voxel))
                shifted = {"inverted": inverted_contrast(data), f"thick{k * voxel:g}mm": thick_slices(data, axis, k)}
            except InputError as err:
                raise InputError(f"{image_path}: {err}") from None
            for tag, volume in shifted.items():
                stem = f"{name}_{tag}"
                _save(volume, img, os.path.join(args.out, "images", f"{stem}.nii.gz"))
                _copy_label(label_path, os.path.join(args.out, "labels", f"{stem}.nii.gz"))
                print(f"wrote {stem}")
    except (InputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
