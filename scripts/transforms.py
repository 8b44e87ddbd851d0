"""Images synthesised from label maps (SynthSeg-style, Billot et al. 2023), as MONAI dictionary transforms.

A label map with its original label values (e.g. FreeSurfer values, extra-cerebral tissues included) becomes an image:

1. every label value gets a mean drawn uniformly from its ``[low, high]`` range in ``tissue_means`` (values absent
   from the mapping use ``default_mean_range``) and a within-tissue standard deviation drawn from ``std_range``;
   the image is ``mean[label] + std[label] * N(0, 1)``; values grouped in ``tied_labels`` (e.g. left/right pairs)
   share their draws, as one tissue does in a real scan;
2. partial-volume blur: a Gaussian with ``sigma`` drawn from ``blur_sigma_range`` (voxels);
3. a multiplicative smooth bias field: ``exp`` of a coarse random grid (``bias_points`` per axis, std ``bias_std``)
   upsampled with cubic splines to the image size;
4. additive Gaussian noise with a std drawn from ``noise_std_range``, then clipping below at 0.

Every number of a contrast prior (the T1-like one included) comes in as an argument, so the configs declare it.
:class:`RandSynthesizeImaged` draws a new image at each call (training); :class:`SynthesizeImaged` draws the same image
for the same file in any order and any process (validation and test, cacheable by ``CacheDataset``).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar, Union

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type
from scipy import ndimage

__all__ = ["RandSynthesizeImaged", "SynthesizeImaged", "synthesize_image"]

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


def _checked_args(
    tissue_means: Mapping[Any, RangeLike] | None,
    std_range: RangeLike,
    bias_std: float,
    bias_points: int,
    blur_sigma_range: RangeLike,
    noise_std_range: RangeLike,
    default_mean_range: RangeLike,
    tied_labels: Sequence[Sequence[Any]] | None,
) -> dict[str, Any]:
    """The synthesis arguments, checked and normalised (int keys, float pairs); raises ``ValueError`` if invalid."""
    if not bias_std >= 0 or int(bias_points) < 1:
        raise ValueError(f"bias_std must be >= 0 and bias_points >= 1, got {bias_std} and {bias_points}.")
    return {
        "tissue_means": _as_tissue_means(tissue_means),
        "std_range": _as_range(std_range, "std_range", non_negative=True),
        "bias_std": float(bias_std),
        "bias_points": int(bias_points),
        "blur_sigma_range": _as_range(blur_sigma_range, "blur_sigma_range", non_negative=True),
        "noise_std_range": _as_range(noise_std_range, "noise_std_range", non_negative=True),
        "default_mean_range": _as_range(default_mean_range, "default_mean_range"),
        "tied_labels": _as_tied_labels(tied_labels),
    }


def synthesize_image(
    label: NdarrayOrTensor,
    rng: RandomGenerator,
    tissue_means: Mapping[Any, RangeLike] | None = None,
    std_range: RangeLike = (0.0, 0.0),
    bias_std: float = 0.0,
    bias_points: int = 4,
    blur_sigma_range: RangeLike = (0.0, 0.0),
    noise_std_range: RangeLike = (0.0, 0.0),
    default_mean_range: RangeLike = (0.0, 255.0),
    tied_labels: Sequence[Sequence[Any]] | None = None,
) -> np.ndarray:
    """Synthesise one image from a label map: per-label Gaussian intensities, blur, bias field and noise.

    Axes of size 1 (a leading channel, or a single slice) are neither blurred nor given bias-field variation, so the
    same call works for 2D and 3D maps with or without a leading channel of 1.

    Args:
        label: integer label map (original label values), shape ``(H, W)``, ``(H, W, D)``, ``(1, H, W)`` or
            ``(1, H, W, D)``; floats (e.g. after a nearest-neighbour resampling) are rounded to integers.
        rng: the source of randomness, a ``np.random.Generator`` or a ``np.random.RandomState`` (MONAI's ``self.R``).
        tissue_means: label value -> ``[low, high]`` range of its mean intensity (or one number, a fixed mean);
            keys may be ints or strings.
        std_range: ``[low, high]`` range of the within-tissue standard deviation, drawn per label value.
        bias_std: standard deviation of the log bias field on its coarse grid; 0 disables the bias field.
        bias_points: coarse grid points per axis of the bias field.
        blur_sigma_range: ``[low, high]`` range of the Gaussian blur sigma in voxels (one draw for all axes).
        noise_std_range: ``[low, high]`` range of the standard deviation of the additive Gaussian noise.
        default_mean_range: ``[low, high]`` range of the mean of label values absent from ``tissue_means``.
        tied_labels: groups of label values that share their random draws, e.g. left/right pairs ``[[2, 41], ...]``:
            one uniform quantile per group places every member's mean at the same relative position of its own
            range (same std likewise), so identical ranges give identical means. Ungrouped values draw alone.

    Returns:
        float32 array of the same shape as ``label``, non-negative.
    """
    args = _checked_args(
        tissue_means,
        std_range,
        bias_std,
        bias_points,
        blur_sigma_range,
        noise_std_range,
        default_mean_range,
        tied_labels,
    )
    means_by_label, default = args["tissue_means"], args["default_mean_range"]
    lab = convert_data_type(label, np.ndarray)[0]
    if not np.issubdtype(lab.dtype, np.integer):
        lab = np.rint(lab).astype(np.int64)
    shape = lab.shape

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

    noise_std = rng.uniform(*args["noise_std_range"])
    if noise_std > 0:
        image += np.float32(noise_std) * _standard_normal(rng, shape)
    # MR magnitudes are non-negative
    return np.maximum(image, 0.0, out=image)


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
        tissue_means: label value -> ``[low, high]`` range of its mean intensity; int or string keys.
        std_range: ``[low, high]`` range of the within-tissue standard deviation.
        bias_std: standard deviation of the log bias field on its coarse grid; 0 disables it.
        bias_points: coarse grid points per axis of the bias field.
        blur_sigma_range: ``[low, high]`` range of the partial-volume blur sigma, in voxels.
        noise_std_range: ``[low, high]`` range of the additive noise standard deviation.
        default_mean_range: ``[low, high]`` mean range of label values absent from ``tissue_means``.
        tied_labels: groups of label values sharing their random draws (e.g. left/right pairs), see
            :func:`synthesize_image`.
        prob: probability of synthesising; when skipped the data are returned unchanged, so ``prob < 1`` needs an
            image already under ``image_key`` (e.g. a real scan to mix with synthetic ones).
        allow_missing_keys: return the data unchanged when ``label_key`` is absent.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.NUMPY]

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        tissue_means: Mapping[Any, RangeLike] | None = None,
        std_range: RangeLike = (0.0, 0.0),
        bias_std: float = 0.0,
        bias_points: int = 4,
        blur_sigma_range: RangeLike = (0.0, 0.0),
        noise_std_range: RangeLike = (0.0, 0.0),
        default_mean_range: RangeLike = (0.0, 255.0),
        tied_labels: Sequence[Sequence[Any]] | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, label_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.image_key = image_key
        self.synthesize = _Synthesizer(
            tissue_means=tissue_means,
            std_range=std_range,
            bias_std=bias_std,
            bias_points=bias_points,
            blur_sigma_range=blur_sigma_range,
            noise_std_range=noise_std_range,
            default_mean_range=default_mean_range,
            tied_labels=tied_labels,
        )

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
        tissue_means: label value -> ``[low, high]`` range of its mean intensity; int or string keys.
        std_range: ``[low, high]`` range of the within-tissue standard deviation.
        bias_std: standard deviation of the log bias field on its coarse grid; 0 disables it.
        bias_points: coarse grid points per axis of the bias field.
        blur_sigma_range: ``[low, high]`` range of the partial-volume blur sigma, in voxels.
        noise_std_range: ``[low, high]`` range of the additive noise standard deviation.
        default_mean_range: ``[low, high]`` mean range of label values absent from ``tissue_means``.
        tied_labels: groups of label values sharing their random draws (e.g. left/right pairs), see
            :func:`synthesize_image`.
        seed: non-negative base seed; with the file name it seeds a fresh ``np.random.Generator`` per call.
        allow_missing_keys: return the data unchanged when ``label_key`` is absent.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.NUMPY]

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        tissue_means: Mapping[Any, RangeLike] | None = None,
        std_range: RangeLike = (0.0, 0.0),
        bias_std: float = 0.0,
        bias_points: int = 4,
        blur_sigma_range: RangeLike = (0.0, 0.0),
        noise_std_range: RangeLike = (0.0, 0.0),
        default_mean_range: RangeLike = (0.0, 255.0),
        tied_labels: Sequence[Sequence[Any]] | None = None,
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(label_key, allow_missing_keys)
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        self.label_key = label_key
        self.image_key = image_key
        self.seed = int(seed)
        self.synthesize = _Synthesizer(
            tissue_means=tissue_means,
            std_range=std_range,
            bias_std=bias_std,
            bias_points=bias_points,
            blur_sigma_range=blur_sigma_range,
            noise_std_range=noise_std_range,
            default_mean_range=default_mean_range,
            tied_labels=tied_labels,
        )

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
