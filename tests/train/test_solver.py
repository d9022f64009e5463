from __future__ import annotations

import pytest
import torch
from torch import nn

from frcnn_trt.errors import ConfigError
from frcnn_trt.train.solver import Solver, step_lr


def test_step_policy() -> None:
    assert step_lr(0.001, 0.1, 50000, 0) == 0.001
    assert step_lr(0.001, 0.1, 50000, 49999) == 0.001
    assert step_lr(0.001, 0.1, 50000, 50000) == pytest.approx(0.0001)
    assert step_lr(0.001, 0.1, 0, 10**6) == 0.001


def _layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_bias_lr_mult_and_decay_on_biases() -> None:
    layer = _layer()
    s = Solver(layer.named_parameters(), base_lr=0.1, momentum=0.0, weight_decay=0.5, gamma=0.1, stepsize=10)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer.weight.grad = torch.ones_like(layer.weight)
    layer.bias.grad = torch.ones_like(layer.bias)
    s.step(0)
    # w -= lr·(g + wd·w); biases: lr ×2, decay also applied
    torch.testing.assert_close(layer.weight.detach(), w0 - 0.1 * (1 + 0.5 * w0))
    torch.testing.assert_close(layer.bias.detach(), b0 - 0.2 * (1 + 0.5 * b0))


def test_caffe_momentum_differs_only_after_a_step_change() -> None:
    results = {}
    for caffe in (False, True):
        layer = _layer()
        s = Solver(layer.named_parameters(), base_lr=0.1, momentum=0.9, weight_decay=0.0, gamma=0.1, stepsize=2,
                   caffe_momentum=caffe)
        trace = []
        for it in range(4):
            layer.weight.grad = torch.ones_like(layer.weight)
            layer.bias.grad = torch.ones_like(layer.bias)
            s.step(it)
            trace.append(layer.weight.detach().clone())
        results[caffe] = trace
    torch.testing.assert_close(results[False][1], results[True][1])  # constant lr: identical
    # after the lr step at iteration 2: Caffe keeps the momentum that was built at the old lr
    w1 = results[True][1]
    v1 = 0.1 * (1 + 0.9)  # Caffe velocity after two updates at lr 0.1 (per element)
    torch.testing.assert_close(results[True][2], w1 - (0.9 * v1 + 0.01))
    assert not torch.allclose(results[False][2], results[True][2])


def test_frozen_everything_is_a_config_error() -> None:
    layer = _layer()
    for p in layer.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="nothing to train"):
        Solver(layer.named_parameters(), base_lr=0.1, momentum=0.9, weight_decay=0.0, gamma=0.1, stepsize=1)
