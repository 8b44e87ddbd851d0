"""The paper's loss: cross-entropy weighted by median frequency balancing, plus a Dice loss (SD-Net).

What MONAI lacks and is written here: the median-frequency class weights (SegNet, Badrinarayanan et al.) and a sum of
a class-weighted cross-entropy with an *unweighted* Dice loss (MONAI's ``DiceCELoss`` applies ``weight`` to both).
The Dice part is MONAI's ``DiceLoss``. The authors' code had bugs not repeated here (see DESIGN.md section 4): weights
by floor division, cross-entropy reduced before weighting, softmax applied twice before the Dice loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["WeightedCEDiceLoss", "median_frequency_weights"]

logger = logging.getLogger(__name__)


def median_frequency_weights(
    data: Sequence[dict],
    transform: Callable[[dict], dict],
    num_classes: int,
    slice_axis: int,
    label_key: str = "label",
    power: float = 1.0,
) -> torch.Tensor:
    """Class weights by median frequency balancing, computed on the 2D training slices of 3D label volumes.

    ``freq(c)`` is the number of pixels of class ``c`` divided by the number of pixels of the slices in which ``c``
    is present; ``weight(c) = (median_c(freq) / freq(c)) ** power`` (real division; ``power`` 1 is the paper's
    weighting, 0 weighs every present class 1). A class absent from every training slice gets weight 0 (no training
    pixel carries it, so the weight has no effect) and a warning.

    Args:
        data: datalist items; only ``label_key`` is read.
        transform: transform applied to ``{label_key: path}`` that loads the label as ``(1, H, W, D)`` in the
            orientation and label values the network is trained on (the configs pass their own load transforms,
            built with ``allow_missing_keys=True``).
        num_classes: number of classes; label values must lie in ``[0, num_classes)``.
        slice_axis: spatial axis (0, 1 or 2) along which the training slices are taken.
        label_key: key of the label in ``data`` items.
        power: exponent of the weights. Where the background is most of every slice (whole heads with skull and
            neck) the paper's weights make a background pixel some 50x cheaper to get wrong than a cortex pixel,
            and the cortex grows into the tissue around it; smaller powers soften that.

    Returns:
        float32 tensor of shape ``(num_classes,)``.
    """
    if power < 0:
        raise ValueError(f"median_frequency_weights: power must be >= 0, got {power}.")
    if not data:
        raise ValueError("median_frequency_weights: no training labels given.")
    counts = torch.zeros(num_classes, dtype=torch.float64)
    present_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for item in data:
        label = torch.as_tensor(transform({label_key: item[label_key]})[label_key])
        label = label.reshape(label.shape[-3:]).long()  # drop the channel dim
        if label.min() < 0 or label.max() >= num_classes:
            raise ValueError(f"label '{item[label_key]}' has values outside 0..{num_classes - 1}.")
        slices = label.movedim(slice_axis, 0).reshape(label.shape[slice_axis], -1)
        n_slices, pixels_per_slice = slices.shape
        offsets = torch.arange(n_slices).unsqueeze(1) * num_classes
        per_slice = torch.bincount((slices + offsets).flatten(), minlength=n_slices * num_classes)
        per_slice = per_slice.view(n_slices, num_classes).double()
        counts += per_slice.sum(0)
        present_pixels += (per_slice > 0).sum(0).double() * pixels_per_slice
    present = present_pixels > 0
    freq = torch.where(present, counts / present_pixels.clamp(min=1), torch.zeros_like(counts))
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = (freq[present].median() / freq[present]) ** power
    if not present.all():
        logger.warning(f"classes {torch.nonzero(~present).flatten().tolist()} never occur in the training labels.")
    return weights.float()


class WeightedCEDiceLoss(nn.Module):
    """``lambda_ce * CE_w + lambda_dice * Dice``: class-weighted cross-entropy plus an unweighted soft Dice loss.

    The cross-entropy weights every pixel by its class weight and then reduces (PyTorch's weighted mean,
    ``sum_i w_{y_i} l_i / sum_i w_{y_i}``). The Dice loss is MONAI's ``DiceLoss`` with one softmax over the logits.

    Args:
        class_weights: per-class weights ``(C,)`` for the cross-entropy (e.g. :func:`median_frequency_weights`), or
            ``None`` for an unweighted cross-entropy.
        lambda_ce: factor of the cross-entropy term.
        lambda_dice: factor of the Dice term (0 disables it).
        dice_kwargs: further arguments of ``monai.losses.DiceLoss`` (``include_background``, ``batch``, ...).

    Shapes:
        ``logits`` ``(N, C, *spatial)``; ``target`` ``(N, 1, *spatial)`` or ``(N, *spatial)`` with class indices.
        Returns a scalar.
    """

    def __init__(
        self,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        **dice_kwargs,
    ) -> None:
        super().__init__()
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)
        self.lambda_ce = lambda_ce
        self.lambda_dice = lambda_dice
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, **dice_kwargs)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim:
            target = target[:, 0]
        target = target.long()
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        loss = self.lambda_ce * F.cross_entropy(logits, target, weight=weight)
        if self.lambda_dice:
            loss = loss + self.lambda_dice * self.dice(logits, target.unsqueeze(1))
        return loss
