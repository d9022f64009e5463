"""What precision each backend really computes an export in (detect's banner, the precision report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.precision import effective_precision, export_precision, precision_of
from frcnn_trt.engines.tensorrt import build as B
from frcnn_trt.engines.tensorrt.runtime import TensorRTInfo
from frcnn_trt.errors import BackendError


def _info(precision: str, fp32_layers: int = 0) -> ExportInfo:
    data = {"precision": {"rpn.onnx": precision, "detector.onnx": precision}}
    if fp32_layers:
        data["quantization"] = {"fp32_layers": {"rpn.onnx": ["a"] * fp32_layers, "detector.onnx": []}}
    return ExportInfo(Path("."), data)


def test_fp16_on_onnxruntime_cpu_is_an_upcast() -> None:
    p = precision_of(_info("fp16"), "onnxruntime", "cpu")
    assert (p.computed, p.stored) == ("fp32", "fp16") and "upcast to FP32" in p.note
    assert effective_precision(_info("fp16"), "onnxruntime").startswith("fp32 (FP16 graph upcast")
    assert precision_of(_info("fp16"), "onnxruntime", "cuda").computed == "fp16"
    assert precision_of(_info("fp16"), "tensorrt").computed == "fp16"


def test_int8_and_torch() -> None:
    p = precision_of(_info("int8", 2), "onnxruntime", "cpu")
    assert p.computed == "int8" and "integer kernels" in p.note and "2 layer(s) kept FP32" in p.note
    assert precision_of(_info("int8"), "onnxruntime", "cuda").computed == "int8-simulated"
    assert precision_of(_info("int8"), "tensorrt").computed == "int8"
    t = precision_of(_info("int8"), "torch")
    assert t.computed == "fp32" and "FP32 source checkpoint" in t.note
    assert effective_precision(_info("fp32"), "torch") == "fp32" == export_precision(_info("fp32"))


def _trt(**kw: object) -> TensorRTInfo:
    base: dict = {"flavour": "tensorrt", "module": "tensorrt", "version": "10.13.0", "fp16_flag": True,
                  "strongly_typed_flag": True, "refit": True, "onnx_refitter": True}
    base.update(kw)
    return TensorRTInfo(**base)


def test_tensorrt_builds_int8_strongly_typed_and_refuses_other_precisions() -> None:
    plan = B.int8_plan("auto", _trt())
    assert (plan.precision, plan.strongly_typed, plan.builder_flags) == ("int8", True, ())
    assert B.int8_plan("auto", _trt(version="11.4.0", fp16_flag=False)).strongly_typed
    with pytest.raises(BackendError, match=r"INT8 \(QDQ\) export"):
        B.int8_plan("fp16", _trt())
    with pytest.raises(BackendError, match="no strongly typed networks"):
        B.int8_plan("auto", _trt(strongly_typed_flag=False, version="8.6.1"))


def test_a_cpu_target_int8_export_is_never_offered_to_tensorrt() -> None:
    import torch

    from frcnn_trt.engines.precision import int8_target
    from frcnn_trt.engines.tensorrt.backend import availability

    cpu = ExportInfo(Path("."), {"precision": {"rpn.onnx": "int8", "detector.onnx": "int8"},
                                 "quantization": {"target": "cpu"}})
    trt = ExportInfo(Path("."), {"precision": {"rpn.onnx": "int8", "detector.onnx": "int8"},
                                 "quantization": {"target": "tensorrt"}})
    assert (int8_target(cpu), int8_target(trt), int8_target(_info("fp32"))) == ("cpu", "tensorrt", None)
    p = precision_of(cpu, "tensorrt", "cuda")
    assert p.computed == "none" and "--int8-target tensorrt" in p.note
    ok, why = availability(torch.device("cuda"), cpu)
    assert not ok and "--int8-target tensorrt" in why
    assert precision_of(trt, "tensorrt", "cuda").computed == "int8"
