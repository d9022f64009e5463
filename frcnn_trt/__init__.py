"""frcnn-trt: py-faster-rcnn reproduced in PyTorch, deployed with ONNX Runtime and TensorRT."""

from __future__ import annotations

__version__ = "0.1.0"
