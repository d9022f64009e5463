"""RoI align (torchvision's bilinear ``roi_align``, half-pixel aligned), as one unit: the eager op and its ONNX form.

The optional RoI op of the Fast R-CNN head (``MODEL.ROI_OP: RoIAlign``; py-faster-rcnn's own is
:mod:`frcnn_trt.ops.roi_pool`):

- **eager / autograd**: ``torchvision.ops.roi_align(..., aligned=True)`` (its own CPU/CUDA kernels, backward and
  autocast rule);
- **ONNX**: under ``torch.onnx.export(..., dynamo=True, custom_translation_table=onnx_translation_table())`` it
  becomes the standard ``RoiAlign`` node (ai.onnx, opset ≥ 16) with ``mode="avg"``,
  ``coordinate_transformation_mode="half_pixel"``, ``output_height/width``, ``spatial_scale`` and
  ``sampling_ratio``, after a ``Slice`` / ``Cast`` that splits the ``[R, 5]`` RoIs into ``batch_indices`` and
  boxes. No custom op: ONNX Runtime runs it natively, and TensorRT's parser maps it to a built-in plugin.
  Our translation (rather than onnxscript's) writes every attribute explicitly, so the node does not change
  with the exporter's defaults.

Coordinate convention (``aligned=True`` = ONNX ``half_pixel``): a box edge at image pixel ``x`` lies at
``x · spatial_scale − 0.5`` feature cells, so a sample falls on a cell centre; the box size is not clamped to
one cell; bins hold ``sampling_ratio²`` bilinear samples (0: ``ceil(RoI side / pooled side)`` per side, as
torchvision's ``−1``); samples more than one cell outside the map give 0, those within one cell are clamped to
the border. RoIs are taken as continuous boxes (torchvision's and detectron2's convention), so a
py-faster-rcnn inclusive box ``[x1, x2]`` pools over ``x2 − x1`` pixels, not its ``+1`` width: the head learns
with the same op it runs with, so training and inference agree.

Glossary: N images, C channels, H×W feature map, R RoIs, ph×pw pooled shape.
``rois`` is ``[R, 5]``: batch index, x1, y1, x2, y2 in image pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from frcnn_trt.errors import ModelError
from frcnn_trt.ops.checks import check_pooled_shape, check_roi_inputs

__all__ = [
    "COORDINATE_TRANSFORMATION_MODE",
    "ONNX_OP_TYPE",
    "RoIAlign",
    "onnx_translation_table",
    "roi_align",
]

ONNX_DOMAIN = ""
ONNX_OP_TYPE = "RoiAlign"
#: the ONNX form of torchvision's ``aligned=True``
COORDINATE_TRANSFORMATION_MODE = "half_pixel"
#: ``coordinate_transformation_mode`` exists from this ai.onnx opset on
MIN_OPSET = 16


def roi_align(features: Tensor, rois: Tensor, pooled_shape: Sequence[int] | int, spatial_scale: float,
              sampling_ratio: int = 2) -> Tensor:
    """Bilinear RoI align, half-pixel aligned: ``features [N, C, H, W]``, ``rois [R, 5]`` → ``[R, C, ph, pw]``.

    ``sampling_ratio`` ≥ 0 samples per bin side (0 = adaptive). Differentiable w.r.t. ``features``.
    """
    ph, pw = check_pooled_shape(pooled_shape, "roi_align")
    check_roi_inputs(features, rois, "roi_align")
    return torchvision.ops.roi_align(features, rois, (ph, pw), float(spatial_scale), _check_sampling(sampling_ratio),
                                     aligned=True)


def _check_sampling(sampling_ratio: int) -> int:
    """An int ≥ 0; 0 = adaptive (ONNX's spelling; torchvision's kernels take any value ≤ 0 so, its default −1)."""
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int) or sampling_ratio < 0:
        raise ModelError(f"roi_align: sampling_ratio must be an int ≥ 0 (0 = adaptive), got {sampling_ratio!r}")
    return sampling_ratio


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module (a drop-in for :class:`~frcnn_trt.ops.roi_pool.RoIPool`)."""

    def __init__(self, pooled_shape: Sequence[int] | int, spatial_scale: float, sampling_ratio: int = 2) -> None:
        super().__init__()
        self.pooled_shape = check_pooled_shape(pooled_shape, "RoIAlign")
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = _check_sampling(sampling_ratio)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_align(features, rois, self.pooled_shape, self.spatial_scale, self.sampling_ratio)

    def export_spec(self) -> dict[str, Any]:
        """What ``export.json`` records of the op (its ``roi_op`` section): the standard ``RoiAlign`` node."""
        return {"type": "RoIAlign", "domain": ONNX_DOMAIN, "op_type": ONNX_OP_TYPE,
                "pooled_shape": list(self.pooled_shape), "spatial_scale": self.spatial_scale,
                "sampling_ratio": self.sampling_ratio, "aligned": True,
                "coordinate_transformation_mode": COORDINATE_TRANSFORMATION_MODE}

    def extra_repr(self) -> str:
        return (f"pooled_shape={self.pooled_shape}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned=True")


# --------------------------------------------------------------------------------------------- ONNX form


def _translate_roi_align(features: Any, rois: Any, spatial_scale: float, pooled_height: int, pooled_width: int,
                         sampling_ratio: int = -1, aligned: bool = False) -> Any:
    """``torchvision::roi_align`` → ``Slice``/``Squeeze``/``Cast`` (batch indices), ``Slice`` (boxes), ``RoiAlign``."""
    from onnxscript import INT64, opset18

    op: Any = opset18  # called on the exporter's symbolic values, which its typed signatures do not describe
    indices = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64.dtype)
    boxes = op.Slice(rois, [1], [5], [1])
    return op.RoiAlign(
        features, boxes, indices,
        coordinate_transformation_mode=COORDINATE_TRANSFORMATION_MODE if aligned else "output_half_pixel",
        mode="avg", output_height=int(pooled_height), output_width=int(pooled_width),
        sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale),
    )


def onnx_translation_table() -> dict[Any, Any]:
    """The ``custom_translation_table`` entry for ``torch.onnx.export(..., dynamo=True)``."""
    return {torch.ops.torchvision.roi_align.default: _translate_roi_align}
