# Copyright (c) the scSE bundle contributors.
# Licensed under the Apache License, Version 2.0.
"""
Training images synthesised from label-map slices a whole batch at a time, on the trainer's device.

:class:`scripts.transforms.RandSynthesizeImaged` synthesises one slice at a time in the loader's CPU workers, about
14 ms of one core per 128 x 128 slice with its spatial augmentation. A GPU trains on such slices hundreds of times
faster than that: with the CPU profile's 2 loader workers the loader, not the GPU, set the pace (1.6 batches of 16
slices per second on an H200 whose machine has 16 cores). :class:`SynthesizeBatch` is a ``prepare_batch`` for
MONAI's ``SupervisedTrainer`` that does the same work on the batch once it is on the device, in a few dozen batched
tensor operations, so the loader only crops label slices:

1. the spatial augmentation of the CPU path in one resampling (nearest neighbour) per slice: a left-right flip with
   the left and right label values swapped (``RandFlipLeftRightd``), a random rotation, scaling and translation
   about the slice centre (``RandAffined``) and, with probability ``elastic_prob``, a smooth random displacement:
   normal offsets of ``magnitude`` voxels on a grid of ``elastic_spacing`` voxels, upsampled bicubically
   (``Rand2DElasticd``);
2. the image, drawn as :func:`scripts.transforms.synthesize_image` draws it, with every random choice made per slice:
   the T1 prior or random contrast, skull stripping, one mean and std per label value (tied values share their
   quantiles), the partial-volume blur, the bias field, a lower resolution along a random in-plane axis, noise and
   gamma. The separable filters (blur, slice profile, down- and up-sampling) are ``(H, H)`` and ``(W, W)`` matrices
   per slice, applied as batched matrix products;
3. the label values remapped to the protocol's classes (``MapLabelValued``) and the image scaled to [0, 1] between its
   ``lower`` and ``upper`` percentiles (``ScaleIntensityRangePercentilesd``).

Randomness comes from torch's generator of the device, which MONAI's ``set_determinism`` and the checkpoint policy's
per-epoch seeding set, so a resumed training draws the same images. Each step reproduces its CPU counterpart's
distribution, not its exact samples: ``tests/test_batch_synthesis.py`` checks the filters against scipy's and the
loader's, and the image without random draws against :func:`scripts.transforms.synthesize_image`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from scripts.transforms import RandSynthesizeImaged, RangeLike, _checked_args

__all__ = ["SynthesizeBatch"]

# scipy.ndimage.gaussian_filter's default reach: radius = int(truncate * sigma + 0.5)
_TRUNCATE = 4.0


def _uniform(low: float, high: float, size: Sequence[int], device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(*size, device=device)


def _gaussian_matrices(sigma: torch.Tensor, n: int, radius: int) -> torch.Tensor:
    """``(B, n, n)`` matrices of a 1D Gaussian filter per batch element, borders extended (scipy's ``nearest``).

    Args:
        sigma: ``(B,)`` standard deviations in voxels; 0 gives the identity.
        n: samples along the axis.
        radius: half-width of every kernel (voxels), enough for the largest sigma.
    """
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    safe = sigma.clamp_min(1e-6)[:, None]
    weights = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    # a sigma reaching fewer voxels than ``radius`` is cut where scipy would cut it
    reach = (_TRUNCATE * sigma + 0.5).floor()[:, None]
    weights = weights * (offsets.abs()[None] <= reach)
    weights = weights / weights.sum(dim=1, keepdim=True)
    columns = (torch.arange(n, device=sigma.device)[:, None] + offsets.long()[None]).clamp(0, n - 1)  # (n, K)
    out = torch.zeros(sigma.shape[0], n, n, device=sigma.device)
    return out.scatter_add_(2, columns.expand(sigma.shape[0], n, -1), weights[:, None, :].expand(-1, n, -1))


def _resolution_matrices(thickness: torch.Tensor, blur: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, n, n)`` matrices that re-acquire an axis with thick slices and sample it back on its ``n`` voxels:
    the slice profile ``blur`` (``(B, n, n)``), the thick slices' centres taken, linear interpolation between them
    (``scripts.transforms._lower_resolution``, as matrices). ``thickness`` is ``(B,)`` in voxels."""
    device = thickness.device
    coarse = torch.clamp(torch.round(n / thickness), min=2)[:, None]  # (B, 1) thick slices
    position = torch.arange(n, device=device, dtype=torch.float32)[None]
    # voxel i lies at this fractional index among the thick slices' centres (np.interp clamps outside them)
    where = ((position + 0.5) * coarse / n - 0.5).clamp(min=torch.zeros_like(coarse), max=coarse - 1)
    lower = torch.minimum(where.floor(), coarse - 2)
    frac = where - lower

    def centre_voxel(index: torch.Tensor) -> torch.Tensor:
        return torch.round((index + 0.5) * n / coarse - 0.5).clamp(0, n - 1).long()

    rows_low = torch.gather(blur, 1, centre_voxel(lower)[..., None].expand(-1, -1, n))
    rows_high = torch.gather(blur, 1, centre_voxel(lower + 1)[..., None].expand(-1, -1, n))
    return rows_low * (1 - frac)[..., None] + rows_high * frac[..., None]


class SynthesizeBatch:
    """``prepare_batch`` for MONAI's ``SupervisedTrainer``: augments a batch of label-map slices and synthesises their
    images on ``device`` (module docstring).

    Args:
        synthesis: the loader's :class:`scripts.transforms.RandSynthesizeImaged`, whose parameters are used (the
            configs declare them once), or those parameters themselves (``tissue_means``, ``std_range``,
            ``bias_std``, ``bias_points``, ``blur_sigma_range``, ``noise_std_range``, ``default_mean_range``,
            ``tied_labels``, ``tissue_means_prob``, ``random_mean_range``, ``strip_labels``, ``strip_prob``,
            ``resolution_prob``, ``thickness_range``, ``gamma_std``), checked as there.
        orig_labels, target_labels: the remapping of label values to classes, as ``MapLabelValued``'s; values not
            listed keep their value.
        flip_axis: the slices' spatial axis that runs left to right (0 or 1), ``None`` for no flip.
        flip_pairs: ``[left, right]`` label values swapped by a flip.
        flip_prob: probability of a flip.
        rotate_range: largest rotation, radians (uniform in +-).
        scale_range: largest relative scaling per axis (factor uniform in 1 +- it).
        translate_range: largest shift per axis, voxels.
        elastic_prob: probability of a random smooth displacement.
        elastic_spacing: voxels between the displacement's control points.
        elastic_magnitude: ``[low, high]`` of the displacement's scale, voxels (drawn per slice).
        lower, upper: the percentiles mapped to 0 and 1 (the image is clipped to them).
        label_key: the batch's key of the label slices ``(B, 1, H, W)``, in their original values.
    """

    def __init__(
        self,
        synthesis: RandSynthesizeImaged | Mapping[str, Any],
        orig_labels: Sequence[Any],
        target_labels: Sequence[Any],
        flip_axis: int | None = None,
        flip_pairs: Sequence[Sequence[Any]] = (),
        flip_prob: float = 0.0,
        rotate_range: float = 0.0,
        scale_range: float = 0.0,
        translate_range: float = 0.0,
        elastic_prob: float = 0.0,
        elastic_spacing: int = 32,
        elastic_magnitude: RangeLike = (1.0, 3.0),
        lower: float = 0.5,
        upper: float = 99.5,
        label_key: str = "label",
    ) -> None:
        if isinstance(synthesis, RandSynthesizeImaged):
            args = synthesis.synthesize.kwargs
        else:
            args = _checked_args(**dict(synthesis))
        self.args = args
        if len(orig_labels) != len(target_labels):
            raise ValueError(
                f"orig_labels and target_labels differ in length: {len(orig_labels)} != {len(target_labels)}."
            )
        if flip_axis not in (None, 0, 1):
            raise ValueError(f"flip_axis must be 0, 1 or None for 2D slices, got {flip_axis!r}.")
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"the percentiles must satisfy 0 <= lower < upper <= 100, got {lower} and {upper}.")
        for name, value in (("flip_prob", flip_prob), ("elastic_prob", elastic_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
        if int(elastic_spacing) < 1:
            raise ValueError(f"elastic_spacing must be a positive number of voxels, got {elastic_spacing!r}.")
        self.flip_axis, self.flip_prob = flip_axis, float(flip_prob)
        self.rotate_range, self.scale_range, self.translate_range = map(
            float, (rotate_range, scale_range, translate_range)
        )
        self.elastic_prob, self.elastic_spacing = float(elastic_prob), int(elastic_spacing)
        self.elastic_magnitude = tuple(float(v) for v in elastic_magnitude)
        self.quantiles = (float(lower) / 100.0, float(upper) / 100.0)
        self.label_key = label_key

        # every label value a map may hold, and tables indexed by the value itself (one gather per voxel)
        orig = [int(str(v).strip()) for v in orig_labels]
        pairs = [[int(str(v).strip()) for v in pair] for pair in flip_pairs]
        known = set(orig) | set(args["tissue_means"]) | set(args["tied_labels"]) | set(args["strip_labels"])
        known |= {v for pair in pairs for v in pair} | {0}
        size = max(known) + 1
        self.size = size
        self.remap = torch.arange(size)
        self.remap[torch.tensor(orig, dtype=torch.long)] = torch.tensor([int(v) for v in target_labels])
        self.swap = torch.arange(size)
        for left, right in pairs:
            self.swap[left], self.swap[right] = right, left
        self.stripped = torch.zeros(size, dtype=torch.bool)
        self.stripped[list(args["strip_labels"])] = True
        # one random draw per tied group or per ungrouped value
        groups = {}
        draw = torch.empty(size, dtype=torch.long)
        for value in range(size):
            key = ("group", args["tied_labels"][value]) if value in args["tied_labels"] else ("value", value)
            draw[value] = groups.setdefault(key, len(groups))
        self.draw, self.num_draws = draw, len(groups)
        prior = torch.tensor([args["tissue_means"].get(v, args["default_mean_range"]) for v in range(size)])
        self.prior_low, self.prior_span = prior[:, 0].float(), (prior[:, 1] - prior[:, 0]).float()
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The lookup tables on ``device`` (moved once)."""
        if device not in self._tables:
            names = ("remap", "swap", "stripped", "draw", "prior_low", "prior_span")
            self._tables[device] = {name: getattr(self, name).to(device) for name in names}
        return self._tables[device]

    def augment(self, label: torch.Tensor) -> torch.Tensor:
        """Flip, affine and elastic augmentation of ``(B, 1, H, W)`` label values in one nearest resampling."""
        b, _, h, w = label.shape
        device = label.device
        t = self._on(device)
        flip = torch.rand(b, device=device) < self.flip_prob
        if self.flip_axis is not None:
            values = label.long().clamp(0, self.size - 1)
            label = torch.where(flip[:, None, None, None], t["swap"][values], values).float()
        angle = _uniform(-self.rotate_range, self.rotate_range, (b,), device)
        scale = 1.0 + _uniform(-self.scale_range, self.scale_range, (b, 2), device)
        shift = _uniform(-self.translate_range, self.translate_range, (b, 2), device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output voxel p (centred) reads input voxel R S p + t (+ a displacement); axis 0 is rows (H), 1 columns (W)
        matrix = torch.stack(
            [
                torch.stack([cos * scale[:, 0], -sin * scale[:, 1]], 1),
                torch.stack([sin * scale[:, 0], cos * scale[:, 1]], 1),
            ],
            1,
        )  # (B, 2, 2)
        if self.flip_axis is not None:
            mirror = torch.ones(b, 2, device=device)
            mirror[:, self.flip_axis] = torch.where(flip, -1.0, 1.0)
            matrix = matrix * mirror[:, None, :]
        rows = torch.arange(h, device=device, dtype=torch.float32) - (h - 1) / 2
        cols = torch.arange(w, device=device, dtype=torch.float32) - (w - 1) / 2
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), 0).reshape(2, -1)  # (2, H*W)
        source = (matrix @ grid).reshape(b, 2, h, w) + shift[:, :, None, None]
        if self.elastic_prob > 0:
            points = (math.ceil(h / self.elastic_spacing) + 3, math.ceil(w / self.elastic_spacing) + 3)
            magnitude = _uniform(*self.elastic_magnitude, (b,), device)
            magnitude = magnitude * (torch.rand(b, device=device) < self.elastic_prob)
            coarse = torch.randn(b, 2, *points, device=device) * magnitude[:, None, None, None]
            field = F.interpolate(coarse, scale_factor=self.elastic_spacing, mode="bicubic", align_corners=False)
            top, left = (field.shape[2] - h) // 2, (field.shape[3] - w) // 2
            source = source + field[:, :, top : top + h, left : left + w]
        # grid_sample's (x, y) = (column, row), normalised to [-1, 1] over the voxel centres
        normalised = torch.stack([source[:, 1] / max((w - 1) / 2, 1e-6), source[:, 0] / max((h - 1) / 2, 1e-6)], dim=-1)
        return F.grid_sample(label.float(), normalised, mode="nearest", padding_mode="zeros", align_corners=True)

    def synthesize(self, label: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 1, H, W)`` float32 from label values ``(B, 1, H, W)`` (module docstring, step 2)."""
        a = self.args
        b, _, h, w = label.shape
        device = label.device
        t = self._on(device)
        values = label.long().clamp(0, self.size - 1)
        if a["strip_labels"] and a["strip_prob"] > 0:
            strip = torch.rand(b, device=device) < a["strip_prob"]
            values = torch.where(strip[:, None, None, None] & t["stripped"][values], 0, values)
        prior = torch.rand(b, device=device) < a["tissue_means_prob"]
        r_low, r_high = a["random_mean_range"]
        low = torch.where(prior[:, None], t["prior_low"][None], r_low)  # (B, size)
        span = torch.where(prior[:, None], t["prior_span"][None], r_high - r_low)
        mean_q = torch.rand(b, self.num_draws, device=device)[:, t["draw"]]
        std_q = torch.rand(b, self.num_draws, device=device)[:, t["draw"]]
        std_lo, std_hi = a["std_range"]
        means = low + mean_q * span
        stds = std_lo + std_q * (std_hi - std_lo)
        flat = values.reshape(b, -1)
        image = torch.gather(means, 1, flat) + torch.gather(stds, 1, flat) * torch.randn(b, h * w, device=device)
        image = image.reshape(b, h, w)

        sigma = _uniform(*a["blur_sigma_range"], (b,), device)
        thick_lo, thick_hi = a["thickness_range"]
        radius = max(1, int(_TRUNCATE * max(a["blur_sigma_range"][1], thick_hi / 2.355) + 0.5))
        if a["blur_sigma_range"][1] > 0:
            image = _gaussian_matrices(sigma, h, radius) @ image @ _gaussian_matrices(sigma, w, radius).transpose(1, 2)
        if a["bias_std"] > 0:
            coarse = torch.randn(b, 1, a["bias_points"], a["bias_points"], device=device) * a["bias_std"]
            image = image * torch.exp(F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False))[:, 0]
        if a["resolution_prob"] > 0:
            lowres = torch.rand(b, device=device) < a["resolution_prob"]
            axis = torch.rand(b, device=device) < 0.5  # True: rows (H), False: columns (W)
            thickness = _uniform(thick_lo, thick_hi, (b,), device)
            profile = thickness / 2.355
            for n, on_axis, side in ((h, axis, "left"), (w, ~axis, "right")):
                apply = lowres & on_axis & (thickness > 1.0)
                resample = _resolution_matrices(thickness, _gaussian_matrices(profile, n, radius), n)
                eye = torch.eye(n, device=device).expand(b, n, n)
                resample = torch.where(apply[:, None, None], resample, eye)
                image = resample @ image if side == "left" else image @ resample.transpose(1, 2)
        noise_std = _uniform(*a["noise_std_range"], (b,), device)
        image = (image + noise_std[:, None, None] * torch.randn_like(image)).clamp_min(0.0)
        if a["gamma_std"] > 0:
            top = image.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
            gamma = torch.exp(a["gamma_std"] * torch.randn(b, 1, 1, device=device))
            image = (image / top) ** gamma * top
        return image[:, None]

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Each image scaled to [0, 1] between its percentiles and clipped (``ScaleIntensityRangePercentiles``)."""
        q = torch.tensor(self.quantiles, device=image.device)
        bounds = torch.quantile(image.flatten(1), q, dim=1)  # (2, B)
        low, high = bounds[0][:, None, None, None], bounds[1][:, None, None, None]
        scaled = (image - low) / torch.where(high > low, high - low, torch.ones_like(high))
        return torch.where(high > low, scaled, image - low).clamp(0.0, 1.0)

    @torch.no_grad()
    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image, label)`` on ``device``: images ``(B, 1, H, W)`` float32 in [0, 1], labels ``(B, 1, H, W)`` as
        the protocol's classes (float, as MONAI's loaders give them)."""
        if self.label_key not in batchdata:
            raise KeyError(f"the training batch has no '{self.label_key}' to synthesise images from.")
        label = batchdata[self.label_key]
        label = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
        if label.ndim != 4 or label.shape[1] != 1:
            raise ValueError(f"label slices must be (B, 1, H, W), got {tuple(label.shape)}.")
        label = label.to(device=device, non_blocking=non_blocking, **kwargs).float()
        label = self.augment(label)
        image = self.normalise(self.synthesize(label))
        classes = self._on(label.device)["remap"][label.long().clamp(0, self.size - 1)]
        return image, classes.float()
