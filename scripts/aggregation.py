"""Class probabilities combined and carried to the input's grid.

Several views (QuickNAT, FastSurfer): :class:`MultiViewInferer` runs 2D networks trained on sagittal, coronal and
axial slices over the same volume and averages their class probabilities (weighted), which smooths each view's
errors across the slices it never sees together. A sagittal slice cannot tell left from right, so a view without a
left-right axis gives each left/right pair its mean probability and leaves the side to the other views.

To the input's grid: a model working on coarser voxels than the scan (the shipped
brain model: 2 mm) gives smooth boundaries on the scan's own 1 mm grid when its class probabilities are interpolated
linearly back and only then turned into labels; a label volume resampled with nearest neighbours is blocky.

:class:`InvertProbabilitiesd` does that with MONAI's ``Invertd`` (the whole preprocessing undone: crop, spacing,
orientation) a few channels at a time, keeping a running maximum, so the scan's grid never holds all the classes'
probabilities at once (28 classes of a 256^3 scan would be 1.9 GB).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer
from monai.transforms import Invertd, InvertibleTransform, MapTransform
from torch import nn

from .checkpoint import check_checkpoint, load_checkpoint

__all__ = ["InvertProbabilitiesd", "MultiViewInferer"]

LEFT_RIGHT_AXIS = 0  # of RAS volumes: slices along it (sagittal) have no left-right axis


class InvertProbabilitiesd(MapTransform):
    """Class probabilities on the network's grid -> labels on the input's grid, by linear interpolation of the
    probabilities (``Invertd`` without nearest-neighbour interpolation) and an argmax, ``chunk_size`` channels at a
    time.

    Voxels outside what the network saw (a foreground crop padded back) get probability 0 for every class, so label 0.

    Args:
        keys: the probabilities, shape ``(C, H, W, D)`` on the preprocessed grid (e.g. after a softmax).
        transform: the preprocessing to undo (the ``Compose`` applied to ``orig_keys``).
        orig_keys: the preprocessed image whose applied operations are undone.
        chunk_size: channels interpolated at once (memory: ``chunk_size`` float32 volumes of the input's size).
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
        self.inverter = Invertd(
            keys=keys, transform=transform, orig_keys=orig_keys, nearest_interp=False, allow_missing_keys=True
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            probabilities = d[key]
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
                del part, value, index
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
        left_right_pairs: class index pairs ``[left, right]``; a view along :data:`LEFT_RIGHT_AXIS` (sagittal) gives
            both of a pair their mean probability.
        sw_batch_size: slices per forward pass.
        wrap: callable turning a network into the module to run (e.g. :class:`scripts.inference.FastInference`
            settings); ``None`` runs it as it is.

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
    ) -> None:
        super().__init__()
        self.slice_axis = int(slice_axis)
        self.views: dict[int, nn.Module] = {}
        for axis, path in (views or {}).items():
            axis = int(axis)
            if axis not in (0, 1, 2) or axis == self.slice_axis:
                raise ValueError(f"view axis {axis} must be 0, 1 or 2 and differ from slice_axis {self.slice_axis}.")
            check_checkpoint(path, network_def)
            network = copy.deepcopy(network_def)
            network.load_state_dict(load_checkpoint(path))
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

    def _probabilities(self, inputs: torch.Tensor, network, axis: int) -> torch.Tensor:
        inferer = SliceInferer(spatial_dim=axis, roi_size=(-1, -1), sw_batch_size=self.sw_batch_size, progress=False)
        probabilities = torch.softmax(torch.as_tensor(inferer(inputs, network)).float(), dim=1)
        if axis == LEFT_RIGHT_AXIS and self.pairs:
            for left, right in self.pairs:
                mean = (probabilities[:, left] + probabilities[:, right]) / 2
                probabilities[:, left], probabilities[:, right] = mean, mean
        return probabilities

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = self._probabilities(inputs, network, self.slice_axis) * self.weights[self.slice_axis]
        for axis, view in self.views.items():
            total += self._probabilities(inputs, view, axis) * self.weights[axis]
        return torch.log(total.clamp_min(1e-12))
