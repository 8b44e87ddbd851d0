# Copyright (c) the scSE bundle contributors.
# Licensed under the Apache License, Version 2.0.
"""
The bundle's default dataset: small synthetic T1-weighted head volumes with a whole-brain label map.

No machine that runs the bundle is assumed to reach the internet, so the first run generates its data. The volumes
mimic the paper's whole-brain task (MALC): 27 structures in FreeSurfer's aseg order (left/right pairs with identical
intensities, so a network has to use spatial context), several of them far below 1% of the brain, unlabelled scalp,
skull, CSF, eyes and neck around the brain, and the usual artefacts of MRI (partial volume, bias field, noise).

Every subject is built analytically in a canonical head frame (millimetres of a 192 mm field of view, RAS: x to the
right, y anterior, z superior) from ellipsoids and shells, warped by a random global affine and a smooth elastic
deformation, and painted with per-tissue intensities. The head always fills the field of view; ``spacing`` only sets
the voxel size written in the NIfTI affine (the default 64^3 at 3 mm gives a realistic 192 mm head frame).

Generation is deterministic: subject ``i`` depends only on ``(seed, i)``, and nibabel writes gzip files with a fixed
timestamp, so two generations with the same arguments are byte-for-byte identical.

Command line::

    python -m scripts.data.synthetic --output_dir data/synthetic --num_subjects 20 --shape 64 64 64 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "FREESURFER_LABELS",
    "LABEL_NAMES",
    "centred_affine",
    "ensure_default_dataset",
    "generate_dataset",
    "generate_subject",
]

# Label value = index. Sorted by FreeSurfer aseg value, so these are the 27 structures of the paper's brain protocol
# in the order a sorted FreeSurfer remapping gives (FREESURFER_LABELS[i] is the aseg value of LABEL_NAMES[i]).
LABEL_NAMES: tuple[str, ...] = (
    "background",
    "left cerebral white matter",
    "left cerebral cortex",
    "left lateral ventricle",
    "left cerebellum white matter",
    "left cerebellum cortex",
    "left thalamus",
    "left caudate",
    "left putamen",
    "left pallidum",
    "3rd ventricle",
    "4th ventricle",
    "brain stem",
    "left hippocampus",
    "left amygdala",
    "left ventral DC",
    "right cerebral white matter",
    "right cerebral cortex",
    "right lateral ventricle",
    "right cerebellum white matter",
    "right cerebellum cortex",
    "right thalamus",
    "right caudate",
    "right putamen",
    "right pallidum",
    "right hippocampus",
    "right amygdala",
    "right ventral DC",
)
FREESURFER_LABELS: tuple[int, ...] = (
    0, 2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 28, 41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60
)  # fmt: skip

# Canonical frame: the field of view always spans this many millimetres, whatever the shape.
_REF_FOV_MM = 192.0
# Unlabelled tissues get tissue codes after the labels; their label is 0 (background).
_EXTRA_TISSUES: tuple[str, ...] = ("scalp", "muscle", "skull", "csf", "eye", "orbit fat")
_NUM_LABELS = len(LABEL_NAMES)
_TISSUE_NAMES: tuple[str, ...] = ("air", *LABEL_NAMES[1:], *_EXTRA_TISSUES)
# T1-weighted means on a FreeSurfer-like scale (white matter 110); keyed by name without the side, so left and right
# structures share one distribution.
_T1_MEANS: dict[str, float] = {
    "air": 0.0,
    "cerebral white matter": 110.0,
    "cerebral cortex": 68.0,
    "lateral ventricle": 30.0,
    "cerebellum white matter": 100.0,
    "cerebellum cortex": 72.0,
    "thalamus": 90.0,
    "caudate": 76.0,
    "putamen": 82.0,
    "pallidum": 97.0,
    "3rd ventricle": 30.0,
    "4th ventricle": 30.0,
    "brain stem": 95.0,
    "hippocampus": 70.0,
    "amygdala": 73.0,
    "ventral DC": 92.0,
    "scalp": 100.0,
    "muscle": 52.0,
    "skull": 16.0,
    "csf": 30.0,
    "eye": 24.0,
    "orbit fat": 105.0,
}


@dataclass(frozen=True)
class _Ellipsoid:
    """An ellipsoid of the canonical frame (mm); ``tilt`` turns it about the x axis (degrees, nose up positive) and
    ``bend`` lowers its ends by ``bend * y'**2`` mm, which curves ventricles and caudates like their real arcs."""

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    tilt: float = 0.0
    bend: float = 0.0


# Deep structures, given for the left hemisphere (x < 0) and mirrored for the right one; painted in this order, so
# later ones win where they touch (ventricles last). Sizes were set so that voxel fractions of the brain match the
# SynthSeg/FreeSurfer label maps of real adults to within a factor of about two.
_PAIRED: tuple[tuple[str, _Ellipsoid], ...] = (
    ("ventral DC", _Ellipsoid((-11.0, -12.0, -9.0), (7.0, 11.0, 7.0))),
    ("thalamus", _Ellipsoid((-10.5, -14.0, 8.0), (9.5, 16.0, 10.0))),
    ("putamen", _Ellipsoid((-25.0, 5.0, 4.0), (5.5, 15.0, 9.5))),
    ("pallidum", _Ellipsoid((-18.5, 1.0, 2.0), (4.0, 9.0, 6.5))),
    ("caudate", _Ellipsoid((-14.0, 8.0, 15.0), (4.5, 20.0, 6.5), tilt=-10.0, bend=0.010)),
    ("hippocampus", _Ellipsoid((-27.0, -20.0, -14.0), (5.5, 19.0, 5.5), tilt=20.0)),
    ("amygdala", _Ellipsoid((-24.0, 3.0, -19.0), (6.0, 6.5, 6.0))),
    ("lateral ventricle", _Ellipsoid((-9.0, -4.0, 18.0), (4.5, 30.0, 7.0), bend=0.012)),
)
_UNPAIRED: tuple[tuple[str, _Ellipsoid], ...] = (
    ("3rd ventricle", _Ellipsoid((0.0, -9.0, 5.0), (3.2, 13.0, 8.5))),
    ("4th ventricle", _Ellipsoid((0.0, -37.0, -31.0), (6.0, 4.5, 7.0), tilt=-20.0)),
)
_HEAD = _Ellipsoid((0.0, 0.0, 6.0), (72.0, 88.0, 78.0))
# Scalp, skull and CSF wrap the brain: (distance from the cerebrum and cerebellum surfaces in mm, tissue), outermost
# first.
_CRANIAL_LAYERS: tuple[tuple[float, str], ...] = ((15.0, "scalp"), (10.0, "skull"), (4.0, "csf"))
_CEREBRUM = _Ellipsoid((0.0, 2.0, 14.0), (57.0, 71.0, 54.0))
_CALLOSUM = _Ellipsoid((0.0, -3.0, 12.0), (1e3, 36.0, 18.0))  # y-z region where the hemispheres join (no fissure)
_CEREBELLUM = _Ellipsoid((-21.0, -50.0, -31.0), (29.0, 23.0, 18.0))
_CEREBELLUM_WM = _Ellipsoid((-15.0, -45.0, -28.0), (13.0, 12.0, 9.0))
_BRAIN_STEM = _Ellipsoid((0.0, -24.0, -34.0), (11.0, 12.0, 32.0), tilt=-15.0)
_ORBIT = _Ellipsoid((-32.0, 56.0, -12.0), (17.0, 17.0, 15.0))
_EYE = _Ellipsoid((-32.0, 60.0, -12.0), (12.0, 12.0, 12.0))


def _mirror(shape: _Ellipsoid) -> _Ellipsoid:
    """The same ellipsoid reflected into the right hemisphere."""
    x, y, z = shape.centre
    return _Ellipsoid((-x, y, z), shape.semi_axes, shape.tilt, shape.bend)


def _bspline_weights(size: int, intervals: int) -> np.ndarray:
    """Cubic B-spline weights that interpolate ``intervals + 3`` control values to ``size`` samples on one axis.

    Args:
        size: number of output samples.
        intervals: number of B-spline intervals across the axis.

    Returns:
        float32 array ``(size, intervals + 3)``.
    """
    position = (np.arange(size) + 0.5) / size * intervals  # in control-point units, in [0, intervals]
    distance = np.abs(position[:, None] - (np.arange(intervals + 3) - 1.0)[None, :])
    weights = np.where(
        distance < 1.0, 2.0 / 3.0 - distance**2 + distance**3 / 2.0, np.clip(2.0 - distance, 0.0, None) ** 3 / 6.0
    )
    return weights.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], intervals: int) -> np.ndarray:
    """Zero-mean, unit-variance low-frequency noise: a cubic B-spline of Gaussian control values.

    Separable B-spline weights make this a few small tensor products, far cheaper than ``ndimage.zoom`` of order 3.

    Args:
        rng: random generator.
        shape: output shape (3D).
        intervals: B-spline intervals per axis; fewer give smoother fields (wavelength about ``2 * size / intervals``).

    Returns:
        float32 array of ``shape``.
    """
    out = rng.standard_normal((intervals + 3,) * 3, dtype=np.float32)
    for size in shape:
        # Contract the current first control axis; the new sample axis goes last, so three passes restore the order.
        out = np.tensordot(out, _bspline_weights(size, intervals), axes=([0], [1]))
    out -= out.mean()
    return out / max(float(out.std()), 1e-6)


class _Frame:
    """Canonical coordinates (mm) of every voxel of one subject, and where canonical boxes fall in the volume.

    Args:
        shape: volume shape.
        rng: random generator of the subject.
    """

    def __init__(self, shape: Sequence[int], rng: np.random.Generator) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.mm_per_voxel = np.array([_REF_FOV_MM / s for s in self.shape])
        # Global affine: rotation up to 8 degrees about each axis, scale +-10% (mostly isotropic), shift up to 6 mm.
        ax, ay, az = np.deg2rad(rng.uniform(-8.0, 8.0, 3))
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        scale = np.clip(rng.uniform(0.92, 1.08) * (1.0 + rng.uniform(-0.03, 0.03, 3)), 0.9, 1.1)
        self.matrix = rx @ ry @ rz @ np.diag(scale)
        self.shift = rng.uniform(-6.0, 6.0, 3)
        # Smooth elastic displacement (mm), a few millimetres over ~40 mm wavelengths.
        self.max_displacement = 0.0
        world = []
        for axis in range(3):
            displacement = 2.5 * _smooth_noise(rng, self.shape, 4)
            self.max_displacement = max(self.max_displacement, float(np.abs(displacement).max()))
            centred = np.arange(self.shape[axis], dtype=np.float32) - (self.shape[axis] - 1) / 2.0
            grid = centred * np.float32(self.mm_per_voxel[axis])
            world.append(np.expand_dims(grid, [a for a in range(3) if a != axis]) + displacement - self.shift[axis])
        inverse = np.linalg.inv(self.matrix).astype(np.float32)
        # Canonical position of each voxel: p = A^-1 (w + d(w) - t).
        self.coords = np.stack([sum(inverse[i, j] * world[j] for j in range(3)) for i in range(3)])

    def box(self, shape: _Ellipsoid) -> tuple[slice, slice, slice]:
        """Voxel slices that hold ``shape`` after the subject's warp (a conservative bounding box).

        Args:
            shape: a canonical ellipsoid.

        Returns:
            one slice per axis.
        """
        radius = max(shape.semi_axes) + shape.bend * max(shape.semi_axes) ** 2
        centre = self.matrix @ np.asarray(shape.centre) + self.shift
        reach = radius * np.abs(self.matrix).sum(axis=1).max() + self.max_displacement + 2.0 * self.mm_per_voxel.max()
        index_centre = centre / self.mm_per_voxel + (np.array(self.shape) - 1) / 2.0
        index_reach = reach / self.mm_per_voxel
        low = np.clip(np.floor(index_centre - index_reach), 0, self.shape).astype(int)
        high = np.clip(np.ceil(index_centre + index_reach) + 1, 0, self.shape).astype(int)
        return tuple(slice(a, b) for a, b in zip(low, high))  # type: ignore[return-value]

    def radius(self, shape: _Ellipsoid, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Normalised ellipsoidal radius of the voxels of ``box``: below 1 inside ``shape``.

        Args:
            shape: a canonical ellipsoid.
            box: voxel slices, from :py:meth:`box`.

        Returns:
            float32 array of the box's shape.
        """
        x, y, z = (self.coords[(axis, *box)] - c for axis, c in enumerate(shape.centre))
        if shape.tilt:
            angle = np.deg2rad(shape.tilt)
            y, z = np.cos(angle) * y + np.sin(angle) * z, -np.sin(angle) * y + np.cos(angle) * z
        if shape.bend:
            z = z + shape.bend * y**2
        a, b, c = shape.semi_axes
        return np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)


def _grow(shape: _Ellipsoid, margin: float) -> _Ellipsoid:
    """The ellipsoid with ``margin`` mm added to its semi-axes: close to the surface parallel to ``shape``."""
    return _Ellipsoid(shape.centre, tuple(a + margin for a in shape.semi_axes), shape.tilt, shape.bend)  # type: ignore[arg-type]


def _jitter(rng: np.random.Generator, shape: _Ellipsoid, size: float = 0.06, shift: float = 1.0) -> _Ellipsoid:
    """The shape with per-subject variation of its semi-axes (relative ``size``) and centre (``shift`` mm)."""
    semi = np.asarray(shape.semi_axes) * (1.0 + size * np.clip(rng.standard_normal(3), -2.0, 2.0))
    centre = np.asarray(shape.centre) + shift * np.clip(rng.standard_normal(3), -2.0, 2.0)
    return _Ellipsoid(tuple(centre), tuple(semi), shape.tilt, shape.bend)  # type: ignore[arg-type]


def _tissue_map(frame: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Paint the subject's tissues; codes below ``len(LABEL_NAMES)`` are labels, the others unlabelled tissues.

    Args:
        frame: the subject's canonical coordinates.
        rng: random generator of the subject.

    Returns:
        uint8 array of tissue codes (indices of ``_TISSUE_NAMES``).
    """
    code = {name: i for i, name in enumerate(_TISSUE_NAMES)}
    tissue = np.zeros(frame.shape, dtype=np.uint8)
    everywhere = (slice(None),) * 3

    def paint(shape: _Ellipsoid, name: str) -> None:
        box = frame.box(shape)
        tissue[box][frame.radius(shape, box) < 1.0] = code[name]

    cerebrum = _jitter(rng, _CEREBRUM, 0.03, 1.0)
    cerebellum = (_jitter(rng, _CEREBELLUM, 0.04, 1.0), _jitter(rng, _mirror(_CEREBELLUM), 0.04, 1.0))

    # Face and neck soft tissue (the neck is a vertical elliptic cylinder), then scalp, skull and CSF around the brain.
    x, y, z = frame.coords
    head = frame.radius(_HEAD, everywhere)
    tissue[(head < 1.0) | (((x / 48.0) ** 2 + ((y + 8.0) / 52.0) ** 2 < 1.0) & (z < -40.0))] = code["muscle"]
    tissue[(head < 1.0) & (head > 0.93)] = code["scalp"]
    for margin, name in _CRANIAL_LAYERS:
        for shape in (cerebrum, *cerebellum):
            paint(_grow(shape, margin), name)
    for orbit, eye in ((_ORBIT, _EYE), (_mirror(_ORBIT), _mirror(_EYE))):
        paint(orbit, "orbit fat")
        paint(_jitter(rng, eye, 0.04, 0.5), "eye")

    # Cerebrum: white matter inside a folded cortical ribbon, split by a midline fissure above the corpus callosum.
    box = frame.box(cerebrum)
    radius = frame.radius(cerebrum, box)
    inside = radius < 1.0
    depth = (1.0 - radius) * 55.0  # approximate distance (mm) below the brain surface
    midline = np.abs(x[box]) - 1.5  # distance (mm) from the interhemispheric fissure
    midline[frame.radius(_CALLOSUM, box) < 1.0] = np.inf
    # Sulci follow the zero level set of a smooth random field: narrow CSF grooves with cortex around them.
    folds = np.abs(_smooth_noise(rng, frame.shape, 10)[box])
    sulcus = np.clip(1.0 - folds / 0.45, 0.0, 1.0)
    gyrus = np.clip(1.0 - folds / 1.0, 0.0, 1.0)
    left = x[box] < 0.0
    region = tissue[box]
    region[inside] = np.where(left[inside], code["left cerebral white matter"], code["right cerebral white matter"])
    cortex = inside & (np.minimum(depth, midline) < 4.0 + 12.0 * gyrus)
    region[cortex] = np.where(left[cortex], code["left cerebral cortex"], code["right cerebral cortex"])
    region[inside & ((depth < 14.0 * sulcus - 2.0) | (midline < 0.0))] = code["csf"]

    # Cerebellum (two overlapping hemispheres with a white-matter core) and brain stem.
    for side, mirror, hemisphere in (("left", False, cerebellum[0]), ("right", True, cerebellum[1])):
        box = frame.box(hemisphere)
        own_side = (x[box] >= 0.0) if mirror else (x[box] < 0.0)
        tissue[box][(frame.radius(hemisphere, box) < 1.0) & own_side] = code[f"{side} cerebellum cortex"]
        core = _jitter(rng, _mirror(_CEREBELLUM_WM) if mirror else _CEREBELLUM_WM, 0.08, 1.0)
        paint(core, f"{side} cerebellum white matter")
    paint(_jitter(rng, _BRAIN_STEM, 0.04, 1.0), "brain stem")

    # Deep grey matter and ventricles; the ventricles vary most between subjects, as they do with age.
    ventricle_size = rng.uniform(0.85, 1.35)
    for name, shape in _PAIRED:
        for side, mirror in (("left", False), ("right", True)):
            jittered = _jitter(rng, _mirror(shape) if mirror else shape)
            if "ventricle" in name:
                jittered = _Ellipsoid(
                    jittered.centre,
                    tuple(np.asarray(jittered.semi_axes) * ventricle_size),
                    jittered.tilt,
                    jittered.bend,
                )
            paint(jittered, f"{side} {name}")
    for name, shape in _UNPAIRED:
        paint(_jitter(rng, shape, 0.06, 0.5), name)

    # The skull ellipsoid leaves wide gaps under the brain; beyond a few millimetres of brain they are bone, not CSF.
    brain = (tissue > 0) & (tissue < _NUM_LABELS)
    near_brain = ndimage.binary_dilation(brain, iterations=max(1, round(5.0 / frame.mm_per_voxel.min())))
    tissue[(tissue == code["csf"]) & ~near_brain] = code["skull"]
    return tissue


def _intensities(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T1-like image of a tissue map: per-tissue Gaussian means with subject jitter and texture, partial-volume blur,
    a smooth multiplicative bias field and Rician-like noise.

    Args:
        tissue: uint8 tissue codes from :py:func:`_tissue_map`.
        rng: random generator of the subject.

    Returns:
        float32 image of the tissue map's shape.
    """
    kinds = [name.removeprefix("left ").removeprefix("right ") for name in _TISSUE_NAMES]
    # One jitter per tissue kind (shared by left and right), plus a global scanner gain.
    jitter = {kind: 1.0 + 0.04 * float(np.clip(rng.standard_normal(), -2.5, 2.5)) for kind in sorted(set(kinds))}
    gain = rng.uniform(0.85, 1.15)
    means = np.array([_T1_MEANS[kind] * jitter[kind] * gain for kind in kinds], dtype=np.float32)
    spread = 0.03 * means
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape, dtype=np.float32), 0.7)
    texture /= max(float(texture.std()), 1e-6)
    image = means[tissue] + spread[tissue] * texture
    image = ndimage.gaussian_filter(image, 0.6)  # partial volume at tissue borders
    image *= np.exp(0.08 * _smooth_noise(rng, tissue.shape, 3))
    sigma = 0.03 * 110.0 * gain
    noise = rng.standard_normal((2, *tissue.shape), dtype=np.float32) * sigma
    # Magnitude images: noise is Rician, so air is not zero-mean and dark tissue is slightly lifted.
    return np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2).astype(np.float32)


def generate_subject(index: int, shape: Sequence[int] = (64, 64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic subject.

    Args:
        index: subject number; with ``seed`` it fully determines the subject.
        shape: volume shape; the head fills the field of view whatever the shape.
        seed: dataset seed.

    Returns:
        ``(image, label)``: float32 T1-like image and uint8 label map (values index ``LABEL_NAMES``), both ``shape``.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {tuple(shape)}")
    rng = np.random.default_rng([int(seed), int(index)])
    frame = _Frame(shape, rng)
    tissue = _tissue_map(frame, rng)
    label = np.where(tissue < _NUM_LABELS, tissue, 0).astype(np.uint8)
    return _intensities(tissue, rng), label


def centred_affine(shape: Sequence[int], spacing: float) -> np.ndarray:
    """RAS affine of a volume with isotropic ``spacing`` whose centre is at the world origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1.0) / 2.0 * spacing
    return affine


def _save(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    """Write a NIfTI-1 volume whose qform and sform both hold ``affine`` (scanner space, millimetres)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def generate_dataset(
    output_dir: str,
    num_subjects: int = 20,
    shape: Sequence[int] = (64, 64, 64),
    spacing: float = 3.0,
    seed: int = 0,
    num_validation: int = 4,
    num_test: int = 4,
) -> str:
    """Generate the synthetic dataset into ``output_dir`` with a Decathlon-style ``datalist.json``.

    The volumes and the datalist are written into a temporary sibling folder that is renamed to ``output_dir`` when
    complete, so an interrupted generation never leaves a folder that looks like a dataset.

    Args:
        output_dir: folder to create; it must be missing or empty.
        num_subjects: number of subjects; the last ``num_test`` are the test split, the ``num_validation`` before
            them the validation split, the rest training.
        shape: volume shape.
        spacing: isotropic voxel size (mm) written in the affine.
        seed: dataset seed; the same seed gives byte-identical files.
        num_validation: number of validation subjects.
        num_test: number of test subjects.

    Returns:
        path of ``datalist.json``.

    Raises:
        ValueError: when the split leaves no training subject or ``output_dir`` is not empty.
    """
    num_training = num_subjects - num_validation - num_test
    if num_training < 1 or num_validation < 0 or num_test < 0:
        raise ValueError(
            f"num_subjects={num_subjects} leaves no training subject after {num_validation} validation and "
            f"{num_test} test subjects"
        )
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    output_dir = os.path.abspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise ValueError(f"output_dir '{output_dir}' is not empty; expected a new or empty folder for the dataset")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.partial-", dir=parent)
    try:
        os.makedirs(os.path.join(staging, "imagesTr"))
        os.makedirs(os.path.join(staging, "labelsTr"))
        width = max(3, len(str(num_subjects - 1)))
        names = [f"subject_{i:0{width}d}.nii.gz" for i in range(num_subjects)]
        affine = centred_affine(shape, spacing)

        def write(index: int) -> None:
            image, label = generate_subject(index, shape, seed)
            _save(image, affine, os.path.join(staging, "imagesTr", names[index]))
            _save(label, affine, os.path.join(staging, "labelsTr", names[index]))

        # numpy, scipy and zlib release the GIL for most of the work, so threads use both cores.
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            list(pool.map(write, range(num_subjects)))

        items = [{"image": f"imagesTr/{n}", "label": f"labelsTr/{n}"} for n in names]
        datalist = {
            "name": "synthetic_brain",
            "description": "Synthetic T1-weighted head volumes with 27 whole-brain structures (scripts.data.synthetic)",
            "tensorImageSize": "3D",
            "modality": {"0": "T1w (synthetic)"},
            "labels": {str(value): name for value, name in enumerate(LABEL_NAMES)},
            "seed": int(seed),
            "shape": [int(s) for s in shape],
            "spacing": float(spacing),
            "numTraining": num_training + num_validation,
            "numTest": num_test,
            "training": items[:num_training],
            "validation": items[num_training : num_training + num_validation],
            "test": items[num_training + num_validation :],
        }
        # datalist.json last: its presence marks a complete dataset.
        with open(os.path.join(staging, "datalist.json"), "w") as f:
            json.dump(datalist, f, indent=2)
        try:
            os.rename(staging, output_dir)  # atomic; replaces an empty folder
        except OSError:
            # Another process (e.g. another rank of a distributed run) finished the same dataset first.
            if not os.path.isfile(os.path.join(output_dir, "datalist.json")):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.path.join(output_dir, "datalist.json")


def ensure_default_dataset(dataset_dir: str, **kwargs) -> str:
    """Return the datalist of the default dataset in ``dataset_dir``, generating the dataset if the folder is missing
    or empty.

    Args:
        dataset_dir: folder of the generated dataset.
        kwargs: arguments of :py:func:`generate_dataset` (``num_subjects``, ``shape``, ``spacing``, ``seed``, ...).

    Returns:
        path of ``dataset_dir/datalist.json``.

    Raises:
        ValueError: when ``dataset_dir`` holds files but no ``datalist.json`` (e.g. an interrupted copy).
    """
    datalist = os.path.join(dataset_dir, "datalist.json")
    if os.path.isfile(datalist):
        with open(datalist) as f:
            recorded = json.load(f)
        wanted = {"seed": kwargs.get("seed"), "shape": kwargs.get("shape")}
        for key, value in wanted.items():
            if (
                value is not None
                and key in recorded
                and list(np.atleast_1d(value)) != list(np.atleast_1d(recorded[key]))
            ):
                warnings.warn(
                    f"dataset '{dataset_dir}' was generated with {key}={recorded[key]}, not {value}; using it as is "
                    "(delete the folder to regenerate)",
                    stacklevel=2,
                )
        return datalist
    if os.path.isdir(dataset_dir) and os.listdir(dataset_dir):
        raise ValueError(
            f"dataset_dir '{dataset_dir}' is not empty but has no datalist.json; expected a complete generated dataset "
            "(delete the folder to regenerate it)"
        )
    if os.path.exists(dataset_dir) and not os.path.isdir(dataset_dir):
        raise ValueError(f"dataset_dir '{dataset_dir}' is a file; expected a folder for the generated dataset")
    return generate_dataset(dataset_dir, **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: generate the dataset and print the datalist path and the time taken."""
    parser = argparse.ArgumentParser(
        description=__doc__.strip().split("\n\n")[0], prog="python -m scripts.data.synthetic"
    )
    parser.add_argument("--output_dir", required=True, help="new or empty folder for the dataset")
    parser.add_argument("--num_subjects", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, default=3.0, help="voxel size (mm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_validation", type=int, default=4)
    parser.add_argument("--num_test", type=int, default=4)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path = generate_dataset(
            args.output_dir,
            num_subjects=args.num_subjects,
            shape=args.shape,
            spacing=args.spacing,
            seed=args.seed,
            num_validation=args.num_validation,
            num_test=args.num_test,
        )
    except ValueError as e:
        parser.error(str(e))
    print(f"{path} ({args.num_subjects} subjects, {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
