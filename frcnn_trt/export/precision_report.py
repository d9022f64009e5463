"""The precision report of an export (FP32, FP16 or INT8): what each layer really computes in, and what it costs.

Written as ``precision_report.json`` in the export folder and printed as a table:

- ``layers``: per Conv / Gemm / MatMul of each graph, the kernel ONNX Runtime's CPU provider runs after its
  graph optimisations (the optimised graph is saved and read back) and its precision: ``int8`` (an integer
  kernel such as ``QLinearConv`` / ``QGemm`` / ``MatMulInteger``), ``fp32``, ``fp16``, or ``fp32 (upcast from
  fp16)`` when a float16 graph's weights reach a float32 kernel (the CPU provider has no float16 Conv/Gemm);
- ``tensorrt``: TensorRT's per-layer information from the engine inspector where TensorRT and a GPU are here;
  otherwise why not, and what TensorRT for RTX (CPU-only builder) said when asked to parse and build ``rpn.onnx``;
- ``outputs``: per graph output, max |Δ| against the FP32 torch model (:func:`frcnn_trt.export.parity.parity_report`);
- ``detections``: the match rate of the FP32 torch detections (same class, IoU ≥ 0.5);
- ``validation`` (``--val IMDB``): mAP and ms/image of each precision side by side (:func:`add_validation`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.export_format import DETECTOR_FILE, RPN_FILE, ExportInfo, load_export
from frcnn_trt.engines.onnxruntime_backend import session_options
from frcnn_trt.engines.precision import export_precision, precision_of
from frcnn_trt.export.parity import parity_report
from frcnn_trt.io import atomic_write_json
from frcnn_trt.ops.roi_pool import to_onnxruntime

__all__ = ["REPORT_FILE", "add_validation", "ort_layer_precision", "precision_report", "print_report",
           "tensorrt_layers"]

log = logging.getLogger("frcnn_trt.export.precision")

REPORT_FILE = "precision_report.json"
_HEAVY = ("Conv", "Gemm", "MatMul")
_INT_KERNELS = frozenset({"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm",
                          "MatMulIntegerToFloat", "DynamicQuantizeMatMul"})
_FLOAT_KERNELS = frozenset({"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "NchwcConv"})


def _optimized(path: Path, rewrite: bool) -> tuple[Any, Any]:
    """(the exported graph, ONNX Runtime's optimised graph) on the CPU provider, as the backend opens it."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    payload = (to_onnxruntime(proto) if rewrite else proto).SerializeToString()
    with tempfile.TemporaryDirectory(prefix="frcnn_opt_") as tmp:
        so = session_options()
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(payload, so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath)
    return proto, optimized


def _kernel_precision(node: Any, init_types: Mapping[str, int], stored: str) -> str:
    import onnx

    if node.op_type in _INT_KERNELS:
        return "int8"
    wtype = init_types.get(node.input[1]) if len(node.input) > 1 else None
    if wtype == onnx.TensorProto.FLOAT16:
        return "fp16"
    return "fp32 (upcast from fp16)" if stored == "fp16" else "fp32"


def _base(name: str) -> str:
    """An optimised node's name less the prefixes ONNX Runtime adds (fusion; float16 → float32 cast insertion)."""
    return name.removeprefix("fused ").removeprefix("InsertedPrecisionFreeCast_")


def ort_layer_precision(path: str | Path, *, rewrite: bool = False, stored: str = "fp32") -> dict[str, dict[str, str]]:
    """Per exported Conv/Gemm/MatMul node: ``{"kernel": the optimised node's op type, "precision": ...}``.
    An optimised node belongs to the exported node whose name, output name, or fused activation's output name it
    carries (ONNX Runtime appends ``_token_N`` when it fuses Q/DQ, names NCHWc convolutions ``<output>_nchwc``,
    prefixes ``fused `` and, where it upcasts float16, ``InsertedPrecisionFreeCast_``)."""
    proto, optimized = _optimized(Path(path), rewrite)
    init_types = {i.name: int(i.data_type) for i in optimized.graph.initializer}
    kernels = [n for n in optimized.graph.node if n.op_type in _INT_KERNELS | _FLOAT_KERNELS]
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: dict[str, dict[str, str]] = {}
    for node in proto.graph.node:
        if node.op_type not in _HEAVY:
            continue
        fused = [c.output[0] for c in consumers.get(node.output[0], []) if c.op_type in ("Relu", "Clip")]
        names = [node.name, node.output[0], *fused]
        match = next((k for c in names for k in kernels if (b := _base(k.name)) == c or b.startswith(c + "_")), None)
        if match is None:
            out[node.name] = {"kernel": "?", "precision": "unknown (not found after optimisation)"}
            continue
        out[node.name] = {"kernel": match.op_type, "precision": _kernel_precision(match, init_types, stored)}
    return out


def tensorrt_layers(info: ExportInfo, *, rtx_build: bool = True) -> dict[str, Any]:
    """TensorRT's view: engine-inspector layers need TensorRT with a GPU; else the reason, and what TensorRT for
    RTX says when asked to parse (and, ``rtx_build``: build for compute capability 8.6) the ``rpn.onnx``."""
    from frcnn_trt.engines.tensorrt import build as B
    from frcnn_trt.engines.tensorrt import settings as S
    from frcnn_trt.engines.tensorrt.runtime import gpu_compute_capability, load_tensorrt
    from frcnn_trt.errors import BackendError

    out: dict[str, Any] = {}
    try:
        load_tensorrt("tensorrt")
        full = gpu_compute_capability() is not None
    except BackendError as exc:
        full, out["skipped"] = False, f"TensorRT is not installed here ({exc})"
    if full:
        out["skipped"] = "per-layer inspection runs where the engines are built: see export.json 'engines'"
    elif "skipped" not in out:
        out["skipped"] = "no CUDA GPU visible: TensorRT cannot build or inspect engines"
    try:
        load_tensorrt("tensorrt_rtx")
    except BackendError as exc:
        out["tensorrt_rtx"] = {"skipped": str(exc)}
        return out
    rtx: dict[str, Any] = {}
    parsed = B.parse_onnx(info.rpn_path, flavour="tensorrt_rtx", strongly_typed=True)
    rtx["rpn_parse"] = {"ok": parsed.ok, "errors": parsed.errors[:5]}
    if parsed.ok and rtx_build:
        (spec,) = S.engine_specs(info, ["rpn"])
        with tempfile.TemporaryDirectory(prefix="frcnn_rtx_") as tmp:
            try:
                r = B.build_engine(spec, S.BuildSettings(compute_capability="8.6", workspace_mib=512),
                                   cache_dir=tmp, flavour="tensorrt_rtx", force=True)
                rtx["rpn_build"] = {"ok": True, "precision": r.precision, "size": r.size, "tensorrt": r.tensorrt,
                                    "seconds": round(r.seconds, 2)}
            except BackendError as exc:
                rtx["rpn_build"] = {"ok": False, "error": str(exc)[:2000]}
    out["tensorrt_rtx"] = rtx
    return out


def _outputs_and_matches(info: ExportInfo, model: Any, images: Sequence[np.ndarray]) -> dict[str, Any]:
    torch_det = Detector.from_export(info.directory, "torch", device="cpu", model=model, verify=False)
    ort_det = Detector.from_export(info.directory, "onnxruntime", device="cpu", verify=False)
    rep = parity_report(torch_det, ort_det, images, iou_thresh=0.5)
    d = rep["detections"]
    return {"outputs_max_abs_delta": rep["max_abs_error"],
            "detections": {"match_rate": d["matched_fraction"], "matched": d["matched"], "reference": d["reference"],
                           "unmatched_export": d["unmatched_other"], "iou_thresh": 0.5, "images": len(images),
                           "reference_backend": rep["reference"], "candidate_backend": rep["candidate"]}}


def _tensorrt_part(info: ExportInfo, stored: str, asked: bool) -> dict[str, Any]:
    if not asked:
        return {"skipped": "not asked (tensorrt=False)"}
    if stored == "int8" and (info.data.get("quantization") or {}).get("target") == "cpu":
        return {"skipped": "INT8 export for target cpu (UINT8 asymmetric activations, ONNX Runtime's fast CPU path): "
                           "TensorRT takes only symmetric INT8 (zero point 0); export with --int8-target tensorrt "
                           "for TensorRT"}
    return tensorrt_layers(info, rtx_build=stored == "int8")


def precision_report(directory: str | Path, model: Any, images: Sequence[np.ndarray], *,
                     tensorrt: bool = True) -> dict[str, Any]:
    """Build and write ``precision_report.json`` (see the module doc); ``model`` is the FP32 torch model."""
    info = load_export(directory, verify=False)
    stored = export_precision(info)
    layers = {RPN_FILE: ort_layer_precision(info.rpn_path, stored=stored),
              DETECTOR_FILE: ort_layer_precision(info.detector_path, rewrite=True, stored=stored)}
    report: dict[str, Any] = {
        "export": str(info.directory), "stored_precision": stored,
        "computed": {b: {"precision": p.computed, "note": p.note}
                     for b in ("onnxruntime", "torch", "tensorrt") for p in [precision_of(info, b, "cpu")]},
        "onnxruntime_cpu_layers": layers,
        **_outputs_and_matches(info, model, images),
        "tensorrt": _tensorrt_part(info, stored, tensorrt),
        "fp32_layers": (info.data.get("quantization") or {}).get("fp32_layers", {}),
        "validation": None,
    }
    atomic_write_json(info.directory / REPORT_FILE, report)
    return report


def add_validation(directory: str | Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add ``--val``'s rows (``{"precision", "backend", "map", "ms_per_image", "imdb"}``) to the report."""
    import json

    path = Path(directory) / REPORT_FILE
    report = json.loads(path.read_text(encoding="utf-8"))
    report["validation"] = [dict(r) for r in rows]
    atomic_write_json(path, report)
    return report


def _layer_counts(layers: Mapping[str, Mapping[str, str]]) -> str:
    counts: dict[str, int] = {}
    for v in layers.values():
        counts[v["precision"]] = counts.get(v["precision"], 0) + 1
    return ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))


def print_report(con: Console, report: Mapping[str, Any]) -> None:
    """The printed form: one row per graph (ONNX Runtime kernels), outputs, matches, TensorRT, validation."""
    table = Table(title=f"precision report ({report['stored_precision']} export)", show_lines=False)
    for col in ("graph", "layer", "ONNX Runtime CPU kernel", "computes in"):
        table.add_column(col)
    for graph, layers in report["onnxruntime_cpu_layers"].items():
        for name, v in layers.items():
            table.add_row(graph, name, v["kernel"], v["precision"])
    con.print(table)
    for graph, layers in report["onnxruntime_cpu_layers"].items():
        con.print(f"  {graph}: {_layer_counts(layers)}")
    for backend, p in report["computed"].items():
        con.print(f"  {backend}: computes {p['precision']}" + (f" — {p['note']}" if p["note"] else ""))
    con.print("  max |Δ| vs FP32 torch: " + ", ".join(f"{k} {v:.3g}" for k, v in
                                                      report["outputs_max_abs_delta"].items()))
    d = report["detections"]
    con.print(f"  detections matched (IoU ≥ 0.5, same class): {d['matched']}/{d['reference']} "
              f"({100 * d['match_rate']:.1f} %) on {d['images']} image(s)")
    con.print(f"  TensorRT: {report['tensorrt'].get('skipped', 'inspected')}; RTX: "
              f"{report['tensorrt'].get('tensorrt_rtx')}", markup=False, highlight=False)
    for row in report.get("validation") or []:
        con.print(f"  val {row['imdb']}: {row['precision']:<5} on {row['backend']:<12} mAP {100 * row['map']:.2f}  "
                  f"{row['ms_per_image']:.1f} ms/image (measured under load)")
