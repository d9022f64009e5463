"""Which layers stay FP32: each layer's INT8 sensitivity, measured, and a greedy pick until within tolerance.

Glossary: ``L`` quantizable layers of one graph (Conv / Gemm / MatMul), ``S`` sample images.

The error of a candidate graph is measured on ``S`` calibration samples against the float graph on the same
inputs: per output the relative L2 error ``‖q − f‖ / ‖f‖``, the largest over the outputs, averaged over the
samples (:class:`GraphProbe`). Then (:func:`select_fp32_layers`):

1. all ``L`` layers INT8 → error ``e₀``; done if ``e₀ ≤ tolerance``;
2. per layer, the error with only that layer left FP32 → its sensitivity ``e₀ − e_l`` (what keeping it float buys);
3. the most sensitive layers are kept FP32 one at a time, re-measuring the whole graph after each, until the
   error is within ``tolerance`` or the cap is reached.

A float layer costs: its convolution at FP32 speed (on CPU 2-4x its INT8 time) plus a dequantize of its input
and a quantize of its output (full feature maps), so the pick is bounded by what it buys. The rule: a layer
stays FP32 only if **(a)** the all-INT8 error exceeds ``tolerance``; **(b)** its own sensitivity is at least
``min_gain`` (a fraction, default 10 %) of the all-INT8 error, and keeping it (with those already kept) lowers
the whole graph's error by at least that much again; **(c)** at most ``max_fp32`` layers stay float. Callers
derive ``max_fp32`` from a fraction of the layers (:func:`fp32_cap`). With random weights, where every layer
contributes a similar small share, nothing passes (b) and the graph is all INT8.

Every measurement re-quantizes from the cached ranges (no recalibration), so this costs ``L + k + 1`` graph
quantizations and runs of ``S`` samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from frcnn_trt.export.calibration import Feeds

__all__ = ["MIN_GAIN", "GraphProbe", "Selection", "fp32_cap", "select_fp32_layers"]

log = logging.getLogger("frcnn_trt.export.sensitivity")

#: a layer kept FP32 must buy at least this fraction of the all-INT8 error (see the module doc)
MIN_GAIN = 0.10

#: quantize(exclude) → the QDQ graph with those layers left float
Quantizer = Callable[[Sequence[str]], onnx.ModelProto]


@dataclass
class GraphProbe:
    """Float reference outputs of one graph on sample feeds; :meth:`error` of any candidate graph.
    ``prepare`` turns a graph into what ONNX Runtime loads (the detector's RoI node rewrite)."""

    feeds: list[Feeds]
    reference: list[list[np.ndarray]] = field(default_factory=list)
    prepare: Callable[[onnx.ModelProto], onnx.ModelProto] = lambda p: p

    def run(self, proto: onnx.ModelProto) -> list[list[np.ndarray]]:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        session = ort.InferenceSession(self.prepare(proto).SerializeToString(), so, providers=["CPUExecutionProvider"])
        return [session.run(None, f) for f in self.feeds]

    def set_reference(self, float_proto: onnx.ModelProto) -> None:
        self.reference = self.run(float_proto)

    def error(self, proto: onnx.ModelProto) -> float:
        """Mean over samples of the largest relative L2 error over the outputs."""
        errs = []
        for ref, out in zip(self.reference, self.run(proto), strict=True):
            rel = [float(np.linalg.norm(o.astype(np.float64) - r) / max(float(np.linalg.norm(r)), 1e-12))
                   for r, o in zip(ref, out, strict=True)]
            errs.append(max(rel))
        return float(np.mean(errs)) if errs else 0.0


@dataclass
class Selection:
    """The outcome: layers kept FP32, the measured errors and each layer's sensitivity."""

    fp32_layers: list[str]
    int8_layers: list[str]
    error_all_int8: float
    error_final: float
    tolerance: float
    sensitivity: dict[str, float]
    steps: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        ranked = sorted(self.sensitivity.items(), key=lambda kv: -kv[1])
        return {"fp32_layers": self.fp32_layers, "int8_layers": self.int8_layers,
                "error_all_int8": self.error_all_int8, "error_final": self.error_final, "tolerance": self.tolerance,
                "metric": "mean over sample images of max over outputs of ‖int8 − fp32‖₂ / ‖fp32‖₂",
                "sensitivity": [{"layer": k, "error_drop_if_fp32": v} for k, v in ranked], "steps": self.steps}


def fp32_cap(num_layers: int, fraction: float, max_layers: int) -> int:
    """At most ``⌈fraction · L⌉`` and ``max_layers`` layers stay FP32."""
    return max(0, min(max_layers, math.ceil(fraction * num_layers - 1e-9)))


def select_fp32_layers(layers: Sequence[str], quantize: Quantizer, probe: GraphProbe, *, tolerance: float,
                       max_fp32: int, min_gain: float = MIN_GAIN) -> tuple[Selection, onnx.ModelProto]:
    """See the module doc; returns the selection and the final QDQ graph."""
    best = quantize(())
    e0 = probe.error(best)
    steps: list[dict[str, Any]] = [{"fp32": [], "error": e0}]
    sensitivity: dict[str, float] = {}
    if e0 <= tolerance or max_fp32 <= 0:
        return Selection([], list(layers), e0, e0, tolerance, sensitivity, steps), best
    for name in layers:
        sensitivity[name] = e0 - probe.error(quantize([name]))
        log.info("sensitivity %s: %.4g", name, sensitivity[name])
    worth = min_gain * e0
    kept: list[str] = []
    err = e0
    for name, gain in sorted(sensitivity.items(), key=lambda kv: -kv[1]):
        if err <= tolerance or len(kept) >= max_fp32 or gain < worth or gain <= 0:
            break
        trial = quantize([*kept, name])
        trial_err = probe.error(trial)
        steps.append({"fp32": [*kept, name], "error": trial_err})
        if err - trial_err >= worth:
            kept.append(name)
            err, best = trial_err, trial
    return Selection(kept, [n for n in layers if n not in kept], e0, err, tolerance, sensitivity, steps), best
