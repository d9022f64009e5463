"""Caffe SmoothL1 / SoftmaxWithLoss values and py-faster-rcnn normalisations (docs/REFERENCE.md §4, §6)."""

from __future__ import annotations

import math

import pytest
import torch

from frcnn_trt.errors import ModelError
from frcnn_trt.losses import fast_rcnn_losses, rpn_losses, smooth_l1_loss


def ones_like4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones_like(x), torch.ones_like(x)


@pytest.mark.parametrize("sigma,x,expected", [
    (1.0, 0.5, 0.125),  # quadratic: 0.5 · 0.25
    (1.0, -2.0, 1.5),  # linear: 2 - 0.5
    (1.0, 1.0, 0.5),  # boundary |x| = 1/σ²: linear branch, same value
    (3.0, 0.05, 0.5 * 9 * 0.0025),  # quadratic below 1/9
    (3.0, 0.5, 0.5 - 0.5 / 9),  # linear
    (3.0, -1.0 / 9.0, 1.0 / 9.0 - 0.5 / 9),
])
def test_smooth_l1_hand_values(sigma: float, x: float, expected: float) -> None:
    pred = torch.tensor([x], dtype=torch.float64)
    tgt = torch.zeros(1, dtype=torch.float64)
    i, o = ones_like4(pred)
    assert smooth_l1_loss(pred, tgt, i, o, sigma).item() == pytest.approx(expected, rel=1e-12)


def test_smooth_l1_weights_normalizer_and_gradient() -> None:
    pred = torch.tensor([[1.0, 3.0, 0.2, -0.4]], requires_grad=True)
    tgt = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    inside = torch.tensor([[1.0, 0.0, 2.0, 1.0]])
    outside = torch.tensor([[0.5, 0.5, 0.25, 1.0]])
    loss = smooth_l1_loss(pred, tgt, inside, outside, sigma=1.0, normalizer=2.0)
    # x = [1, 0, 0.4, -0.4] -> f = [0.5, 0, 0.08, 0.08] -> weighted [0.25, 0, 0.02, 0.08] -> / 2
    assert loss.item() == pytest.approx(0.175)
    loss.backward()
    # d/dp = outside · f'(x) · inside / 2 with f'(1) = sign(1) = 1 (Caffe's linear branch at the boundary)
    assert pred.grad is not None
    assert pred.grad[0].tolist() == pytest.approx([0.25, 0.0, 0.25 * 0.4 * 2 / 2, -0.4 / 2])


def test_rpn_losses_normalisation() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 5.0], [1.0, -1.0]]])  # [N=1, M=4, 2]
    labels = torch.tensor([[0, 1, -1, 1]])
    ce = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0))]
    pred = torch.zeros(1, 4, 4)
    tgt = torch.full((1, 4, 4), 0.5)
    inside = torch.zeros(1, 4, 4)
    inside[0, [1, 3]] = 1.0
    outside = torch.full((1, 4, 4), 1.0 / 3.0) * (labels >= 0).float().unsqueeze(2)
    cls, bbox = rpn_losses(logits, pred, labels, tgt, inside, outside)
    assert cls.item() == pytest.approx(sum(ce) / 3)  # mean over the 3 non-ignored anchors
    # σ = 3: |x| = 0.5 ≥ 1/9 -> 0.5 - 0.5/9 per element; 2 fg anchors x 4 coords x 1/3; / N = 1
    assert bbox.item() == pytest.approx(8 * (0.5 - 0.5 / 9) / 3)
    # N = 2 identical images: cls unchanged (mean over all non-ignored), bbox divided by N = 2 -> unchanged
    cls2, bbox2 = rpn_losses(logits.repeat(2, 1, 1), pred.repeat(2, 1, 1), labels.repeat(2, 1),
                             tgt.repeat(2, 1, 1), inside.repeat(2, 1, 1), outside.repeat(2, 1, 1))
    assert cls2.item() == pytest.approx(cls.item()) and bbox2.item() == pytest.approx(bbox.item())
    # all ignored: 0, not NaN
    cls0, _ = rpn_losses(logits, pred, torch.full((1, 4), -1), tgt, inside, outside)
    assert cls0.item() == 0.0
    with pytest.raises(ModelError):
        rpn_losses(logits, pred, labels[:, :3], tgt, inside, outside)


def test_fast_rcnn_losses_normalisation() -> None:
    k = 3
    score = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    pred = torch.zeros(2, 4 * k)
    tgt = torch.zeros(2, 4 * k)
    tgt[0, 4:8] = torch.tensor([0.5, -2.0, 0.0, 0.1])
    inside = torch.zeros(2, 4 * k)
    inside[0, 4:8] = 1.0
    cls, bbox = fast_rcnn_losses(score, pred, labels, tgt, inside, (inside > 0).float())
    lse0 = math.log(math.exp(1) + math.exp(2) + 1)
    assert cls.item() == pytest.approx(((lse0 - 2.0) + math.log(3.0)) / 2)
    # σ = 1: f(0.5) = 0.125, f(2) = 1.5, f(0) = 0, f(0.1) = 0.005 -> sum / R = 2
    assert bbox.item() == pytest.approx((0.125 + 1.5 + 0.005) / 2)
