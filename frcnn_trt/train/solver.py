"""Caffe's SGD solver as py-faster-rcnn configures it (docs/REFERENCE.md §8).

- Learning-rate multipliers: weights ×1, biases ×``BIAS_LR_MULT`` (2); weight decay on both (decay_mult 1),
  unless ``BIAS_DECAY`` is off. Frozen layers (lr_mult 0) get no parameter group at all.
- ``lr_policy: step``: ``lr = base_lr · gamma^floor(iter / stepsize)``.
- Momentum update: by default ``torch.optim.SGD`` (``v = m·v + g'``, ``w −= lr·v``). With
  ``CAFFE_MOMENTUM`` the exact Caffe update (``v = m·v + lr·g'``, ``w −= v``, with ``g' = g + wd·w``); the
  two agree while the learning rate is constant and differ for a few hundred iterations after a step.
- ``iter_size``: gradients of ``iter_size`` forward/backward passes are accumulated and averaged before one
  update (the training loop divides each loss by ``iter_size``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from frcnn_trt.config import SolverConfig
from frcnn_trt.errors import ConfigError


def step_lr(base_lr: float, gamma: float, stepsize: int, iteration: int) -> float:
    """Caffe ``step`` policy at (0-based) ``iteration``."""
    if stepsize <= 0:
        return base_lr
    return base_lr * gamma ** (iteration // stepsize)


def param_groups(named: Iterable[tuple[str, nn.Parameter]], *, weight_decay: float, bias_lr_mult: float,
                 bias_decay: bool) -> list[dict[str, Any]]:
    """Two groups (weights, biases) with Caffe's lr/decay multipliers in ``lr_mult``."""
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for name, p in named:
        if not p.requires_grad:
            continue
        (biases if name.endswith("bias") else weights).append(p)
    groups = []
    if weights:
        groups.append({"params": weights, "lr_mult": 1.0, "weight_decay": weight_decay})
    if biases:
        groups.append({"params": biases, "lr_mult": float(bias_lr_mult),
                       "weight_decay": weight_decay if bias_decay else 0.0})
    return groups


class CaffeSGD(torch.optim.Optimizer):
    """SGD with Caffe's momentum formula: ``v = m·v + lr·(g + wd·w)``; ``w −= v``."""

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                v = state.get("momentum_buffer")
                if v is None:
                    v = state["momentum_buffer"] = torch.zeros_like(p)
                v.mul_(m).add_(g, alpha=lr)
                p.sub_(v)


class Solver:
    """Parameter groups + optimizer + learning-rate policy for one training run (or alt-opt stage)."""

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], *, base_lr: float, momentum: float,
                 weight_decay: float, gamma: float, stepsize: int, lr_policy: str = "step",
                 bias_lr_mult: float = 2.0, bias_decay: bool = True, caffe_momentum: bool = False) -> None:
        if lr_policy not in ("step", "fixed"):
            raise ConfigError(f"SOLVER.LR_POLICY: only 'step' and 'fixed' are supported, got {lr_policy!r}")
        if base_lr <= 0:
            raise ConfigError(f"SOLVER.BASE_LR must be > 0, got {base_lr}")
        self.base_lr, self.gamma = float(base_lr), float(gamma)
        self.stepsize = int(stepsize) if lr_policy == "step" else 0
        groups = param_groups(named_params, weight_decay=weight_decay, bias_lr_mult=bias_lr_mult,
                              bias_decay=bias_decay)
        if not groups:
            raise ConfigError("nothing to train: every parameter is frozen in this stage")
        self.optimizer: torch.optim.Optimizer
        if caffe_momentum:
            self.optimizer = CaffeSGD(groups, lr=base_lr, momentum=momentum)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=momentum)

    @classmethod
    def from_config(cls, named_params: Iterable[tuple[str, nn.Parameter]], solver_cfg: SolverConfig, *,
                    base_lr: float | None = None, stepsize: int | None = None) -> Solver:
        s = solver_cfg
        return cls(named_params, base_lr=s.BASE_LR if base_lr is None else base_lr, momentum=s.MOMENTUM,
                   weight_decay=s.WEIGHT_DECAY, gamma=s.GAMMA,
                   stepsize=s.STEPSIZE if stepsize is None else stepsize, lr_policy=s.LR_POLICY,
                   bias_lr_mult=s.BIAS_LR_MULT, bias_decay=s.BIAS_DECAY, caffe_momentum=s.CAFFE_MOMENTUM)

    def lr_at(self, iteration: int) -> float:
        return step_lr(self.base_lr, self.gamma, self.stepsize, iteration)

    def step(self, iteration: int) -> float:
        """Set the learning rate for ``iteration``, apply one update, clear gradients; returns the lr."""
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def momentum_state(self, names: dict[int, str]) -> dict[str, torch.Tensor]:
        """Momentum buffers by parameter name (for a safetensors solver state)."""
        out = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    out[names[id(p)]] = buf.detach().cpu().contiguous()
        return out

    def load_momentum_state(self, state: dict[str, torch.Tensor], params: dict[str, nn.Parameter]) -> None:
        for name, buf in state.items():
            p = params.get(name)
            if p is not None:
                self.optimizer.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype).clone()
