"""Pure tensor ops: RoI max pooling with Caffe semantics, with its ONNX and ONNX Runtime forms."""

from __future__ import annotations

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
    "RoIPool",
    "onnx_translation_table",
    "register_onnx_schema",
    "roi_pool",
    "to_onnxruntime",
]
