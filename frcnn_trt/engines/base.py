"""The engine backend protocol, and which backends can run here.

Glossary: ``N`` images, ``H × W`` blob size, ``C`` feature channels, ``H' × W'`` feature map, ``A`` anchors
per location, ``R`` RoIs, ``K`` classes including background.

A backend runs the two network halves of an export (``rpn.onnx``, ``detector.onnx``) or of a model, on
torch tensors, on its :attr:`Backend.device`:

- :meth:`Backend.run_rpn`: image blob ``[N, 3, H, W]`` float32 → ``(features [N, C, H', W'],
  rpn_cls_prob (N, 2A, H', W'), rpn_bbox_pred (N, 4A, H', W'))``;
- :meth:`Backend.run_detector`: ``(features, rois [R, 5] float32)`` → ``(cls_prob [R, K], bbox_pred [R, 4K])``.

Everything around them (scaling, the ProposalLayer, per-class NMS) is shared code in
:mod:`frcnn_trt.engines.detector`, so every backend gives the same detections up to numeric precision.
``features`` are opaque between the two calls (an FP16 export passes them as float16); every other
output is float32.

Backends, fastest first: ``tensorrt`` (another module, ``frcnn_trt.engines.tensorrt_backend``, plugs in
here by providing ``availability(device) -> (bool, reason)`` and ``TensorRTBackend.from_export(info,
device=..., **options)``), ``onnxruntime``, ``torch``. :func:`backend_availability` says which can run
and why not; an explicitly requested backend that cannot run raises :class:`BackendError` — nothing
falls back silently.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from frcnn_trt.distributed import resolve_device
from frcnn_trt.errors import BackendError

__all__ = [
    "BACKEND_NAMES",
    "BACKEND_OPTIONS",
    "Backend",
    "BackendError",
    "backend_availability",
    "resolve_device",
]

#: Backends in order of preference for ``backend="auto"`` (fastest first).
BACKEND_NAMES: tuple[str, ...] = ("tensorrt", "onnxruntime", "torch")

_MODULES = {
    "tensorrt": "frcnn_trt.engines.tensorrt_backend",
    "onnxruntime": "frcnn_trt.engines.onnxruntime_backend",
    "torch": "frcnn_trt.engines.torch_backend",
}

#: The options each backend's ``from_export`` takes (``Detector.from_export(backend_options=...)``); with
#: ``backend="auto"`` each candidate gets its own from one dict. TensorRT's are :class:`BuildSettings` fields
#: plus the engine cache's; the torch backend takes none.
BACKEND_OPTIONS: dict[str, frozenset[str]] = {
    "tensorrt": frozenset({"precision", "workspace_mib", "optimization_level", "plugin_impl", "timing_cache",
                           "cache_dir", "build", "force", "verbose"}),
    "onnxruntime": frozenset({"intra_op_threads", "graph_optimization", "io_binding"}),
    "torch": frozenset(),
}


def check_backend_options(options: dict[str, Any]) -> None:
    """BackendError naming any option that no backend takes."""
    unknown = sorted(set(options) - frozenset().union(*BACKEND_OPTIONS.values()))
    if unknown:
        raise BackendError(f"unknown backend option(s) {unknown}; known: "
                           + "; ".join(f"{b}: {', '.join(sorted(o)) or '(none)'}" for b, o in BACKEND_OPTIONS.items()))


def options_for(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The part of ``options`` backend ``name`` takes (after :func:`check_backend_options`)."""
    check_backend_options(options)
    return {k: v for k, v in options.items() if k in BACKEND_OPTIONS[name]}


class Backend(ABC):
    """One way of running the RPN and detector graphs. Subclasses set :attr:`name` and :attr:`device`."""

    #: ``"torch"``, ``"onnxruntime"``, ``"tensorrt"``
    name: str = ""
    #: where the input and output tensors live
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def run_rpn(self, blob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``blob [N, 3, H, W]`` float32 → ``(features, rpn_cls_prob, rpn_bbox_pred)`` on :attr:`device`."""

    @abstractmethod
    def run_detector(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """``features`` (from :meth:`run_rpn`), ``rois [R ≥ 1, 5]`` float32 → ``(cls_prob [R, K],
        bbox_pred [R, 4K])`` float32 on :attr:`device`."""

    def synchronize(self) -> None:
        """Wait for queued device work (for honest per-phase timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``onnxruntime (CPUExecutionProvider, fp32)``."""
        return f"{self.name} ({self.device})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def backend_module(name: str) -> ModuleType | None:
    """The module implementing backend ``name``, or ``None`` when this build does not have it."""
    if name not in _MODULES:
        raise BackendError(f"unknown backend {name!r}; expected one of auto, {', '.join(BACKEND_NAMES)}")
    if importlib.util.find_spec(_MODULES[name]) is None:
        return None
    return importlib.import_module(_MODULES[name])


def backend_availability(device: str | torch.device | None = None) -> dict[str, tuple[bool, str]]:
    """For each backend (preference order): ``(can run here, why / how)``. Imports nothing heavy twice."""
    dev = resolve_device(device)
    out: dict[str, tuple[bool, str]] = {}
    for name in BACKEND_NAMES:
        try:
            module = backend_module(name)
        except ImportError as exc:  # the module exists but a dependency of it is missing
            out[name] = (False, f"cannot import {_MODULES[name]}: {exc}")
            continue
        if module is None:
            out[name] = (False, f"the {name} backend is not part of this build yet ({_MODULES[name]} missing)")
            continue
        check = getattr(module, "availability", None)
        out[name] = check(dev) if check is not None else (True, "available")
    return out
