"""frcnn_trt.export"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportResult", "export_model", "find_default_checkpoint", "load_export", "random_checkpoint",
           "run_export", "run_parity"]


def __getattr__(name: str) -> Any:
    # Lazy: frcnn_trt.engines imports frcnn_trt.engines.export_format, and the exporter imports the engines.
    if name == "load_export":
        from frcnn_trt.engines.export_format import load_export

        return load_export
    if name in __all__:
        from frcnn_trt.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module 'frcnn_trt.export' has no attribute {name!r}")
