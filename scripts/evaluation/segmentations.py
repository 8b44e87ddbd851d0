"""Per-structure Dice of segmentations written by inference against reference label volumes, on the reference's own
grid (the voxels a user's scan has, not the network's resampled grid).

    python -m scripts.evaluation.segmentations --predictions outputs/inference --labels /data/aseg \\
        --config_file "['configs/train.yaml','configs/data/brain27.yaml']" --out outputs/real_dice

Every ``<name>_seg.nii.gz`` (or ``.nii``) of ``--predictions`` is paired with ``<name>.nii.gz`` (``.nii``, or
FreeSurfer's ``.mgz`` / ``.mgh``) of ``--labels``; the reference is mapped to the protocol's classes by the protocol's
own ``remap_transforms`` (FreeSurfer values to the 27 structures, for brain27), and both must share shape and affine.
The predictions hold class indices (inference's default), or with ``--prediction_values source`` the references' kind
of values (brain27's ``--output_label_values freesurfer``), mapped like the references. Dice per structure is MONAI's
``compute_dice`` (a structure absent from the reference is NaN and left out of means); the reports are those of
evaluation (``dice_per_volume.csv``, ``dice_summary.json``, :func:`scripts.evaluation.report.write_dice_report`).

``--round_trip_mm X`` instead of ``--predictions`` scores each reference against itself carried to X mm voxels
(nearest neighbour, as training labels are resampled) and back (one-hot probabilities interpolated linearly, then the
argmax, as inference does): the best a perfect model working at X mm can reach on that scan.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.metrics import compute_dice
from monai.transforms import Compose

from ..data.datalist import VOLUME_SUFFIXES, check_volumes, is_volume, refuse_name_clashes, volume_stem
from ..errors import InputError
from .crop import crop_to_joint_foreground
from .report import write_dice_report

logger = logging.getLogger(__name__)

__all__ = ["dice_per_structure", "main", "pair_files", "protocol", "round_trip"]


def pair_files(predictions: str, labels: str, suffix: str = "_seg") -> list[tuple[str, str, str]]:
    """``(name, prediction, label)`` for every prediction ``<name><suffix>.nii[.gz]`` with a label ``<name>.nii[.gz]``
    (or ``<name>.mgz``: any of ``VOLUME_SUFFIXES``).
    References without a prediction are named in a warning (a scan that inference skipped is not scored).

    Raises:
        InputError: a folder is missing, a prediction has no label, or nothing pairs.
    """
    for folder, what in ((predictions, "--predictions"), (labels, "--labels")):
        if not os.path.isdir(folder):
            raise InputError(f"{what} '{folder}' is not a folder")
    references = [{"label": os.path.join(labels, n)} for n in sorted(os.listdir(labels)) if is_volume(n)]
    refuse_name_clashes(references, key="label", what="reference")  # T1.nii.gz beside T1.mgz: which one is it?
    label_files = {volume_stem(item["label"]): item["label"] for item in references}
    pairs, unmatched = [], []
    for name in sorted(os.listdir(predictions)):
        stem = volume_stem(name)
        if not is_volume(name) or not stem.endswith(suffix):
            continue
        base = stem[: len(stem) - len(suffix)] if suffix else stem
        if base in label_files:
            pairs.append((base, os.path.join(predictions, name), label_files[base]))
        else:
            unmatched.append(name)
    if unmatched:
        expected = " or ".join(f"<name>{s}" for s in VOLUME_SUFFIXES)
        raise InputError(f"no reference label in '{labels}' for {', '.join(unmatched)} (expected {expected})")
    if not pairs:
        raise InputError(f"no segmentation '<name>{suffix}.nii.gz' in '{predictions}'")
    unscored = sorted(set(label_files) - {name for name, _, _ in pairs})
    if unscored:
        shown = ", ".join(unscored[:10]) + (", ..." if len(unscored) > 10 else "")
        logger.warning(
            f"{len(unscored)} of the {len(label_files)} references in '{labels}' have no segmentation in "
            f"'{predictions}' and are not scored: {shown}"
        )
    return pairs


def protocol(config_files: Sequence[str]) -> tuple[list[str], Compose]:
    """The label protocol of ``config_files`` (merged in order): class names and the transform mapping a reference
    label volume (channel first) to the protocol's class indices (identity where the protocol remaps nothing)."""
    parser = ConfigParser()
    parser.read_config(list(config_files))
    names = list(parser.get_parsed_content("label_names"))
    remap = parser.get_parsed_content("remap_transforms") if "remap_transforms" in parser else []
    return names, Compose(remap)


def allowed_labels(config_files: Sequence[str]) -> list[int] | None:
    """The label values a reference may hold under the protocol of ``config_files`` (before its remapping)."""
    parser = ConfigParser()
    parser.read_config(list(config_files))
    return list(parser.get_parsed_content("allowed_labels")) if "allowed_labels" in parser else None


def _spatial(shape: Sequence[int]) -> tuple[int, ...]:
    """A volume's shape without a last dimension of 1 (a 3D volume written as 4D)."""
    shape = tuple(int(n) for n in shape)
    return shape[:-1] if len(shape) == 4 and shape[-1] == 1 else shape


def dice_per_structure(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of every class 1..num_classes-1 (NaN where the reference lacks it), with MONAI's ``compute_dice``, on the
    box of the two maps' joint foreground (the same Dice, fewer voxels: :mod:`scripts.evaluation.crop`)."""
    pred, ref = (torch.as_tensor(m) for m in crop_to_joint_foreground(prediction, reference))
    dice = np.full(num_classes - 1, np.nan)
    for c in range(1, num_classes):
        p, r = (pred == c)[None, None].float(), (ref == c)[None, None].float()
        dice[c - 1] = float(compute_dice(p, r, include_background=True, ignore_empty=True)[0, 0])
    return dice


def round_trip(labels: np.ndarray, voxel_mm: Sequence[float], target_mm: float, num_classes: int) -> np.ndarray:
    """``labels`` resampled to ``target_mm`` voxels by nearest neighbour, then back to their grid by linear
    interpolation of each class's indicator and an argmax (one class at a time, keeping a running maximum)."""
    ref = torch.as_tensor(np.asarray(labels, dtype=np.int64))[None, None].float()
    coarse_shape = [max(1, round(n * v / target_mm)) for n, v in zip(labels.shape, voxel_mm)]
    coarse = torch.nn.functional.interpolate(ref, size=coarse_shape, mode="nearest-exact")  # voxel centres
    best = torch.full(labels.shape, -1.0)
    out = torch.zeros(labels.shape, dtype=torch.int64)
    for c in range(num_classes):
        up = torch.nn.functional.interpolate(
            (coarse == c).float(), size=labels.shape, mode="trilinear", align_corners=False
        )[0, 0]
        better = up > best
        best, out = torch.where(better, up, best), torch.where(better, torch.tensor(c), out)
    return out.numpy()


def _load(path: str) -> nib.spatialimages.SpatialImage:
    try:
        return nib.load(path)
    except Exception as e:  # nibabel raises several types for unreadable files
        raise InputError(f"'{path}' cannot be read as a volume: {str(e).splitlines()[0][:200]}") from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.evaluation.segmentations", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="folder of <name>_seg.nii.gz written by inference")
    source.add_argument(
        "--round_trip_mm", type=float, help="score the references carried to voxels of this size (mm) and back"
    )
    parser.add_argument("--labels", required=True, help="folder of reference <name>.nii.gz (or .mgz) label volumes")
    parser.add_argument(
        "--config_file",
        default="['configs/train.yaml','configs/data/brain27.yaml']",
        help="the protocol's configs, as for monai.bundle (a list string or one file)",
    )
    parser.add_argument("--out", required=True, help="folder for dice_per_volume.csv and dice_summary.json")
    parser.add_argument("--suffix", default="_seg", help="the predictions' name suffix")
    parser.add_argument(
        "--prediction_values",
        choices=("indices", "source"),
        default="indices",
        help="what the predictions hold: the protocol's class indices (inference's default) or the references' kind "
        "of values, mapped like them by the protocol (brain27's --output_label_values freesurfer)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    configs = ast.literal_eval(args.config_file) if args.config_file.strip().startswith("[") else [args.config_file]
    try:
        if args.round_trip_mm is not None:
            if not args.round_trip_mm > 0:
                raise InputError(f"--round_trip_mm {args.round_trip_mm} must be > 0")
            if not os.path.isdir(args.labels):
                raise InputError(f"--labels '{args.labels}' is not a folder")
            pairs = [
                (volume_stem(n), None, os.path.join(args.labels, n))
                for n in sorted(os.listdir(args.labels))
                if is_volume(n)
            ]
        else:
            pairs = pair_files(args.predictions, args.labels, args.suffix)
        names, remap = protocol(configs)
        # every reference read whole and its values checked against the protocol before any is scored (a value the
        # protocol does not know would otherwise pass its remapping unchanged and count as some class)
        check_volumes([{"label": path} for _, _, path in pairs], allowed_labels=allowed_labels(configs))
        rows = []
        for name, pred_path, label_path in pairs:
            label_img = _load(label_path)
            reference = np.asarray(
                remap({"label": np.asarray(label_img.dataobj).reshape(_spatial(label_img.shape))[None]})["label"][0]
            )
            if pred_path is None:
                voxels = [float(v) for v in label_img.header.get_zooms()[:3]]
                prediction = round_trip(reference, voxels, args.round_trip_mm, len(names))
            else:
                pred_img = _load(pred_path)
                if _spatial(pred_img.shape) != _spatial(label_img.shape):
                    raise InputError(
                        f"'{pred_path}' has shape {pred_img.shape} but its reference '{label_path}' "
                        f"{label_img.shape}: segment the reference's own image"
                    )
                if not np.allclose(pred_img.affine, label_img.affine, atol=1e-3):
                    raise InputError(
                        f"'{pred_path}' has another affine than its reference '{label_path}': segment the "
                        "reference's own image"
                    )
                prediction = np.asarray(pred_img.dataobj).reshape(_spatial(pred_img.shape))
                if args.prediction_values == "source":
                    prediction = np.asarray(remap({"label": prediction[None]})["label"][0])
                outside = prediction[(prediction < 0) | (prediction >= len(names))]
                if outside.size:
                    hint = (
                        "a value the protocol does not map"
                        if args.prediction_values == "source"
                        else "a segmentation in the references' values (inference with --output_label_values "
                        "freesurfer) is scored with --prediction_values source"
                    )
                    raise InputError(
                        f"'{pred_path}' holds the value {int(outside.flat[0])}, not a class index "
                        f"0-{len(names) - 1} of the protocol; {hint}"
                    )
            dice = dice_per_structure(prediction, reference, len(names))
            rows.append(dice)
            print(f"{name}: mean Dice {np.nanmean(dice):.3f} over {int(np.sum(~np.isnan(dice)))} structures")
    except InputError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    paths = write_dice_report(args.out, [name for name, _, _ in pairs], np.stack(rows), names[1:])
    print(f"wrote {paths['csv']} and {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
