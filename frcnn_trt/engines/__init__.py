"""frcnn_trt.engines"""

from __future__ import annotations

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.base import BACKEND_NAMES, Backend, backend_availability
from frcnn_trt.engines.detector import (
    Detector,
    DetectorRun,
    ImageDetections,
    InferenceSettings,
    PhaseTimes,
    select_backend,
)
from frcnn_trt.errors import BackendError

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendError",
    "Detector",
    "DetectorRun",
    "ImageDetections",
    "InferenceSettings",
    "PhaseTimes",
    "backend_availability",
    "resolve_device",
    "select_backend",
]
