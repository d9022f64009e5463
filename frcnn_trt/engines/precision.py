"""What precision a backend really computes an export in — never the precision the files merely hold.

An FP16 export run by ONNX Runtime's CPU provider is computed in float32 (that provider has no float16
Conv/Gemm kernels: it inserts casts and runs float32 kernels on float16-rounded weights); the torch backend
runs the float32 source checkpoint whatever the export holds; an INT8 (QDQ) export runs with integer kernels
on ONNX Runtime's CPU provider and as an explicitly quantized, strongly typed network on TensorRT, while ONNX
Runtime's CUDA provider executes the Q/DQ nodes around float kernels (simulated INT8). :func:`effective_precision`
says which, with a note; ``detect``'s banner and the precision report print it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from frcnn_trt.engines.export_format import ExportInfo

__all__ = ["EffectivePrecision", "effective_precision", "export_precision", "int8_target", "precision_of"]


@dataclass(frozen=True)
class EffectivePrecision:
    """``computed``: fp32 / fp16 / int8 / int8-simulated; ``stored``: what the graphs hold; ``note``: why."""

    computed: str
    stored: str
    note: str

    def __str__(self) -> str:
        return self.computed if not self.note else f"{self.computed} ({self.note})"


def export_precision(info: ExportInfo) -> str:
    """The export's graph precision: ``int8`` when any graph is INT8, else ``fp16`` when any is, else ``fp32``."""
    values = set(info.precision.values())
    return next((p for p in ("int8", "fp16") if p in values), "fp32")


def int8_target(info: ExportInfo) -> str | None:
    """An INT8 export's quantization target: ``cpu`` (UINT8 activations, for ONNX Runtime's CPU kernels; TensorRT
    refuses their non-zero zero points) or ``tensorrt`` (symmetric INT8); None for a float export."""
    if export_precision(info) != "int8":
        return None
    q = info.data.get("quantization") or {}
    return str(q.get("target", "tensorrt"))


def _fp32_layers(info: ExportInfo) -> int:
    q = info.data.get("quantization") or {}
    return sum(len(v) for v in (q.get("fp32_layers") or {}).values())


def _onnxruntime(stored: str, device: torch.device, info: ExportInfo) -> EffectivePrecision:
    cpu = device.type == "cpu"
    if stored == "fp16":
        if cpu:
            return EffectivePrecision("fp32", stored, "FP16 graph upcast to FP32 by ONNX Runtime's CPU provider, "
                                      "which has no float16 Conv/Gemm kernels")
        return EffectivePrecision("fp16", stored, "")
    if stored == "int8":
        kept = _fp32_layers(info)
        tail = f"; {kept} layer(s) kept FP32 by the export" if kept else ""
        if cpu:
            return EffectivePrecision("int8", stored, f"QDQ graph fused into integer kernels by ONNX Runtime's CPU "
                                      f"provider{tail}")
        return EffectivePrecision("int8-simulated", stored, "ONNX Runtime's CUDA provider runs the Q/DQ nodes "
                                  "around float kernels: INT8 rounding, FP32 arithmetic" + tail)
    return EffectivePrecision("fp32", stored, "")


def precision_of(info: ExportInfo, backend_name: str, device: str | torch.device = "cpu") -> EffectivePrecision:
    """What ``backend_name`` (``torch``, ``onnxruntime``, ``tensorrt``) computes ``info``'s export in on ``device``."""
    stored = export_precision(info)
    dev = torch.device(device)
    if backend_name == "torch":
        if stored == "fp32":
            return EffectivePrecision("fp32", stored, "")
        return EffectivePrecision("fp32", stored, f"the torch backend runs the FP32 source checkpoint, not the "
                                  f"{stored.upper()} graphs")
    if backend_name == "onnxruntime":
        return _onnxruntime(stored, dev, info)
    if backend_name == "tensorrt":
        if int8_target(info) == "cpu":
            return EffectivePrecision("none", stored, "this INT8 export was quantized for ONNX Runtime on a CPU "
                                      "(UINT8 activations), which TensorRT cannot build: re-export with "
                                      "--int8-target tensorrt")
        if stored == "int8":
            return EffectivePrecision("int8", stored, "QDQ graph built as a strongly typed (explicitly quantized) "
                                      "TensorRT network")
        return EffectivePrecision(stored, stored, "")
    return EffectivePrecision(stored, stored, f"backend {backend_name!r}: precision as stored, not observed")


def effective_precision(info: ExportInfo, backend_name: str, device: str | torch.device = "cpu") -> str:
    """One line for a banner: e.g. ``"fp32 (FP16 graph upcast to FP32 by ONNX Runtime's CPU provider, ...)"``."""
    return str(precision_of(info, backend_name, device))
