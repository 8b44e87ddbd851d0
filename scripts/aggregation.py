"""Class probabilities combined and carried to the input's grid.

Several views (QuickNAT, FastSurfer): :class:`MultiViewInferer` runs 2D networks trained on sagittal, coronal and
axial slices over the same volume and averages their class probabilities (weighted), which smooths each view's
errors across the slices it never sees together. A sagittal slice cannot tell left from right, so a view without a
left-right axis gives each left/right pair its mean probability and leaves the side to the other views.
Test-time mirroring (``mirror``, as nnU-Net): each view also segments the volume mirrored left to right, and those
probabilities, mirrored back with the left and right classes swapped, are averaged with the unmirrored ones.

To the input's grid: a model working on coarser voxels than the scan (the shipped
brain model: 2 mm) gives smooth boundaries on the scan's own 1 mm grid when its class probabilities are interpolated
linearly back and only then turned into labels; a label volume resampled with nearest neighbours is blocky.

:class:`InvertProbabilitiesd` does that without ever holding all the classes' probabilities on the scan's grid
(28 classes of a 256^3 scan would be 1.9 GB). The preprocessing (orientation, spacing, crop) maps the scan's voxel
grid onto the network's by a scaling, shift and permutation of the axes (MONAI's ``Spacing`` keeps the scan's
directions), so trilinear interpolation separates into three 1D interpolations along the axes
(:func:`axis_aligned_resample`: the same values as MONAI's ``Invertd``, which samples every voxel with a general 3D
``grid_sample``, in a third of the time). Its argmax needs even less (:func:`axis_aligned_argmax`): an interpolated
voxel whose neighbours all have the same label has that label, so only the boundaries are interpolated. Any other
grid relation goes through ``Invertd``, a few channels at a time with a running maximum.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer
from monai.transforms import Invertd, InvertibleTransform, MapTransform
from torch import nn

from .checkpoint import check_checkpoint, network_state
from .errors import InputError

__all__ = [
    "InvertProbabilitiesd",
    "MultiViewInferer",
    "axis_aligned_argmax",
    "axis_aligned_map",
    "axis_aligned_resample",
    "left_right_axis",
]

LEFT_RIGHT_AXIS = 0  # of RAS volumes: slices along it (sagittal) have no left-right axis


def left_right_axis(axcodes: str) -> int:
    """The spatial axis that runs between left and right in volumes oriented to ``axcodes`` (0 for RAS or LPS).

    Raises:
        InputError: where ``axcodes`` names neither L nor R (no such axis: mirroring and left/right pairs need one).
    """
    codes = str(axcodes).upper()
    for index, code in enumerate(codes):
        if code in "LR":
            return index
    raise InputError(f"--axcodes {axcodes!r} has no L or R axis; expected one (e.g. RAS) to tell left from right")


_AXIS_TOL = 1e-6  # off-axis terms of the index map below this count as zero


def axis_aligned_map(src_affine: torch.Tensor, dst_affine: torch.Tensor) -> tuple[list[int], list[float], list[float]]:
    """How the voxel indices of a destination grid map onto a source grid, when each destination axis lands on one
    source axis: ``source index along axes[a] = scales[a] * destination index along a + shifts[a]``.

    Args:
        src_affine: ``(4, 4)`` voxel-to-world affine of the grid the values are on (the network's).
        dst_affine: ``(4, 4)`` voxel-to-world affine of the grid wanted (the scan's).

    Returns:
        ``(axes, scales, shifts)``, one entry per destination axis.

    Raises:
        ValueError: when the index map mixes axes (an oblique relation): no separable resampling exists.
    """
    index_map = torch.linalg.solve(torch.as_tensor(src_affine, dtype=torch.float64)[:4, :4],
                                   torch.as_tensor(dst_affine, dtype=torch.float64)[:4, :4])  # fmt: skip
    linear = index_map[:3, :3]
    on_axis = linear.abs() > _AXIS_TOL * linear.abs().max()
    if not (on_axis.sum(0) == 1).all() or not (on_axis.sum(1) == 1).all():
        raise ValueError(f"the grids are not axis-aligned: index map {linear.tolist()}")
    axes = [int(torch.nonzero(on_axis[:, a])[0]) for a in range(3)]
    scales = [float(linear[axes[a], a]) for a in range(3)]
    shifts = [float(index_map[axes[a], 3]) for a in range(3)]
    return axes, scales, shifts


def _linear_weights(size: int, n: int, scale: float, shift: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The two source voxels and their weights for each of ``size`` destination positions ``scale * i + shift`` on a
    source axis of ``n`` voxels: ``[(low index, weight), (high index, weight)]``, float64 weights on the CPU; a
    neighbour outside the source has weight 0 (zero outside, as ``grid_sample`` with zeros padding)."""
    position = torch.arange(size, dtype=torch.float64) * scale + shift
    # the affines' rounding puts grid points a hair off the source's voxels (-1 + 1e-16: a weight of 1e-16 on
    # voxel 0 that grid_sample's float32 does not see); snap them
    position = torch.where((position - position.round()).abs() < _AXIS_TOL, position.round(), position)
    low = torch.floor(position)
    frac = position - low
    low = low.long()
    weights = []
    for index, weight in ((low, 1.0 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < n)
        weights.append((index.clamp(0, n - 1), weight * inside))
    return weights


def axis_aligned_resample(
    values: torch.Tensor, axes: Sequence[int], scales: Sequence[float], shifts: Sequence[float], shape: Sequence[int]
) -> torch.Tensor:
    """Trilinear resampling of ``values`` ``(C, *source)`` onto a grid of ``shape`` related to it by
    :func:`axis_aligned_map`: one 1D linear interpolation per axis, zero outside the source (as ``grid_sample``
    with zeros padding, which MONAI's ``Invertd`` uses).

    Returns:
        ``(C, *shape)`` on the destination grid, ``values``' dtype.
    """
    out = values
    for a in sorted(range(3), key=lambda a: axes[a]):
        dim = 1 + axes[a]
        n = out.shape[dim]
        view = [1] * out.ndim
        view[dim] = -1
        # positions are worked out on the CPU (a few hundred values); the interpolation runs where the values are
        (i0, w0), (i1, w1) = [
            (index.to(out.device), weight.to(out.device, out.dtype).view(view))
            for index, weight in _linear_weights(shape[a], n, scales[a], shifts[a])
        ]
        if dim < out.ndim - 1:
            out = torch.addcmul(out.index_select(dim, i0) * w0, out.index_select(dim, i1), w1)
        else:  # gathering along the innermost axis is 15x slower than a product with the (shape x n) weights
            matrix = torch.zeros(shape[a], n, dtype=out.dtype, device=out.device)
            rows = torch.arange(shape[a], device=out.device)
            matrix.index_put_((rows, i0), w0.flatten(), accumulate=True)
            matrix.index_put_((rows, i1), w1.flatten(), accumulate=True)
            out = out @ matrix.T
    # source axis axes[a] now holds destination axis a
    return out.permute(0, *[1 + axes[a] for a in range(3)])


def axis_aligned_argmax(
    probabilities: torch.Tensor,
    axes: Sequence[int],
    scales: Sequence[float],
    shifts: Sequence[float],
    shape: Sequence[int],
    chunk_voxels: int = 2**20,
) -> torch.Tensor:
    """The argmax over classes of :func:`axis_aligned_resample`, interpolating the classes only where it can differ
    from the source's labels.

    A destination voxel is a weighted sum (non-negative weights) of its 8 source neighbours; where every neighbour of
    non-zero weight has the same argmax, so does the sum. Only the voxels among neighbours of different labels (the
    boundaries between structures) are interpolated, every class at once, in chunks of ``chunk_voxels``; the others
    take their neighbours' label. A voxel with no neighbour inside the source is background (0).

    Args:
        probabilities: ``(C, *source)`` class scores (non-negative for the argument above: probabilities).
        axes, scales, shifts: the index map of :func:`axis_aligned_map`.
        shape: the destination's spatial shape.
        chunk_voxels: boundary voxels interpolated at once (memory: about ``2 * C`` floats each).

    Returns:
        ``(1, *shape)`` int64 labels on the destination grid, where ``probabilities`` are.
    """
    device = probabilities.device
    corners, outside = [], []
    for a in range(3):
        (i0, w0), (i1, w1) = _linear_weights(shape[a], probabilities.shape[1 + axes[a]], scales[a], shifts[a])
        outside.append((w0 == 0) & (w1 == 0))
        # a neighbour of weight 0 takes the other's index, so that it cannot disagree
        i0, i1 = torch.where(w0 > 0, i0, i1), torch.where(w1 > 0, i1, i0)
        corners.append([(i.to(device), w.to(device)) for i, w in ((i0, w0), (i1, w1))])
    # the source's labels (the first of equal maxima, as argmax) with its axes in the destination's order, as a
    # running maximum over the classes: a reduction across the class axis is several times slower
    best = probabilities[0].clone()
    source = torch.zeros(best.shape, dtype=torch.uint8 if probabilities.shape[0] <= 256 else torch.long, device=device)
    for c in range(1, probabilities.shape[0]):
        better = probabilities[c] > best
        source.masked_fill_(better, c)
        best = torch.maximum(best, probabilities[c], out=best)
    del best
    source = source.permute(*axes).contiguous()

    def gather(volume: torch.Tensor, corner: tuple[int, int, int]) -> torch.Tensor:
        # the innermost axis first, on the smallest volume: gathers along outer axes copy whole rows
        for a in (2, 1, 0):
            volume = volume.index_select(a, corners[a][corner[a]][0])
        return volume

    all_corners = [(cx, cy, cz) for cx in (0, 1) for cy in (0, 1) for cz in (0, 1)]
    labels = gather(source, all_corners[0])
    boundary = torch.zeros(labels.shape, dtype=torch.bool, device=device)
    for corner in all_corners[1:]:
        boundary |= gather(source, corner) != labels
    labels = labels.long()
    out_of_source = outside[0].to(device)[:, None, None] | outside[1].to(device)[None, :, None]
    out_of_source = out_of_source | outside[2].to(device)[None, None, :]
    labels[out_of_source] = 0
    boundary &= ~out_of_source
    # boundary voxels: every class interpolated, gathered from the (classes, voxels) view of the source
    table = probabilities.reshape(probabilities.shape[0], -1)
    source_strides = [math.prod(probabilities.shape[2 + k :]) for k in range(3)]
    strides = [source_strides[axes[a]] for a in range(3)]
    points = boundary.nonzero()
    flat_labels = labels.view(-1)
    for start in range(0, points.shape[0], chunk_voxels):
        chunk = points[start : start + chunk_voxels]
        total = None
        for corner in all_corners:
            row = torch.zeros(chunk.shape[0], dtype=torch.long, device=device)
            weight = torch.ones(chunk.shape[0], dtype=torch.float64, device=device)
            for a, c in enumerate(corner):
                index, w = corners[a][c]
                row += index[chunk[:, a]] * strides[a]
                weight *= w[chunk[:, a]]
            term = table.index_select(1, row).float() * weight.float()
            total = term if total is None else total.add_(term)
        flat = (chunk[:, 0] * shape[1] + chunk[:, 1]) * shape[2] + chunk[:, 2]
        flat_labels[flat] = total.argmax(0)
    return labels[None]


class InvertProbabilitiesd(MapTransform):
    """Class probabilities on the network's grid -> labels on the input's grid, by linear interpolation of the
    probabilities (``Invertd`` without nearest-neighbour interpolation) and an argmax: on an axis-aligned grid
    relation :func:`axis_aligned_argmax` (all classes interpolated at the boundaries only), otherwise ``Invertd``
    ``chunk_size`` channels at a time with a running maximum.

    Voxels outside what the network saw (a foreground crop padded back) get probability 0 for every class, so label 0.

    Args:
        keys: the probabilities, shape ``(C, H, W, D)`` on the preprocessed grid (e.g. after a softmax).
        transform: the preprocessing to undo (the ``Compose`` applied to ``orig_keys``).
        orig_keys: the preprocessed image whose applied operations are undone.
        chunk_size: channels ``Invertd`` interpolates at once (memory: ``chunk_size`` float32 volumes of the input's
            size), for grids that are not axis-aligned.
        allow_missing_keys: skip missing keys.

    Returns:
        ``keys`` replaced by labels, shape ``(1, ...)`` of the input's grid, int64 MetaTensor with its affine.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        transform: InvertibleTransform,
        orig_keys: Sequence[Hashable] | Hashable = "image",
        chunk_size: int = 4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.chunk_size = int(chunk_size)
        self.orig_key = orig_keys if isinstance(orig_keys, str) else next(iter(orig_keys))
        self.inverter = Invertd(
            keys=keys, transform=transform, orig_keys=orig_keys, nearest_interp=False, allow_missing_keys=True
        )

    def _separable(self, d: Mapping[Hashable, Any]) -> tuple[list[int], list[float], list[float], list[int]] | None:
        """The axis-aligned map from the scan's grid onto the network's, and the scan's shape; None if there is none."""
        image = d.get(self.orig_key)
        if not isinstance(image, MetaTensor) or image.ndim != 4:
            return None
        if image.meta.get("original_affine") is None or image.meta.get("spatial_shape") is None:
            return None
        meta = image.meta
        try:
            axes, scales, shifts = axis_aligned_map(image.affine, meta["original_affine"])
        except ValueError:
            return None
        return axes, scales, shifts, [int(n) for n in meta["spatial_shape"]]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        separable = self._separable(d)
        for key in self.key_iterator(d):
            probabilities = d[key]
            if separable is not None:
                values = probabilities.as_tensor() if isinstance(probabilities, MetaTensor) else probabilities
                labels = axis_aligned_argmax(torch.as_tensor(values), *separable)
                # the scan's own grid: its affine, and the image's meta (file name, original affine) for the writer
                image = d[self.orig_key]
                meta = {k: v for k, v in image.meta.items() if k != "affine"}
                d[key] = MetaTensor(labels, affine=torch.as_tensor(meta["original_affine"]), meta=meta)
                continue
            best = labels = inverted = None
            for start in range(0, probabilities.shape[0], self.chunk_size):
                # Invertd takes the image's applied operations for a MetaTensor (the inferer's output may be plain)
                part = {**d, key: MetaTensor(probabilities[start : start + self.chunk_size])}
                inverted = self.inverter(part)[key]
                value, index = torch.as_tensor(inverted).max(dim=0, keepdim=True)
                if best is None:
                    best, labels = value, index
                else:
                    better = value > best
                    best = torch.where(better, value, best)
                    labels = torch.where(better, index + start, labels)
                del value, index
            d[key] = MetaTensor(labels, meta=inverted.meta)  # the meta holds the input grid's affine
        return d


class MultiViewInferer(Inferer):
    """Weighted mean of the class probabilities of 2D networks run slice by slice along several axes of a volume.

    The network handed in by the evaluator is the ``slice_axis`` view; every other view is a copy of ``network_def``
    with its own checkpoint, run through the same ``wrap`` (precision, channels-last) as the main one.

    Args:
        slice_axis: the spatial axis the evaluator's network slices along.
        views: ``{axis: checkpoint file}`` of the other views (their networks are ``network_def``'s architecture).
        network_def: the network template (its weights are not used).
        weights: ``{axis: weight}`` of every view, normalised to sum 1 (``None``: equal weights).
        left_right_pairs: class index pairs ``[left, right]``; a view along ``left_right_axis`` (sagittal) gives
            both of a pair their mean probability.
        sw_batch_size: slices per forward pass.
        wrap: callable turning a network into the module to run (e.g. :class:`scripts.inference.FastInference`
            settings); ``None`` runs it as it is.
        mirror: also segment the volume mirrored along ``left_right_axis`` and average (twice the network time
            for every view but a sagittal one, which sees the same slices mirrored and gains nothing). For anatomy
            that is left-right symmetric up to the ``left_right_pairs`` (the brain), not for an abdomen.
        left_right_axis: the spatial axis between left and right (:func:`left_right_axis` of the axcodes).

    Returns (``__call__``):
        the log of the mean probabilities, ``(N, classes, H, W, D)`` float32: a softmax or an argmax of it gives the
        mean probabilities or their labels, as for one network's logits.
    """

    def __init__(
        self,
        slice_axis: int,
        views: Mapping[Any, str],
        network_def: nn.Module,
        weights: Mapping[Any, float] | None = None,
        left_right_pairs: Sequence[Sequence[int]] = (),
        sw_batch_size: int = 16,
        wrap=None,
        mirror: bool = False,
        left_right_axis: int = LEFT_RIGHT_AXIS,
    ) -> None:
        super().__init__()
        self.slice_axis = int(slice_axis)
        self.left_right_axis = int(left_right_axis)
        self.views: dict[int, nn.Module] = {}
        for axis, path in (views or {}).items():
            axis = int(axis)
            if axis not in (0, 1, 2) or axis == self.slice_axis:
                raise ValueError(f"view axis {axis} must be 0, 1 or 2 and differ from slice_axis {self.slice_axis}.")
            try:
                check_checkpoint(path, network_def)
            except InputError as e:
                raise InputError(f"--views {axis}: {e}") from None
            network = copy.deepcopy(network_def)
            network.load_state_dict(network_state(path))
            network.eval()
            self.views[axis] = wrap(network) if wrap is not None else network
        axes = [self.slice_axis, *self.views]
        raw = {int(k): float(v) for k, v in (weights or {}).items()}
        missing = [a for a in axes if a not in raw] if raw else []
        if missing or any(w < 0 for w in raw.values()):
            raise ValueError(f"view_weights must give every view ({axes}) a weight >= 0, got {weights!r}.")
        total = sum(raw[a] for a in axes) if raw else float(len(axes))
        if total <= 0:
            raise ValueError(f"view_weights must not all be 0, got {weights!r}.")
        self.weights = {a: (raw[a] if raw else 1.0) / total for a in axes}
        self.pairs = [(int(left), int(right)) for left, right in left_right_pairs]
        self.sw_batch_size = int(sw_batch_size)
        self.mirror = bool(mirror)

    def _swap_sides(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The probabilities with every ``[left, right]`` pair of classes exchanged (a new tensor)."""
        order = list(range(probabilities.shape[1]))
        for left, right in self.pairs:
            order[left], order[right] = right, left
        return probabilities[:, order]

    def _probabilities(self, inputs: torch.Tensor, network, axis: int) -> torch.Tensor:
        inferer = SliceInferer(spatial_dim=axis, roi_size=(-1, -1), sw_batch_size=self.sw_batch_size, progress=False)
        probabilities = torch.softmax(torch.as_tensor(inferer(inputs, network)).float(), dim=1)
        if self.mirror and axis != self.left_right_axis:
            side = 2 + self.left_right_axis  # (N, C, *spatial)
            mirrored = torch.as_tensor(inferer(torch.flip(inputs, dims=(side,)), network)).float()
            mirrored = self._swap_sides(torch.softmax(mirrored, dim=1).flip(side))
            probabilities = probabilities.add_(mirrored).mul_(0.5)
            del mirrored
        if axis == self.left_right_axis and self.pairs:
            for left, right in self.pairs:
                mean = (probabilities[:, left] + probabilities[:, right]) / 2
                probabilities[:, left], probabilities[:, right] = mean, mean
        return probabilities

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = self._probabilities(inputs, network, self.slice_axis) * self.weights[self.slice_axis]
        for axis, view in self.views.items():
            total += self._probabilities(inputs, view, axis) * self.weights[axis]
        return torch.log(total.clamp_min(1e-12))
