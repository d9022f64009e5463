"""frcnn_trt.engines: the inference layer (backends, the shared Detector, the runner over many images)."""

from __future__ import annotations

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.backends import BACKEND_NAMES, backend_availability
from frcnn_trt.engines.detector import (
    Detector,
    DetectorRun,
    InferenceSettings,
    PhaseTimes,
    Task,
)
from frcnn_trt.engines.protocol import Backend
from frcnn_trt.engines.results import ImageDetections
from frcnn_trt.engines.runner import ImageResult, Runner, RunResult
from frcnn_trt.engines.selection import open_backend, select_backend
from frcnn_trt.errors import BackendError

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendError",
    "Detector",
    "DetectorRun",
    "ImageDetections",
    "ImageResult",
    "InferenceSettings",
    "PhaseTimes",
    "RunResult",
    "Runner",
    "Task",
    "backend_availability",
    "open_backend",
    "resolve_device",
    "select_backend",
]
