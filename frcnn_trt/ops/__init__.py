"""Pure tensor ops: the RoI ops of the Fast R-CNN head, each with its eager and ONNX forms.

- :mod:`frcnn_trt.ops.roi_pool`: RoI max pooling with Caffe semantics (py-faster-rcnn's, the default), exported
  as the custom node ``frcnn.RoIPool`` (ONNX Runtime form: ``MaxRoiPool``; TensorRT: our plugin);
- :mod:`frcnn_trt.ops.roi_align`: torchvision's bilinear RoI align, half-pixel aligned, exported as the standard
  ``RoiAlign`` node.

Both modules take ``(features [N, C, H, W], rois [R, 5])`` and describe themselves for export
(``export_spec()``).
"""

from __future__ import annotations

from frcnn_trt.ops.roi_align import RoIAlign, roi_align
from frcnn_trt.ops.roi_pool import (
    ONNX_DOMAIN,
    ONNX_OP_TYPE,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    RoIPool,
    onnx_translation_table,
    register_onnx_schema,
    roi_pool,
    to_onnxruntime,
)

__all__ = [
    "ONNX_DOMAIN",
    "ONNX_OP_TYPE",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "RoIAlign",
    "RoIPool",
    "onnx_translation_table",
    "register_onnx_schema",
    "roi_align",
    "roi_pool",
    "to_onnxruntime",
]
