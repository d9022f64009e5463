"""Argument checks shared by the RoI ops (:mod:`frcnn_trt.ops.roi_pool`, :mod:`frcnn_trt.ops.roi_align`).

Glossary: N images, C channels, H×W feature map, R RoIs, ph×pw pooled shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from frcnn_trt.errors import ModelError

__all__ = ["check_pooled_shape", "check_roi_inputs"]


def check_pooled_shape(pooled_shape: Sequence[int] | int, op: str) -> tuple[int, int]:
    """``(ph, pw)`` from two positive ints (or one int for a square grid); :class:`ModelError` otherwise."""
    shape = (pooled_shape, pooled_shape) if isinstance(pooled_shape, int) else tuple(pooled_shape)
    if len(shape) != 2 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ModelError(f"{op}: pooled_shape must be two positive ints (ph, pw), got {pooled_shape!r}")
    return shape[0], shape[1]


def check_roi_inputs(features: Tensor, rois: Tensor, op: str) -> None:
    """``features [N, C, H, W]`` and ``rois [R, 5]`` of the same dtype (autocast may mix them)."""
    if features.dim() != 4:
        raise ModelError(f"{op}: features must be [N, C, H, W], got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ModelError(f"{op}: rois must be [R, 5] (batch idx, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if rois.dtype != features.dtype and not torch.is_autocast_enabled(features.device.type):
        raise ModelError(f"{op}: rois dtype {rois.dtype} differs from features dtype {features.dtype}")
