"""Images synthesised from label maps (SynthSeg-style, Billot et al. 2023), as MONAI dictionary transforms.

A label map with its original label values (e.g. FreeSurfer values, extra-cerebral tissues included) becomes an image:

1. every label value gets a mean drawn uniformly from its ``[low, high]`` range in ``tissue_means`` (values absent
   from the mapping use ``default_mean_range``) and a within-tissue standard deviation drawn from ``std_range``;
   the image is ``mean[label] + std[label] * N(0, 1)``; values grouped in ``tied_labels`` (e.g. left/right pairs)
   share their draws, as one tissue does in a real scan;
2. partial-volume blur: a Gaussian with ``sigma`` drawn from ``blur_sigma_range`` (voxels);
3. a multiplicative smooth bias field: ``exp`` of a coarse random grid (``bias_points`` per axis, std ``bias_std``)
   upsampled with cubic splines to the image size;
4. a lower acquisition resolution (with probability ``resolution_prob``): along one random spatial axis, a blur of
   the slice thickness drawn from ``thickness_range`` (voxels), down-sampling to it and linear up-sampling back;
5. additive Gaussian noise with a std drawn from ``noise_std_range``, then clipping below at 0;
6. a random gamma: the image scaled to [0, 1] by its maximum is raised to ``exp(N(0, gamma_std))`` and scaled back.

Domain randomisation (SynthSeg): ``tissue_means_prob`` < 1 draws, for that share of the images, every label's mean
from ``random_mean_range`` instead of its prior, so the network sees contrasts of any kind; with probability
``strip_prob`` the ``strip_labels`` (extra-cerebral tissues) take the background's intensity, as in a skull-stripped
scan. :class:`RandFlipLeftRightd` mirrors a label map across the mid-sagittal plane and swaps its left and right
values, so that the flipped map stays anatomically labelled.

Every number of a contrast prior (the T1-like one included) comes in as an argument, so the configs declare it.
:class:`RandSynthesizeImaged` draws a new image at each call (training); :class:`SynthesizeImaged` draws the same image
for the same file in any order and any process (validation and test, cacheable by ``CacheDataset``).

:class:`Spacingd` is MONAI's resampling to a voxel size, made safe for MONAI Label's data (see its docstring).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar, Union

import monai.transforms
import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type
from scipy import ndimage

__all__ = ["RandFlipLeftRightd", "RandSynthesizeImaged", "Spacingd", "SynthesizeImaged", "synthesize_image"]

RandomGenerator = Union[np.random.Generator, np.random.RandomState]
RangeLike = Union[Sequence[float], float]

# Label values up to this bound are looked up in a dense table indexed by the value itself (one gather, no sort).
_MAX_DENSE_LABEL = 1 << 20


def _as_range(value: RangeLike, name: str, non_negative: bool = False) -> tuple[float, float]:
    """``[low, high]`` (or one number, meaning a fixed value) as a checked float pair."""
    pair = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    if pair.size == 1:
        pair = np.repeat(pair, 2)
    if pair.size != 2 or not np.all(np.isfinite(pair)) or pair[0] > pair[1]:
        raise ValueError(f"{name} must be a number or a [low, high] pair with low <= high, got {value!r}.")
    if non_negative and pair[0] < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}.")
    return float(pair[0]), float(pair[1])


def _as_tissue_means(tissue_means: Mapping[Any, RangeLike] | None) -> dict[int, tuple[float, float]]:
    """Label value -> mean range; keys may be ints or strings (YAML mapping keys are often read as strings)."""
    out: dict[int, tuple[float, float]] = {}
    for key, value in (tissue_means or {}).items():
        try:
            label = int(str(key).strip())
        except ValueError as e:
            raise ValueError(f"tissue_means keys must be integer label values, got {key!r}.") from e
        out[label] = _as_range(value, f"tissue_means[{key!r}]")
    return out


def _as_tied_labels(tied_labels: Sequence[Sequence[Any]] | None) -> dict[int, int]:
    """Label value -> index of its group in ``tied_labels``; a value may be in one group only."""
    group_of: dict[int, int] = {}
    for group_id, group in enumerate(tied_labels or ()):
        for value in np.atleast_1d(np.asarray(group, dtype=object)).ravel():
            label = int(str(value).strip())
            if label in group_of:
                raise ValueError(f"label value {label} is in more than one tied_labels group.")
            group_of[label] = group_id
    return group_of


def _standard_normal(rng: RandomGenerator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 N(0, 1) samples from a ``Generator`` (drawn in float32, fast) or a legacy ``RandomState``."""
    if isinstance(rng, np.random.Generator):
        return rng.standard_normal(shape, dtype=np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _interpolation_matrix(size: int, points: int) -> np.ndarray:
    """(size, points) matrix that upsamples ``points`` coarse values to ``size`` samples with cubic splines."""
    if points == 1:
        return np.ones((size, 1), dtype=np.float32)
    # zooming the identity gives the interpolation weights of each coarse point (grid_mode: the grids share edges)
    eye = np.eye(points, dtype=np.float64)
    return ndimage.zoom(eye, (size / points, 1), order=3, mode="nearest", grid_mode=True).astype(np.float32)


def _smooth_field(rng: RandomGenerator, shape: tuple[int, ...], points: int, std: float) -> np.ndarray:
    """Random coarse grid (``points`` per axis of size > 1, std ``std``) upsampled smoothly to ``shape`` (float32)."""
    coarse_shape = tuple(points if n > 1 else 1 for n in shape)
    field = (rng.standard_normal(coarse_shape) * std).astype(np.float32)
    # separable upsampling, one axis at a time: costs prod(shape) * points, far less than a spline zoom of the volume
    for axis, n in enumerate(shape):
        field = np.moveaxis(
            np.tensordot(field, _interpolation_matrix(n, coarse_shape[axis]), axes=([axis], [1])), -1, axis
        )
    return np.ascontiguousarray(field)


def _label_index(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted label values present in ``label`` and, per voxel, the index of its value in that list.

    Small non-negative values (the usual case) use a dense table and ``bincount``; others fall back to ``np.unique``.
    """
    if label.size and label.min() >= 0 and label.max() < _MAX_DENSE_LABEL:
        values = np.flatnonzero(np.bincount(label.ravel().astype(np.intp, copy=False)))
        table = np.zeros(int(values[-1]) + 1, dtype=np.int32)
        table[values] = np.arange(values.size, dtype=np.int32)
        return values, table[label]
    values, inverse = np.unique(label, return_inverse=True)
    return values, inverse.reshape(label.shape)


def _probability(value: float, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
    return float(value)


def _checked_args(
    tissue_means: Mapping[Any, RangeLike] | None = None,
    std_range: RangeLike = (0.0, 0.0),
    bias_std: float = 0.0,
    bias_points: int = 4,
    blur_sigma_range: RangeLike = (0.0, 0.0),
    noise_std_range: RangeLike = (0.0, 0.0),
    default_mean_range: RangeLike = (0.0, 255.0),
    tied_labels: Sequence[Sequence[Any]] | None = None,
    tissue_means_prob: float = 1.0,
    random_mean_range: RangeLike | None = None,
    strip_labels: Sequence[Any] | None = None,
    strip_prob: float = 0.0,
    resolution_prob: float = 0.0,
    thickness_range: RangeLike = (1.0, 1.0),
    gamma_std: float = 0.0,
) -> dict[str, Any]:
    """The synthesis arguments, checked and normalised (int keys, float pairs); raises ``ValueError`` if invalid."""
    if not bias_std >= 0 or int(bias_points) < 1:
        raise ValueError(f"bias_std must be >= 0 and bias_points >= 1, got {bias_std} and {bias_points}.")
    if not gamma_std >= 0:
        raise ValueError(f"gamma_std must be >= 0, got {gamma_std}.")
    thickness = _as_range(thickness_range, "thickness_range")
    if thickness[0] < 1.0:
        raise ValueError(f"thickness_range is in voxels, >= 1 (1: full resolution), got {thickness_range!r}.")
    return {
        "tissue_means": _as_tissue_means(tissue_means),
        "std_range": _as_range(std_range, "std_range", non_negative=True),
        "bias_std": float(bias_std),
        "bias_points": int(bias_points),
        "blur_sigma_range": _as_range(blur_sigma_range, "blur_sigma_range", non_negative=True),
        "noise_std_range": _as_range(noise_std_range, "noise_std_range", non_negative=True),
        "default_mean_range": _as_range(default_mean_range, "default_mean_range"),
        "tied_labels": _as_tied_labels(tied_labels),
        "tissue_means_prob": _probability(tissue_means_prob, "tissue_means_prob"),
        "random_mean_range": _as_range(
            default_mean_range if random_mean_range is None else random_mean_range, "random_mean_range"
        ),
        "strip_labels": tuple(sorted({int(str(v).strip()) for v in (strip_labels or ())})),
        "strip_prob": _probability(strip_prob, "strip_prob"),
        "resolution_prob": _probability(resolution_prob, "resolution_prob"),
        "thickness_range": thickness,
        "gamma_std": float(gamma_std),
    }


def _happens(rng: RandomGenerator, prob: float) -> bool:
    """A random event of probability ``prob``; no number is drawn when the outcome is certain (0 or 1)."""
    return prob >= 1.0 or (prob > 0.0 and rng.uniform() < prob)


def _lower_resolution(image: np.ndarray, axis: int, thickness: float) -> np.ndarray:
    """``image`` as acquired with slices ``thickness`` voxels thick along ``axis``, on its own grid again: a Gaussian
    slice profile (FWHM = thickness), down-sampling to the thick grid and linear up-sampling back."""
    sigma = [0.0] * image.ndim
    sigma[axis] = thickness / 2.355
    blurred = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")
    n = image.shape[axis]
    coarse = max(2, round(n / thickness))
    # sample the blurred profile at the thick slices' centres, then interpolate linearly back to the n voxels
    centres = (np.arange(coarse) + 0.5) * n / coarse - 0.5
    low = np.take(blurred, np.clip(np.rint(centres).astype(np.intp), 0, n - 1), axis=axis)
    weights = np.interp(np.arange(n), centres, np.arange(coarse))
    lower = np.clip(np.floor(weights).astype(np.intp), 0, coarse - 2)
    frac = (weights - lower).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    return np.take(low, lower, axis=axis) * (1 - frac) + np.take(low, lower + 1, axis=axis) * frac


def synthesize_image(label: NdarrayOrTensor, rng: RandomGenerator, tissue_means=None, **kwargs: Any) -> np.ndarray:
    """Synthesise one image from a label map: per-label Gaussian intensities, blur, bias field, a lower resolution,
    noise and gamma, each drawn at random (module docstring).

    Axes of size 1 (a leading channel, or a single slice) are neither blurred, nor given bias-field variation, nor a
    lower resolution, so the same call works for 2D and 3D maps with or without a leading channel of 1.

    Args:
        label: integer label map (original label values), shape ``(H, W)``, ``(H, W, D)``, ``(1, H, W)`` or
            ``(1, H, W, D)``; floats (e.g. after a nearest-neighbour resampling) are rounded to integers.
        rng: the source of randomness, a ``np.random.Generator`` or a ``np.random.RandomState`` (MONAI's ``self.R``).
        tissue_means: label value -> ``[low, high]`` range of its mean intensity (or one number, a fixed mean);
            keys may be ints or strings.
        kwargs: the other synthesis parameters, all off by default:

            - ``std_range``: ``[low, high]`` range of the within-tissue standard deviation, drawn per label value;
            - ``bias_std``, ``bias_points``: std of the log bias field on its coarse grid of ``bias_points`` per axis
              (0: no bias field);
            - ``blur_sigma_range``: range of the partial-volume Gaussian blur sigma, voxels (one draw for all axes);
            - ``noise_std_range``: range of the standard deviation of the additive Gaussian noise;
            - ``default_mean_range``: range of the mean of label values absent from ``tissue_means`` (default
              ``[0, 255]``);
            - ``tied_labels``: groups of label values that share their random draws, e.g. left/right pairs
              ``[[2, 41], ...]``: one uniform quantile per group places every member's mean at the same relative
              position of its own range (same std likewise). Ungrouped values draw alone;
            - ``tissue_means_prob``: probability that ``tissue_means`` is used for an image (default 1); otherwise
              every value draws its mean from ``random_mean_range`` (default: ``default_mean_range``), SynthSeg's
              random contrast;
            - ``strip_labels``, ``strip_prob``: with probability ``strip_prob``, these values take the intensity of
              label 0 (background), as in a skull-stripped scan;
            - ``resolution_prob``, ``thickness_range``: with probability ``resolution_prob``, one random spatial axis
              is acquired with a slice thickness drawn from ``thickness_range`` (voxels, >= 1);
            - ``gamma_std``: std of the log of the gamma exponent (0: no gamma).

    Returns:
        float32 array of the same shape as ``label``, non-negative.
    """
    args = _checked_args(tissue_means, **kwargs)
    lab = convert_data_type(label, np.ndarray)[0]
    if not np.issubdtype(lab.dtype, np.integer):
        lab = np.rint(lab).astype(np.int64)
    shape = lab.shape
    spatial_axes = [a for a, n in enumerate(shape) if n > 1]

    # SynthSeg's random contrast for a share of the images; random skull stripping
    # (a probability of 0 or 1 draws nothing, so images synthesised without these options stay as they were)
    if _happens(rng, args["tissue_means_prob"]):
        means_by_label, default = args["tissue_means"], args["default_mean_range"]
    else:
        means_by_label, default = {}, args["random_mean_range"]
    if args["strip_labels"] and _happens(rng, args["strip_prob"]):
        lab = np.where(np.isin(lab, args["strip_labels"]), 0, lab)

    # one mean and one std per label value present (or per tied group), drawn in sorted value order so that a seed
    # fixes the image; tied values share a quantile, so a hemisphere never gets a contrast of its own
    values, index = _label_index(lab)
    draw_keys = [
        ("group", args["tied_labels"][int(v)]) if int(v) in args["tied_labels"] else ("value", int(v)) for v in values
    ]
    draw_of_key = {key: i for i, key in enumerate(dict.fromkeys(draw_keys))}
    draw = np.array([draw_of_key[key] for key in draw_keys], dtype=np.intp)
    bounds = np.array([means_by_label.get(int(v), default) for v in values], dtype=float).reshape(-1, 2)
    mean_quantiles = rng.uniform(0.0, 1.0, size=len(draw_of_key))[draw]
    std_quantiles = rng.uniform(0.0, 1.0, size=len(draw_of_key))[draw]
    std_lo, std_hi = args["std_range"]
    means = (bounds[:, 0] + mean_quantiles * (bounds[:, 1] - bounds[:, 0])).astype(np.float32)
    stds = (std_lo + std_quantiles * (std_hi - std_lo)).astype(np.float32)
    image = means[index]
    if std_hi > 0:
        image += stds[index] * _standard_normal(rng, shape)

    sigma = rng.uniform(*args["blur_sigma_range"])
    if sigma > 0:
        # partial volume: blur along the spatial axes only (a channel or single-slice axis has size 1)
        image = ndimage.gaussian_filter(image, sigma=[sigma if n > 1 else 0.0 for n in shape], mode="nearest")

    if args["bias_std"] > 0:
        image *= np.exp(_smooth_field(rng, shape, args["bias_points"], args["bias_std"]))

    if spatial_axes and _happens(rng, args["resolution_prob"]):
        axis = spatial_axes[min(int(rng.uniform() * len(spatial_axes)), len(spatial_axes) - 1)]
        thickness = rng.uniform(*args["thickness_range"])
        if thickness > 1.0:
            image = _lower_resolution(image, axis, thickness).astype(np.float32, copy=False)

    noise_std = rng.uniform(*args["noise_std_range"])
    if noise_std > 0:
        image += np.float32(noise_std) * _standard_normal(rng, shape)
    # MR magnitudes are non-negative
    image = np.maximum(image, 0.0, out=image)

    if args["gamma_std"] > 0:
        top = float(image.max())
        if top > 0:
            gamma = np.float32(np.exp(rng.normal(0.0, args["gamma_std"])))
            image = np.power(image / top, gamma, dtype=np.float32) * np.float32(top)
    return image


class _Synthesizer:
    """:func:`synthesize_image` with its arguments checked once; returns the label's type (MetaTensor meta kept)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = _checked_args(**kwargs)

    def __call__(self, label: NdarrayOrTensor, rng: RandomGenerator) -> NdarrayOrTensor:
        image = synthesize_image(label, rng, **self.kwargs)
        # a MetaTensor label passes on a copy of its meta dictionary, affine and applied operations
        return convert_to_dst_type(image, dst=label, dtype=torch.float32)[0]


class RandSynthesizeImaged(MapTransform, RandomizableTransform):
    """Write a new random image synthesised from the label map at every call (training).

    The image is channel-first like the label and, for a MetaTensor label, carries a copy of its meta dictionary,
    affine and applied operations, so later spatial transforms, inversion and saving treat it as the label's twin.
    With every corruption at its default (off) and no ``tissue_means``, each label gets a random mean from
    ``default_mean_range``: SynthSeg's fully random contrast.

    Args:
        label_key: key of the label map (original label values), shape ``(1, H, W[, D])`` or without the channel.
        image_key: key the image is written to; same shape as the label, float32.
        prob: probability of synthesising; when skipped the data are returned unchanged, so ``prob < 1`` needs an
            image already under ``image_key`` (e.g. a real scan to mix with synthetic ones).
        allow_missing_keys: return the data unchanged when ``label_key`` is absent.
        synthesis: the parameters of :func:`synthesize_image` (``tissue_means``, ``std_range``, ``bias_std``,
            ``bias_points``, ``blur_sigma_range``, ``noise_std_range``, ``default_mean_range``, ``tied_labels``,
            ``tissue_means_prob``, ``random_mean_range``, ``strip_labels``, ``strip_prob``, ``resolution_prob``,
            ``thickness_range``, ``gamma_std``), checked here.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.NUMPY]

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
        **synthesis: Any,
    ) -> None:
        MapTransform.__init__(self, label_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.image_key = image_key
        self.synthesize = _Synthesizer(**synthesis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"key '{self.label_key}' (label_key) is not in the data.")
        self.randomize(None)
        if not self._do_transform:
            if self.image_key not in d:
                raise KeyError(f"synthesis skipped (prob={self.prob}) and there is no '{self.image_key}' to keep.")
            return d
        d[self.image_key] = self.synthesize(d[self.label_key], self.R)
        return d


class SynthesizeImaged(MapTransform):
    """Write the image synthesised from the label map with a seed fixed by ``seed`` and the label's file name.

    Not ``Randomizable``, so ``CacheDataset`` caches it, and the same file gives the same image in any order and any
    process (evaluation repeats exactly). The file name is the basename of the label's ``filename_or_obj`` meta (files
    with the same basename in different folders get the same image, so moving the data does not change results); a
    label without one is identified by a checksum of its values instead.

    Args:
        label_key: key of the label map (original label values), shape ``(1, H, W[, D])`` or without the channel.
        image_key: key the image is written to; same shape as the label, float32, with the label's meta and affine.
        seed: non-negative base seed; with the file name it seeds a fresh ``np.random.Generator`` per call.
        allow_missing_keys: return the data unchanged when ``label_key`` is absent.
        synthesis: the parameters of :func:`synthesize_image`, as for :class:`RandSynthesizeImaged`.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.NUMPY]

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        seed: int = 0,
        allow_missing_keys: bool = False,
        **synthesis: Any,
    ) -> None:
        super().__init__(label_key, allow_missing_keys)
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        self.label_key = label_key
        self.image_key = image_key
        self.seed = int(seed)
        self.synthesize = _Synthesizer(**synthesis)

    def file_key(self, label: NdarrayOrTensor) -> int:
        """Stable 32-bit identity of ``label``: crc32 of its file's basename, else of its values."""
        name = label.meta.get("filename_or_obj") if isinstance(label, MetaTensor) else None
        if isinstance(name, (str, os.PathLike)) and str(name):
            return zlib.crc32(os.path.basename(os.fspath(name)).encode("utf-8"))
        values = np.ascontiguousarray(convert_data_type(label, np.ndarray)[0])
        return zlib.crc32(values.tobytes())

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"key '{self.label_key}' (label_key) is not in the data.")
        label = d[self.label_key]
        # a fresh generator per call: the image depends on (seed, file) only, never on what ran before
        rng = np.random.default_rng([self.seed, self.file_key(label)])
        d[self.image_key] = self.synthesize(label, rng)
        return d


class RandFlipLeftRightd(MapTransform, RandomizableTransform):
    """Mirror a label map (and its image, when present) across the mid-sagittal plane and swap its left and right
    label values, so that a left structure flipped to the right is labelled as the right one.

    Args:
        keys: the label key first, then any image keys flipped with it (missing ones skipped when allowed).
        spatial_axis: the spatial axis (after the channel) that runs left to right; ``None`` flips nothing (slices
            without a left-right axis, e.g. sagittal ones).
        pairs: ``[left, right]`` label values to swap, e.g. FreeSurfer's ``[[2, 41], [3, 42], ...]``.
        prob: probability of flipping.
        allow_missing_keys: skip keys absent from the data.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: Sequence[str] | str,
        spatial_axis: int | None,
        pairs: Sequence[Sequence[Any]],
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.spatial_axis = None if spatial_axis is None else int(spatial_axis)
        swap: dict[int, int] = {}
        for pair in pairs:
            left, right = (int(str(v).strip()) for v in pair)
            if left in swap or right in swap or left == right:
                raise ValueError(f"pairs must name each label value once, got {pair!r} after {sorted(swap)}.")
            swap[left], swap[right] = right, left
        self.swap = swap

    def _swap_values(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        lab = convert_data_type(label, np.ndarray)[0]
        values = np.rint(lab).astype(np.int64) if not np.issubdtype(lab.dtype, np.integer) else lab
        out = values.copy()
        for source, target in self.swap.items():
            out[values == source] = target
        return convert_to_dst_type(out, dst=label, dtype=label.dtype)[0]

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform or self.spatial_axis is None:
            return d
        for key in self.key_iterator(d):
            axis = self.spatial_axis + 1  # after the channel
            flipped = torch.flip(d[key], dims=(axis,)) if isinstance(d[key], torch.Tensor) else np.flip(d[key], axis)
            d[key] = self._swap_values(flipped) if key == self.keys[0] else flipped
        return d


class Spacingd(monai.transforms.Spacingd):
    """MONAI's ``Spacingd``, safe beside entries that start with a key's name but are not metadata dicts.

    After resampling a NIfTI image, MONAI's ``Spacingd`` calls ``.update`` on every ``<key>_*`` entry of the data, as
    if each were a metadata dict; MONAI Label puts the image's path in ``image_path`` (a string), so its ``/infer/``
    failed with ``AttributeError: 'str' object has no attribute 'update'``. Such entries are held aside during the
    resampling and put back unchanged; everything else, inversion included, is MONAI's.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        held = {
            k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)
        }
        out = super().__call__(d, lazy=lazy)
        out.update(held)
        return out
