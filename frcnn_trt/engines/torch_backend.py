"""The eager PyTorch backend: the model itself (``rpn_blobs`` / ``detector``), on any torch device.

Glossary: ``N`` images, ``R`` RoIs, ``K`` classes including background (see :mod:`frcnn_trt.engines.protocol`).

It is the reference every other backend is checked against, and the fallback that always runs. From an
export directory it loads the checkpoint the export was made from (path and SHA-256 in ``export.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.protocol import Backend, BackendSpec
from frcnn_trt.errors import BackendError, CheckpointError
from frcnn_trt.io import sha256_file
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN

__all__ = ["SPEC", "TorchBackend", "availability"]


def availability(device: torch.device, info: ExportInfo | None = None) -> tuple[bool, str]:
    """Always: eager PyTorch runs every export on any torch device."""
    return True, f"eager PyTorch {torch.__version__} on {device}"


class TorchBackend(Backend):
    """``run_rpn`` = ``model.rpn_blobs``, ``run_detector`` = ``model.detector``, under inference mode."""

    name = "torch"

    def __init__(self, model: FasterRCNN, device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.concurrent_calls = self.device.type == "cpu"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> TorchBackend:
        dev = resolve_device(device)
        model, _ = load_checkpoint(path, device=dev)
        if not isinstance(model, FasterRCNN):  # pragma: no cover - load_checkpoint builds a FasterRCNN
            raise BackendError(f"{path} does not hold a FasterRCNN")
        return cls(model, dev)

    @classmethod
    def from_export(cls, info: ExportInfo, device: str | torch.device | None = None,
                    model: FasterRCNN | None = None) -> TorchBackend:
        """The export's source checkpoint (it must still exist and match its recorded SHA-256), or ``model``
        when the caller already holds the exported model (e.g. a benchmark of a freshly built net)."""
        if model is not None:
            return cls(model, device)
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
            return cls.from_checkpoint(ckpt, device)
        except CheckpointError as exc:
            raise BackendError(f"torch backend: {exc}") from None

    @torch.inference_mode()
    def run_rpn(self, blob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.rpn_blobs(blob.to(self.device, torch.float32))

    @torch.inference_mode()
    def run_detector(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.detector(features, rois.to(self.device, torch.float32))

    def describe(self) -> str:
        return f"torch eager ({self.device}, fp32, {torch.get_num_threads()} threads)" \
            if self.device.type == "cpu" else f"torch eager ({self.device}, fp32)"


def load(info: ExportInfo, device: torch.device, options: Mapping[str, Any], model: FasterRCNN | None = None
         ) -> TorchBackend:
    """The spec's loader: ``model`` when given, else the export's source checkpoint (it takes no options)."""
    return TorchBackend.from_export(info, device, model=model)


SPEC = BackendSpec(
    name="torch",
    summary="eager PyTorch: the model itself, the reference every backend is checked against",
    availability=availability,
    options=frozenset(),
    loader=load,
    version=lambda: str(torch.__version__),
    install="pip install torch torchvision  (the PyPI wheels are CUDA builds; they run on a CPU too)",
)
