"""The Dice of the foreground classes on the box of the voxels where a prediction or its reference is foreground.

A voxel that is background (0) in both the prediction and the reference adds to no foreground class's overlap, size
in the prediction or size in the reference, so the per-class Dice of classes 1..C-1 (MONAI's
``include_background=False``) is the same on the box that holds every foreground voxel of either. A 1 mm brain label
map fills about a fifth of its 256^3 grid, and MONAI's ``DiceHelper`` passes over the whole volume once per class:
at 1 mm it took 7.9 s of each volume's evaluation (27 classes), more than the network (docs/README.md, "Evaluation
time").
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import MapTransform, SpatialCrop
from monai.transforms.utils import generate_spatial_bounding_box

__all__ = ["CropJointForegroundd", "crop_to_joint_foreground", "joint_foreground_box"]


def joint_foreground_box(label_maps: Sequence[NdarrayOrTensor]) -> tuple[list[int], list[int]] | None:
    """The spatial box holding every voxel that is not 0 in any of ``label_maps``, by MONAI's
    ``generate_spatial_bounding_box`` on their joint foreground.

    Args:
        label_maps: channel-first arrays or tensors ``(C, *spatial)`` of class indices, of one shape.

    Returns:
        the box's start and end (exclusive) on the spatial axes, or ``None`` where all maps are 0 everywhere.

    Raises:
        ValueError: for maps of different shapes.
    """
    shapes = {tuple(m.shape) for m in label_maps}
    if len(shapes) != 1:
        raise ValueError(f"label maps of one shape expected, got {sorted(shapes)}")
    # a MetaTensor's metadata is not needed for the mask
    masks = (torch.as_tensor(m).as_subclass(torch.Tensor) != 0 for m in label_maps)
    foreground = functools.reduce(torch.logical_or, masks)
    if not bool(foreground.any()):
        return None
    return generate_spatial_bounding_box(foreground)


class CropJointForegroundd(MapTransform):
    """Crop label maps of one grid (a prediction and its reference) to the box of their joint foreground
    (:func:`joint_foreground_box`), for a Dice of the foreground classes that reads a fraction of the voxels.

    Args:
        keys: the channel-first label maps ``(C, *spatial)`` of class indices, cropped alike.
        include_background: the metric's own setting: with the background class in the Dice the crop would change
            it, so nothing is cropped.
        allow_missing_keys: as MONAI's ``MapTransform``.

    Shapes:
        each ``(C, *spatial)`` -> ``(C, *box)``, with MONAI's ``SpatialCrop`` (the affine follows the crop).
    """

    def __init__(self, keys, include_background: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.include_background = include_background

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if self.include_background or not keys:
            return d
        box = joint_foreground_box([d[key] for key in keys])
        if box is None:  # no foreground anywhere: nothing to count, nothing to cut
            return d
        crop = SpatialCrop(roi_start=box[0], roi_end=box[1])
        for key in keys:
            d[key] = crop(d[key])
        return d


def crop_to_joint_foreground(*label_maps: np.ndarray) -> tuple[np.ndarray, ...]:
    """``label_maps`` (arrays of one shape, no channel axis) cut to :func:`joint_foreground_box`, unchanged where
    all are 0."""
    box = joint_foreground_box([m[None] for m in label_maps])
    if box is None:
        return label_maps
    region = tuple(slice(start, end) for start, end in zip(*box))
    return tuple(m[region] for m in label_maps)
