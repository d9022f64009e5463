"""``frcnn-trt export --int8``: a float export's two graphs turned into QDQ INT8 graphs, in place.

Glossary: ``N`` calibration images, ``S`` sample images for the sensitivity measurement, ``R`` RoIs.

Steps (:func:`quantize_export`), on an export folder just written in FP32:

1. **images**: the calibration source's first ``N`` images (:mod:`frcnn_trt.export.calibration`), streamed
   through detect's preprocessing with the export's settings;
2. **RPN**: calibrate ``rpn.onnx`` on the image blobs (cached), measure each layer's sensitivity on ``S``
   images and keep the worst layers FP32 until within tolerance (:mod:`frcnn_trt.export.sensitivity`), write
   the QDQ ``rpn.onnx``;
3. **detector**: its inputs are what the INT8 RPN really produces for those images: each image goes through the
   INT8 ``rpn.onnx`` and the shared ProposalLayer (TEST settings), and ``detector.onnx`` is calibrated on those
   ``features`` + ``rois`` (cached, keyed also by the INT8 RPN's hash); then the same sensitivity pick;
4. **export.json**: precision ``int8`` for both graphs, new hashes, and a ``quantization`` record (library and
   version, method, images used and skipped, cache files and whether they were reused, per graph the layers
   kept FP32 with every layer's measured sensitivity).

The scheme follows ``Int8Settings.target`` (:data:`frcnn_trt.export.quantize.SCHEMES`): ``cpu`` (default,
UINT8 activations: ONNX Runtime's fast integer kernels) or ``tensorrt`` (symmetric INT8: TensorRT's explicit
quantization). The target is recorded in ``quantization.target``.

Why ONNX Runtime's quantizer: it is the quantizer of the runtime that runs these graphs on CPU (its QDQ output
is what its integer kernels fuse, and what TensorRT's explicit quantization reads); it is installed with
ONNX Runtime and runs calibration on CPU, streaming one image per ``collect_data``. NVIDIA ModelOpt's ONNX PTQ
(``nvidia-modelopt`` 0.47, made from an FP32 export by ``tools/int8_modelopt.py``) was measured against it:
same accuracy, but ONNX Runtime's CPU provider runs its graphs as float convolutions between Q/DQ pairs (see
``quantization.library_choice`` and README).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from frcnn_trt.engines.detector import Detector, InferenceSettings
from frcnn_trt.engines.export_format import DETECTOR_FILE, EXPORT_FILE, RPN_FILE, load_export
from frcnn_trt.engines.onnxruntime_backend import OnnxRuntimeBackend
from frcnn_trt.errors import ExportError
from frcnn_trt.export.calibration import (
    CALIB_METHODS,
    CalibrationCache,
    Feeds,
    ImageStream,
    Preprocess,
    calibrate,
    calibration_paths,
    images_fingerprint,
)
from frcnn_trt.export.quantize import QuantScheme, qdq_layers, quantizable_nodes, quantize_graph, scheme
from frcnn_trt.export.sensitivity import MIN_GAIN, GraphProbe, fp32_cap, select_fp32_layers
from frcnn_trt.io import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from frcnn_trt.ops.roi_pool import to_onnxruntime

__all__ = ["LIBRARY_CHOICE", "Int8Settings", "detector_feeds", "fp32_layer_summary", "fp32_speed_hint",
           "quantize_export", "rpn_feeds"]

log = logging.getLogger("frcnn_trt.export.int8")

LIBRARY_CHOICE = (
    "onnxruntime.quantization (quantize_static, QDQ): the quantizer of the runtime that executes these graphs on "
    "CPU, already a dependency, calibrating one image at a time; its QDQ output fuses into ONNX Runtime's integer "
    "kernels (target cpu: UINT8 activations) and parses/builds in TensorRT-RTX strongly typed (target tensorrt: "
    "symmetric INT8). NVIDIA ModelOpt 0.47's ONNX PTQ was measured against it (README, 'INT8 and speed on a "
    "CPU'): equally accurate on the demo model, but its graphs (a Relu between each Conv and its "
    "QuantizeLinear) run on ONNX Runtime's CPU provider as float convolutions between Q/DQ pairs, slower than "
    "FP32 on VGG16, and it needs onnxruntime-gpu and NVIDIA packages this project does not depend on.")


FP32_RULE = ("a layer stays FP32 only when the all-INT8 error exceeds the tolerance, its own error drop and the "
             "drop it adds to those already kept are each ≥ min_gain × the all-INT8 error, and at most "
             "min(max_fp32_layers, ⌈max_fp32_fraction × layers⌉) layers per graph")


@dataclass(frozen=True)
class Int8Settings:
    """An ``--int8`` request: calibration source (imdb name, folder, file or glob) and how to calibrate."""

    source: str
    num_images: int = 32
    method: str = "minmax"
    min_images: int = 1
    sample_images: int = 4
    tolerance: float = 0.02
    max_fp32_layers: int = 4
    #: at most this fraction of a graph's layers stays FP32 (rounded up), and each must buy ``min_gain``
    max_fp32_fraction: float = 0.125
    min_gain: float = MIN_GAIN
    #: ``cpu`` (ONNX Runtime: UINT8 activations) or ``tensorrt`` (symmetric INT8): see frcnn_trt.export.quantize
    target: str = "cpu"
    cache_dir: Path | None = None
    data_root: Path = Path("data")

    def __post_init__(self) -> None:
        if self.method not in CALIB_METHODS:
            raise ExportError(f"--calib-method {self.method!r} unknown: use one of {', '.join(CALIB_METHODS)}")
        if not self.source:
            raise ExportError("--int8 needs --calib SOURCE (an imdb name, an image folder or a glob)")
        scheme(self.target)
        if not 0.0 <= self.tolerance < 1.0 or self.sample_images < 1 or self.max_fp32_layers < 0:
            raise ExportError(f"bad INT8 settings: tolerance {self.tolerance} (0..1), sample images "
                              f"{self.sample_images} (≥ 1), max FP32 layers {self.max_fp32_layers} (≥ 0)")
        if not (0.0 <= self.max_fp32_fraction <= 1.0 and 0.0 <= self.min_gain <= 1.0):
            raise ExportError(f"bad INT8 settings: max FP32 fraction {self.max_fp32_fraction} and minimum gain "
                              f"{self.min_gain} must lie in 0..1")

    @property
    def scheme(self) -> QuantScheme:
        return scheme(self.target)


@dataclass
class _Graph:
    """One graph's quantization: its record for export.json and the QDQ proto."""

    record: dict[str, Any]
    proto: onnx.ModelProto


def rpn_feeds(stream: ImageStream) -> Iterator[Feeds]:
    """Per readable calibration image: the RPN graph's feed (the preprocessed blob)."""
    for _, blob, _ in stream.blobs():
        yield {"image": blob.numpy()}


def detector_feeds(stream: ImageStream, detector: Detector) -> Iterator[Feeds]:
    """Per image: the INT8 RPN's features and the ProposalLayer's RoIs (what the detector graph will see)."""
    for _, image in stream.images():
        run = detector.forward([image])
        if run.rois.shape[0] == 0:
            continue
        yield {"features": run.features.float().numpy(), "rois": run.rois.float().numpy()}


def _take(feeds: Iterator[Feeds], n: int) -> list[Feeds]:
    out = []
    for f in feeds:
        out.append(f)
        if len(out) >= n:
            break
    return out


def _quantize_one(what: str, float_proto: onnx.ModelProto, key_extra: dict[str, Any], feeds: Iterator[Feeds],
                  samples: list[Feeds], cfg: Int8Settings, ctx: dict[str, Any], ort_form: bool) -> _Graph:
    """Calibrate (or reuse), pick the FP32 layers, quantize one graph."""
    raw = float_proto.SerializeToString()
    quant = cfg.scheme
    cache = CalibrationCache(ctx["cache_dir"])
    key, parts = cache.key(sha256_bytes(raw), ctx["fingerprint"], cfg.method, ctx["preprocess"],
                           {**key_extra, "op_types": list(quant.op_types)})
    runnable = to_onnxruntime(float_proto).SerializeToString() if ort_form else raw
    ranges, reused = cache.get_or_compute(
        what, key, parts, lambda: calibrate(runnable, feeds, cfg.method, quant.op_types, what))
    probe = GraphProbe(samples, prepare=to_onnxruntime if ort_form else (lambda p: p))
    probe.set_reference(float_proto)
    layers = quantizable_nodes(float_proto)
    cap = fp32_cap(len(layers), cfg.max_fp32_fraction, cfg.max_fp32_layers)
    selection, qproto = select_fp32_layers(
        layers, lambda exclude: quantize_graph(float_proto, ranges, exclude=exclude, quant=quant, what=what), probe,
        tolerance=cfg.tolerance, max_fp32=cap, min_gain=cfg.min_gain)
    record = {"calibration_cache": str(cache.path(what, key)), "cache_key": key, "cache_reused": reused,
              "calibrated_tensors": len(ranges.data), "sample_images": len(samples), **selection.to_dict(),
              "max_fp32": cap, "layers": qdq_layers(qproto)}
    return _Graph(record, qproto)


def _write_graph(out: Path, name: str, proto: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    path = out / name
    atomic_write_bytes(path, proto.SerializeToString())
    entry = metadata["files"][name]
    entry.update({"sha256": sha256_file(path), "size": path.stat().st_size, "precision": "int8"})


def _context(directory: Path, cfg: Int8Settings) -> tuple[dict[str, Any], ImageStream, InferenceSettings]:
    info = load_export(directory, verify=False)
    settings = InferenceSettings.from_export(info)
    pre = Preprocess(settings.pixel_means, settings.target_size, settings.max_size)
    paths = calibration_paths(cfg.source, cfg.num_images, min_images=cfg.min_images, data_root=cfg.data_root)
    stream = ImageStream(paths, pre, min_images=cfg.min_images)
    ctx = {"cache_dir": cfg.cache_dir or directory / "calibration_cache", "fingerprint": images_fingerprint(paths),
           "preprocess": pre.to_dict(), "paths": paths}
    return ctx, stream, settings


def _rpn_step(directory: Path, cfg: Int8Settings, ctx: dict[str, Any], stream: ImageStream) -> _Graph:
    proto = onnx.load(str(directory / RPN_FILE))
    samples = _take(rpn_feeds(ImageStream(ctx["paths"], stream.preprocess, min_images=1)), cfg.sample_images)
    return _quantize_one("rpn", proto, {}, rpn_feeds(stream), samples, cfg, ctx, ort_form=False)


def _detector_step(directory: Path, cfg: Int8Settings, ctx: dict[str, Any], stream: ImageStream,
                   settings: InferenceSettings, rpn_int8: bytes) -> _Graph:
    proto = onnx.load(str(directory / DETECTOR_FILE))
    backend = OnnxRuntimeBackend(rpn_int8, directory / DETECTOR_FILE, device="cpu")
    det = Detector(backend, settings)
    sample_stream = ImageStream(ctx["paths"], stream.preprocess, min_images=1)
    samples = _take(detector_feeds(sample_stream, det), cfg.sample_images)
    if not samples:
        raise ExportError("no calibration image gives the INT8 RPN a single proposal: the detector graph cannot be "
                          "calibrated (check the model and the calibration images)")
    return _quantize_one("detector", proto, {"rpn_int8_sha256": sha256_bytes(rpn_int8)},
                         detector_feeds(stream, det), samples, cfg, ctx, ort_form=True)


def quantize_export(directory: str | Path, cfg: Int8Settings) -> dict[str, Any]:
    """Quantize the FP32 export in ``directory`` in place (see the module doc); returns the new export.json."""
    import onnxruntime

    out = Path(directory)
    ctx, stream, settings = _context(out, cfg)
    metadata = load_export(out, verify=False).data
    rpn = _rpn_step(out, cfg, ctx, stream)
    rpn_bytes = rpn.proto.SerializeToString()
    rpn_skipped, rpn_used = list(stream.skipped), stream.used
    det = _detector_step(out, cfg, ctx, stream, settings, rpn_bytes)
    (out / EXPORT_FILE).unlink(missing_ok=True)  # a half-quantized folder must not pass for an export
    _write_graph(out, RPN_FILE, rpn.proto, metadata)
    _write_graph(out, DETECTOR_FILE, det.proto, metadata)
    metadata["precision"] = {RPN_FILE: "int8", DETECTOR_FILE: "int8"}
    metadata["precision_notes"] = cfg.scheme.note
    metadata["quantization"] = {
        "library": f"onnxruntime.quantization {onnxruntime.__version__}", "format": "QDQ", **cfg.scheme.to_dict(),
        "method": cfg.method, "source": cfg.source,
        "images": {"requested": cfg.num_images, "listed": len(ctx["paths"]), "used": rpn_used,
                   "skipped": rpn_skipped},
        "tolerance": cfg.tolerance, "max_fp32_layers": cfg.max_fp32_layers,
        "max_fp32_fraction": cfg.max_fp32_fraction, "min_gain": cfg.min_gain, "fp32_rule": FP32_RULE,
        "graphs": {RPN_FILE: rpn.record, DETECTOR_FILE: det.record},
        "fp32_layers": {RPN_FILE: rpn.record["fp32_layers"], DETECTOR_FILE: det.record["fp32_layers"]},
        "library_choice": LIBRARY_CHOICE,
    }
    atomic_write_json(out / EXPORT_FILE, metadata)
    load_export(out)  # the rewritten folder reads back and its hashes match
    return metadata


def fp32_layer_summary(metadata: dict[str, Any]) -> list[str]:
    """One line per graph: which layers stayed FP32 and the errors (for the export printout)."""
    q = metadata.get("quantization") or {}
    lines = []
    for name, rec in (q.get("graphs") or {}).items():
        kept = ", ".join(rec["fp32_layers"]) or "none"
        lines.append(f"{name}: {len(rec['int8_layers'])} INT8 layers, FP32 kept: {kept} (rel. error all-INT8 "
                     f"{rec['error_all_int8']:.4f} → {rec['error_final']:.4f}, tolerance {rec['tolerance']}; "
                     f"calibration {'reused' if rec['cache_reused'] else 'computed'})")
    return lines


def fp32_speed_hint(metadata: dict[str, Any]) -> str | None:
    """What keeping layers FP32 costs and how to avoid it, when the export kept any (None otherwise)."""
    graphs = (metadata.get("quantization") or {}).get("graphs") or {}
    if not any(rec["fp32_layers"] for rec in graphs.values()):
        return None
    return ("FP32 layers run as float kernels between integer ones (VGG16's fc6 kept FP32: the whole image "
            "1.3× slower on a 2-core CPU); --int8-max-fp32 0 makes every layer INT8 at the all-INT8 error above")

