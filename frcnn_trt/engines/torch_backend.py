"""The eager PyTorch backend: the model itself (``rpn_blobs`` / ``detector``), on any torch device.

Glossary: ``N`` images, ``R`` RoIs, ``K`` classes including background (see :mod:`frcnn_trt.engines.protocol`).

It is the reference every other backend is checked against, and the fallback that always runs. From an
export directory it loads the checkpoint the export was made from (path and SHA-256 in ``export.json``).

Memory format (option ``memory_format``): ``"contiguous"`` (NCHW, the training layout) or ``"channels_last"``
(NHWC strides; same maths, other summation order: VGG16 features at 600 × 1000 within 1e-4 of NCHW, its conv body
0.78× as long on the 2-core CPU this was measured on). ``"auto"`` takes channels-last on a CPU when the backend
loads the checkpoint itself (``detect``, ``test``, ``benchmark`` of an export), and leaves a model handed in as
it is (the export's parity check against the float32 model; :meth:`Detector.from_model` and
:meth:`Detector.from_checkpoint`, which training's evaluation and ``rpn_generate`` use, stay NCHW: eager
numerics untouched). A model handed in is never converted in place: channels-last runs a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.protocol import Backend, BackendSpec
from frcnn_trt.errors import BackendError, CheckpointError
from frcnn_trt.io import sha256_file

if TYPE_CHECKING:
    from frcnn_trt.model.faster_rcnn import FasterRCNN

__all__ = ["MEMORY_FORMATS", "OPTIONS", "SPEC", "TorchBackend", "availability", "default_memory_format"]

#: ``memory_format`` choices (module docstring)
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
#: the options of :meth:`TorchBackend.from_export` (``Detector.from_export(backend_options=...)``)
OPTIONS = frozenset({"memory_format"})


def default_memory_format(device: torch.device) -> str:
    """The faster layout for inference on ``device``: channels-last on a CPU (measured, module docstring);
    NCHW elsewhere (not measured here)."""
    return "channels_last" if device.type == "cpu" else "contiguous"


def _check_format(memory_format: str) -> str:
    if memory_format not in MEMORY_FORMATS:
        raise BackendError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    return memory_format


def availability(device: torch.device, info: ExportInfo | None = None) -> tuple[bool, str]:
    """Always: eager PyTorch runs every export on any torch device."""
    return True, f"eager PyTorch {torch.__version__} on {device}"


class TorchBackend(Backend):
    """``run_rpn`` = ``model.rpn_blobs``, ``run_detector`` = ``model.detector``, under inference mode."""

    name = "torch"

    def __init__(self, model: FasterRCNN, device: str | torch.device | None = None,
                 memory_format: str = "contiguous", *, own_model: bool = False) -> None:
        """``memory_format``: ``"contiguous"`` (default: the model as it is), ``"channels_last"`` or ``"auto"``
        (:func:`default_memory_format`). ``own_model``: the backend may convert ``model`` in place (it loaded
        it); otherwise channels-last converts a copy."""
        self.device = resolve_device(device)
        fmt = _check_format(memory_format)
        self.memory_format = default_memory_format(self.device) if fmt == "auto" else fmt
        if self.memory_format == "channels_last":
            model = model if own_model else copy.deepcopy(model)
            model = model.to(memory_format=torch.channels_last)  # 4-D weights only (convs)
        self.model = model.to(self.device).eval()
        self.concurrent_calls = self.device.type == "cpu"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None,
                        memory_format: str = "contiguous") -> TorchBackend:
        # imported here: the model package (and torchvision under it) is not needed by the other backends,
        # and a one-image detect with ONNX Runtime should not pay for it at start-up
        from frcnn_trt.model.checkpoint import load_checkpoint
        from frcnn_trt.model.faster_rcnn import FasterRCNN

        dev = resolve_device(device)
        model, _ = load_checkpoint(path, device=dev)
        if not isinstance(model, FasterRCNN):  # pragma: no cover - load_checkpoint builds a FasterRCNN
            raise BackendError(f"{path} does not hold a FasterRCNN")
        return cls(model, dev, memory_format, own_model=True)

    @classmethod
    def from_export(cls, info: ExportInfo, device: str | torch.device | None = None,
                    model: FasterRCNN | None = None, memory_format: str = "auto") -> TorchBackend:
        """The export's source checkpoint (it must still exist and match its recorded SHA-256), or ``model``
        when the caller already holds the exported model (e.g. a benchmark of a freshly built net).
        ``memory_format="auto"``: the faster layout for a checkpoint it loads, ``model`` as it is."""
        fmt = _check_format(memory_format)
        if model is not None:
            return cls(model, device, "contiguous" if fmt == "auto" else fmt)
        src = info.source_checkpoint
        path = src.get("checkpoint")
        if not path:
            raise BackendError(f"{info.directory}: export.json names no source checkpoint; the torch backend "
                               "needs the checkpoint (use Detector.from_checkpoint)")
        ckpt = Path(path)
        if not ckpt.is_absolute():
            ckpt = (info.directory / ckpt).resolve()
        if not ckpt.is_file():
            raise BackendError(f"the torch backend needs the export's source checkpoint {ckpt}, which is gone")
        digest = sha256_file(ckpt)
        if src.get("sha256") and digest != src["sha256"]:
            raise BackendError(f"checkpoint {ckpt} changed since the export in {info.directory} (SHA-256 "
                               f"{digest[:12]}… vs {str(src['sha256'])[:12]}…): re-export, or use "
                               "Detector.from_checkpoint")
        try:
            return cls.from_checkpoint(ckpt, device, fmt)
        except CheckpointError as exc:
            raise BackendError(f"torch backend: {exc}") from None

    @torch.inference_mode()
    def run_rpn(self, blob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = blob.to(self.device, torch.float32)
        if self.memory_format == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model.rpn_blobs(x)

    @torch.inference_mode()
    def run_detector(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.detector(features, rois.to(self.device, torch.float32))

    def describe(self) -> str:
        layout = "channels-last" if self.memory_format == "channels_last" else "NCHW"
        return f"torch eager ({self.device}, fp32, {layout}, {torch.get_num_threads()} threads)" \
            if self.device.type == "cpu" else f"torch eager ({self.device}, fp32, {layout})"


def load(info: ExportInfo, device: torch.device, options: Mapping[str, Any], model: FasterRCNN | None = None
         ) -> TorchBackend:
    """The spec's loader: ``model`` when given, else the export's source checkpoint (option ``memory_format``)."""
    return TorchBackend.from_export(info, device, model=model, **options)


SPEC = BackendSpec(
    name="torch",
    summary="eager PyTorch: the model itself, the reference every backend is checked against",
    availability=availability,
    options=OPTIONS,
    loader=load,
    version=lambda: str(torch.__version__),
    install="pip install torch torchvision  (the PyPI wheels are CUDA builds; they run on a CPU too)",
)
