"""The engine backend protocol (:class:`Backend`) and what a backend module exposes (:class:`BackendSpec`).

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

Each backend module exposes one ``SPEC`` (:class:`BackendSpec`): its name, whether it can run here and why
not, the options it takes, how it loads an export, its library's version and the install command. The list
of backend modules, fastest first, is :mod:`frcnn_trt.engines.backends`; choosing and opening one is
:mod:`frcnn_trt.engines.selection`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from frcnn_trt.engines.export_format import ExportInfo

if TYPE_CHECKING:
    from frcnn_trt.model.faster_rcnn import FasterRCNN

__all__ = ["AvailabilityCheck", "Backend", "BackendLoader", "BackendSpec"]


class Backend(ABC):
    """One way of running the RPN and detector graphs. Subclasses set :attr:`name` and :attr:`device`."""

    #: the name of the backend's spec: ``"torch"``, ``"onnxruntime"``, ``"tensorrt"``
    name: str = ""
    #: where the input and output tensors live
    device: torch.device = torch.device("cpu")
    #: whether several threads may call :meth:`run_rpn` / :meth:`run_detector` of this one instance at once
    #: (torch and ONNX Runtime on a CPU: their kernels release the GIL; not a TensorRT execution context)
    concurrent_calls: bool = False

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


#: ``(device, export or None) → (can run here, why / how)``; never raises. With an export, the answer may
#: depend on it (TensorRT needs ``tensorrt.plugin`` only for the custom RoIPool node).
AvailabilityCheck = Callable[[torch.device, "ExportInfo | None"], tuple[bool, str]]
#: ``(export, device, options, model or None) → Backend``; raises BackendError when it cannot load. ``options``
#: are only the backend's own (:attr:`BackendSpec.options`); ``model`` is the exported FasterRCNN when the
#: caller holds it (the torch backend runs it instead of loading the source checkpoint).
BackendLoader = Callable[[ExportInfo, torch.device, Mapping[str, Any], "FasterRCNN | None"], Backend]


@dataclass(frozen=True)
class BackendSpec:
    """Everything the rest of the package needs to know about one backend module."""

    #: ``--backend`` name
    name: str
    #: one line for help texts and ``doctor``
    summary: str
    availability: AvailabilityCheck
    #: the option names its loader takes (``Detector.from_export(backend_options=...)``)
    options: frozenset[str]
    loader: BackendLoader
    #: the version of the library it runs on, ``None`` when that is not installed
    version: Callable[[], str | None]
    #: the command that installs what it needs
    install: str
