"""Median-frequency weights and the weighted cross-entropy + Dice loss, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from scripts.checkpoint import CPUStateDict, check_checkpoint
from scripts.losses import WeightedCEDiceLoss, median_frequency_weights


def _identity(item: dict) -> dict:
    return {"label": torch.as_tensor(item["label"])[None]}


def test_median_frequency_weights_by_hand():
    # one 2-slice volume (slices along axis 2), 3 classes
    vol = np.zeros((2, 2, 2), dtype=np.int64)
    vol[..., 0] = [[0, 0], [0, 1]]  # slice 0: 3 background, 1 class-1
    vol[..., 1] = [[0, 2], [2, 2]]  # slice 1: 1 background, 3 class-2
    w = median_frequency_weights([{"label": vol}], _identity, num_classes=3, slice_axis=2)
    # freq: bg 4/8, c1 1/4 (present in slice 0 only), c2 3/4 (slice 1 only); median 1/2
    expected = torch.tensor([0.5 / 0.5, 0.5 / 0.25, 0.5 / 0.75])
    assert torch.allclose(w, expected)
    # the frequent class gets a weight below 1, not 0 (the authors' floor division gave 0)
    assert 0 < w[2] < 1
    # class_weight_power softens them (0: uniform for the classes present)
    half = median_frequency_weights([{"label": vol}], _identity, num_classes=3, slice_axis=2, power=0.5)
    assert torch.allclose(half, expected.sqrt())
    assert torch.equal(median_frequency_weights([{"label": vol}], _identity, 3, 2, power=0.0), torch.ones(3))
    with pytest.raises(ValueError, match="power"):
        median_frequency_weights([{"label": vol}], _identity, 3, 2, power=-1.0)


def test_median_frequency_weights_slice_axis_and_absent_class(caplog):
    vol = np.zeros((4, 2, 2), dtype=np.int64)
    vol[0] = 1  # class 1 fills the first slice along axis 0
    w = median_frequency_weights([{"label": vol}], _identity, num_classes=3, slice_axis=0)
    # axis 0: bg freq 12/12 over the 3 slices it is in, c1 4/4 in slice 0 -> both 1.0; class 2 never occurs
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 0.0]))
    assert "never occur" in caplog.text
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        median_frequency_weights([{"label": vol + 2}], _identity, num_classes=3, slice_axis=0)


def test_cross_entropy_is_weighted_per_pixel_then_reduced():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 1, 4, 4))
    weights = torch.tensor([0.2, 1.0, 3.0])
    loss = WeightedCEDiceLoss(weights, lambda_ce=1.0, lambda_dice=0.0)(logits, target)
    per_pixel = -F.log_softmax(logits, 1).gather(1, target)[:, 0]  # (2, 4, 4)
    w = weights[target[:, 0]]
    assert torch.allclose(loss, (w * per_pixel).sum() / w.sum())
    # weights change the loss (the authors' code reduced first, so they did nothing)
    assert not torch.allclose(loss, per_pixel.mean())


def test_dice_term_is_unweighted_with_one_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    loss = WeightedCEDiceLoss(torch.tensor([0.1, 1.0, 5.0]), lambda_ce=0.0, lambda_dice=1.0, batch=True)
    reference = DiceLoss(to_onehot_y=True, softmax=True, batch=True)(logits, target[:, None])
    assert torch.allclose(loss(logits, target), reference)
    # a second softmax would give a different value
    twice = DiceLoss(to_onehot_y=True, softmax=True, batch=True)(torch.softmax(logits, 1), target[:, None])
    assert not torch.allclose(loss(logits, target), twice)


def test_loss_gradients_and_3d_volumes():
    logits = torch.randn(1, 4, 6, 6, 6, requires_grad=True)
    target = torch.randint(0, 4, (1, 1, 6, 6, 6))
    loss = WeightedCEDiceLoss([1.0, 2.0, 3.0, 4.0])(logits, target)
    loss.backward()
    assert loss.ndim == 0 and logits.grad is not None


def test_cpu_state_dict_unwraps_and_copies(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped = torch.nn.DataParallel(net)
    state = CPUStateDict(wrapped).state_dict()
    assert set(state) == set(net.state_dict())  # no "module." prefix
    assert all(v.device.type == "cpu" for v in state.values())
    path = tmp_path / "model.pt"
    torch.save(state, path)
    CPUStateDict(torch.nn.Sequential(torch.nn.Linear(2, 2))).load_state_dict(torch.load(path, weights_only=True))
    with pytest.raises(ValueError, match="does not exist: train first"):
        check_checkpoint(str(tmp_path / "missing.pt"))
