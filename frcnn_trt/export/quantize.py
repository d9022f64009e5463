"""QDQ INT8 graphs with ONNX Runtime's quantizer (``onnxruntime.quantization.quantize_static``, QDQ format).

What a quantized graph holds: every quantized Conv / Gemm / MatMul reads a ``DequantizeLinear`` of an INT8
weight (per output channel, symmetric) and a ``DequantizeLinear`` of its ``QuantizeLinear``-d input; biases
stay float32 (TensorRT's parser refuses an INT32 ``DequantizeLinear``, and ONNX Runtime quantizes them itself
when it fuses). Two schemes (:data:`SCHEMES`), one per runtime, because each runtime's fast path needs its own:

- ``cpu`` (ONNX Runtime's CPU provider): activations UINT8 per tensor, asymmetric; weights INT8 with 7-bit
  range (``reduce_range``); Relu and MaxPool quantized too. ONNX Runtime's x86 integer GEMM is U8S8 (UINT8
  activations × INT8 weights); on CPUs without VNNI it multiplies with ``vpmaddubsw``, whose 16-bit sums
  saturate for full-range INT8 weights, so weights keep 7 bits. A Relu whose output is quantized asymmetrically
  has zero point 0: the quantizer drops it (the Q's clamp at 0 is the Relu), so Conv → Relu → Conv becomes
  one ``QLinearConv`` into the next, and MaxPool runs on UINT8 between them: no float tensor between layers.
- ``tensorrt`` (TensorRT's explicit quantization): activations INT8 per tensor, symmetric (zero point 0, all
  TensorRT takes), weights full-range INT8; Relu / MaxPool stay float between Q/DQ (TensorRT fuses them). ONNX
  Runtime runs this form with S8S8 kernels only with ``session.qdqisint8allowed`` = 1, and on x86 without VNNI
  those are several times slower than its FP32 convolutions, with the Relu between DQ and Q in float.

Nothing else is quantized: the RoI op (``frcnn.RoIPool`` / ``RoiAlign``), the softmaxes and normalisations
stay float, and box decoding and NMS are outside the graphs anyway. Layers named in ``exclude`` stay float32
(chosen by :mod:`frcnn_trt.export.sensitivity`).

The ranges come from :mod:`frcnn_trt.export.calibration` and reach ``quantize_static`` through its JSON
calibration cache, so the quantizer itself never runs the graph (the detector's custom RoI node needs no
runtime here). :func:`check_scales` refuses a graph with a non-finite or non-positive scale, naming the tensor.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from frcnn_trt.errors import ExportError

__all__ = ["OP_TYPES", "SCHEMES", "TARGETS", "QuantScheme", "check_scales", "op_histogram", "qdq_layers",
           "quantizable_nodes", "quantize_graph", "scheme"]

log = logging.getLogger("frcnn_trt.export.quantize")

#: the layers (weights per channel + calibrated inputs); a scheme may quantize more ops around them
OP_TYPES = ("Conv", "Gemm", "MatMul")
#: ``--int8-target`` values (:data:`SCHEMES`)
TARGETS = ("cpu", "tensorrt")


@dataclass(frozen=True)
class QuantScheme:
    """How one target's graphs are quantized (see the module doc)."""

    target: str
    activation: str  # "uint8" | "int8"
    symmetric_activations: bool
    reduce_range: bool  # 7-bit weights
    op_types: tuple[str, ...]  # quantized (and calibrated) op types

    @property
    def note(self) -> str:
        act = "UINT8 per tensor, asymmetric" if self.activation == "uint8" else "INT8 per tensor, symmetric"
        weights = "7-bit" if self.reduce_range else "8-bit"
        return (f"QDQ INT8 for {self.target} (onnxruntime.quantization; {act} activations, per-channel symmetric "
                f"{weights} INT8 weights, float32 biases) for {'/'.join(self.op_types)}; float32 RoI op, softmaxes, "
                "normalisations, image input and outputs (box decoding and NMS run in float32 outside); layers "
                "listed in quantization.fp32_layers stay float32")

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "weights": f"INT8 per output channel, symmetric, "
                f"{'7-bit range (reduce_range)' if self.reduce_range else 'full range'}",
                "activations": ("UINT8 per tensor, asymmetric" if self.activation == "uint8"
                                else "INT8 per tensor, symmetric (zero point 0)"),
                "op_types": list(self.op_types)}


SCHEMES = {
    "cpu": QuantScheme("cpu", "uint8", False, True, (*OP_TYPES, "Relu", "MaxPool")),
    "tensorrt": QuantScheme("tensorrt", "int8", True, False, OP_TYPES),
}


def scheme(target: str) -> QuantScheme:
    if target not in SCHEMES:
        raise ExportError(f"--int8-target {target!r} unknown: use one of {', '.join(TARGETS)}")
    return SCHEMES[target]


def quantizable_nodes(proto: onnx.ModelProto, op_types: Sequence[str] = OP_TYPES) -> list[str]:
    """Names of the nodes the quantizer would quantize (op type in ``op_types`` and a constant weight)."""
    inits = {i.name for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type in op_types and len(n.input) > 1 and n.input[1] in inits]


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The root logger at ERROR while the quantizer runs ("consider pre-processing" warnings on every call),
    its level restored after."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(proto: onnx.ModelProto, ranges: Any, *, exclude: Sequence[str] = (),
                   quant: QuantScheme = SCHEMES["tensorrt"], what: str = "graph") -> onnx.ModelProto:
    """The QDQ INT8 form of the float graph ``proto`` with calibration ``ranges`` (ONNX Runtime ``TensorsData``)
    in scheme ``quant``; nodes named in ``exclude`` stay float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    unknown = sorted(set(exclude) - {n.name for n in proto.graph.node})
    if unknown:
        raise ExportError(f"{what}: layers to keep in FP32 not in the graph: {unknown}")
    activation = QuantType.QUInt8 if quant.activation == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="frcnn_qdq_") as tmp, _quiet_quantizer():
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
        save_tensors_data(ranges, cache)
        try:
            quantize_static(
                proto, out, None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(quant.op_types),
                per_channel=True, reduce_range=quant.reduce_range, activation_type=activation,
                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude), calibration_cache_path=cache,
                calibrate_method=ranges.calibration_method,
                extra_options={"ActivationSymmetric": quant.symmetric_activations, "WeightSymmetric": True,
                               "QuantizeBias": False},
            )
        except Exception as exc:  # the quantizer raises ValueError/RuntimeError/onnx errors
            raise ExportError(f"{what}: onnxruntime.quantization failed: {type(exc).__name__}: {exc}") from exc
        qproto = onnx.load(str(out))
    check_scales(qproto, what)
    return qproto


def check_scales(proto: onnx.ModelProto, what: str) -> None:
    """Every Q/DQ scale finite and > 0 (a NaN/inf/0 scale makes a graph that runs and computes garbage)."""
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        init = inits.get(node.input[1])
        if init is None:
            continue
        scale = numpy_helper.to_array(init).astype(np.float64)
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            bad = scale[~np.isfinite(scale) | (scale <= 0)].ravel()[:4].tolist()
            raise ExportError(f"{what}: quantization scale {init.name!r} of tensor {node.input[0]!r} is not finite "
                              f"and positive ({bad}): the calibration of that tensor failed")


def _producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in proto.graph.node for o in n.output}


def qdq_layers(proto: onnx.ModelProto, op_types: Sequence[str] = OP_TYPES) -> dict[str, dict[str, Any]]:
    """Per Conv/Gemm/MatMul of a (possibly QDQ) graph: ``{"op", "int8": input and weight both come from
    DequantizeLinear, "weight_axis": the per-channel axis or None}``."""
    prod = _producers(proto)
    inits = {i.name for i in proto.graph.initializer}
    out: dict[str, dict[str, Any]] = {}
    for n in proto.graph.node:
        if n.op_type not in op_types or len(n.input) < 2:
            continue
        x, w = prod.get(n.input[0]), prod.get(n.input[1])
        if n.input[1] in inits and w is None:
            out[n.name] = {"op": n.op_type, "int8": False, "weight_axis": None}
            continue
        int8 = bool(x is not None and x.op_type == "DequantizeLinear" and w is not None
                    and w.op_type == "DequantizeLinear")
        axis = None
        if int8 and w is not None:
            axis = next((int(a.i) for a in w.attribute if a.name == "axis"), None)
        out[n.name] = {"op": n.op_type, "int8": int8, "weight_axis": axis}
    return out


def op_histogram(proto: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))
