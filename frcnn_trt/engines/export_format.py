"""``export.json``: everything an engine needs to run an export the way the training code would.

An export directory holds ``rpn.onnx``, ``detector.onnx`` and ``export.json``:

- ``class_names`` (index 0 = ``__background__``), ``net``;
- ``preprocessing``: BGR pixel means, the scale rule (``target_size`` / ``max_size``), blob layout;
- ``anchors``: base anchors ``[A, 4]``, feature stride, scales, ratios, the flattened anchor order;
- ``proposals``: the ProposalLayer settings for ``test`` (TEST 6000/300/0.7/16) and ``rpn_generate``
  (−1/2000, alt-opt's proposal generation);
- ``test``: score threshold, NMS, max detections per image, bbox regression on/off;
- ``roi_op``: the detector graph's RoI op, as the op module describes itself (``export_spec()``):
  ``{"type": "RoIPool", "domain": "frcnn", "op_type": "RoIPool", "pooled_shape", "spatial_scale",
  "plugin_namespace", "plugin_version"}`` (the custom node TensorRT maps to our plugin) or ``{"type": "RoIAlign",
  "domain": "", "op_type": "RoiAlign", "pooled_shape", "spatial_scale", "sampling_ratio", "aligned",
  "coordinate_transformation_mode"}`` (a standard node); RoIPool exports also keep the older ``roi_pool``
  section (the same fields less ``type``) for readers that predate ``roi_op``;
- ``shape_profiles``: min/opt/max of every dynamic input (TensorRT optimisation profiles);
- ``opset``, ``versions``, ``source`` (checkpoint path + SHA-256), ``precision`` per file;
- ``files``: SHA-256, size, inputs and outputs of every other file in the directory;
- ``parity``: the ONNX Runtime vs torch check run after the export (and FP16 vs FP32 when exported so).

:func:`export_json` builds the document (the exporter writes it); :func:`load_export` reads and validates a
directory: a missing or unreadable ``export.json``, a missing file, a size or SHA-256 mismatch raise
:class:`~frcnn_trt.errors.ExportError` naming the file.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from frcnn_trt.engines.export_checks import check_class_outputs, check_export, check_files
from frcnn_trt.errors import ExportError
from frcnn_trt.files import load_json, short
from frcnn_trt.io import sha256_file

__all__ = [
    "DETECTOR_FILE",
    "EXPORT_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "RPN_FILE",
    "ExportInfo",
    "ExportSettings",
    "export_json",
    "load_export",
    "versions",
]

FORMAT = "frcnn-trt-export"
FORMAT_VERSION = 1
#: the export.json format versions this code reads
SUPPORTED_VERSIONS = (1,)
#: the largest export.json read
MAX_EXPORT_JSON_BYTES = 16 << 20
EXPORT_FILE = "export.json"
RPN_FILE = "rpn.onnx"
DETECTOR_FILE = "detector.onnx"


def versions() -> dict[str, str | None]:
    """Versions of the packages an export depends on (``None`` for one that is not installed)."""
    import importlib.metadata as md

    from frcnn_trt import __version__

    out: dict[str, str | None] = {"frcnn_trt": __version__}
    for key, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("onnx", "onnx"),
                      ("onnxscript", "onnxscript")):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = None
    try:
        import onnxruntime

        out["onnxruntime"] = str(onnxruntime.__version__)
    except ImportError:
        out["onnxruntime"] = None
    return out


@dataclass(frozen=True)
class ExportInfo:
    """A validated export directory: its path and the parsed ``export.json``."""

    directory: Path
    data: dict[str, Any] = field(repr=False)

    # ------------------------------------------------------------------ convenient views of the JSON
    @property
    def class_names(self) -> list[str]:
        return list(self.data["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.data["class_names"])

    @property
    def net(self) -> str:
        return str(self.data["net"])

    @property
    def rpn_path(self) -> Path:
        return self.directory / RPN_FILE

    @property
    def detector_path(self) -> Path:
        return self.directory / DETECTOR_FILE

    @property
    def precision(self) -> dict[str, str]:
        return dict(self.data["precision"])

    @property
    def source_checkpoint(self) -> dict[str, Any]:
        return dict(self.data.get("source") or {})

    @property
    def roi_op(self) -> dict[str, Any]:
        """The detector graph's RoI op: ``{"type": "RoIPool" | "RoIAlign", "domain", "op_type", "pooled_shape",
        "spatial_scale", ...}``. Exports written before the ``roi_op`` section hold only ``roi_pool`` (RoIPool)."""
        if "roi_op" in self.data:
            return dict(self.data["roi_op"])
        legacy = dict(self.data.get("roi_pool") or {})
        return {"type": "RoIPool", **legacy} if legacy else {}

    @property
    def needs_roi_pool_plugin(self) -> bool:
        """Whether ``detector.onnx`` holds the custom ``frcnn::RoIPool`` node (TensorRT needs our plugin)."""
        return self.roi_op.get("type", "RoIPool") == "RoIPool"

    def file_sha256(self, name: str) -> str:
        return str(self.data["files"][name]["sha256"])


# ------------------------------------------------------------------------------------------------ writer


class ExportSettings(Protocol):
    """The inference settings ``export.json`` carries (:class:`frcnn_trt.engines.detector.InferenceSettings`,
    whose ``from_export`` reads them back)."""

    @property
    def pixel_means(self) -> tuple[float, float, float]: ...
    @property
    def target_size(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def feat_stride(self) -> int: ...
    @property
    def anchor_scales(self) -> tuple[float, ...]: ...
    @property
    def anchor_ratios(self) -> tuple[float, ...]: ...
    @property
    def rpn_pre_nms_top_n(self) -> int: ...
    @property
    def rpn_post_nms_top_n(self) -> int: ...
    @property
    def rpn_nms_thresh(self) -> float: ...
    @property
    def rpn_min_size(self) -> float: ...
    @property
    def generate_pre_nms_top_n(self) -> int: ...
    @property
    def generate_post_nms_top_n(self) -> int: ...
    @property
    def score_thresh(self) -> float: ...
    @property
    def nms_thresh(self) -> float: ...
    @property
    def max_per_image(self) -> int: ...
    @property
    def bbox_reg(self) -> bool: ...
    def base_anchors(self) -> list[list[float]]: ...


def _preprocessing(s: ExportSettings) -> dict[str, Any]:
    return {
        "pixel_means_bgr": list(s.pixel_means),
        "channel_order": "BGR",
        "target_size": s.target_size,
        "max_size": s.max_size,
        "scale_rule": (f"s = {s.target_size} / min(h, w); if round(s · max(h, w)) > {s.max_size}: "
                       f"s = {s.max_size} / max(h, w)"),
        "resize": "mean subtraction, then cv2.resize(fx=s, fy=s, INTER_LINEAR) (frcnn_trt.data.blob)",
        "layout": "NCHW float32, zero-padded to the batch's largest image",
    }


def _anchors(s: ExportSettings) -> dict[str, Any]:
    return {
        "base_anchors": s.base_anchors(),
        "feat_stride": s.feat_stride,
        "scales": list(s.anchor_scales),
        "ratios": list(s.anchor_ratios),
        "order": "(h * W + w) * A + a; rpn_cls_prob fg = channels A..2A-1; rpn_bbox_pred channel 4a + k",
    }


def _proposals(s: ExportSettings) -> dict[str, Any]:
    return {
        "test": {"pre_nms_top_n": s.rpn_pre_nms_top_n, "post_nms_top_n": s.rpn_post_nms_top_n,
                 "nms_thresh": s.rpn_nms_thresh, "min_size": s.rpn_min_size},
        "rpn_generate": {"pre_nms_top_n": s.generate_pre_nms_top_n, "post_nms_top_n": s.generate_post_nms_top_n,
                         "nms_thresh": s.rpn_nms_thresh, "min_size": s.rpn_min_size},
        "where": "outside the graphs (shared torch ProposalLayer, +1 geometry NMS, IoU > t suppressed)",
    }


def _roi_op_sections(roi_op: Mapping[str, Any]) -> dict[str, Any]:
    """``roi_op``, plus the older ``roi_pool`` section (without ``type``) for a RoIPool export."""
    spec = dict(roi_op)
    if spec.get("type") not in ("RoIPool", "RoIAlign"):
        raise ExportError(f"unknown RoI op {spec.get('type')!r} for export.json (RoIPool or RoIAlign)")
    if spec["type"] != "RoIPool":
        return {"roi_op": spec}
    return {"roi_op": spec, "roi_pool": {k: v for k, v in spec.items() if k != "type"}}


def export_json(
    *,
    net: str,
    class_names: Sequence[str],
    settings: ExportSettings,
    roi_op: Mapping[str, Any],
    shape_profiles: Mapping[str, Any],
    feature_map: Mapping[str, Any],
    opset: int,
    precision: str,
    precision_notes: str,
    files: Mapping[str, Any],
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``export.json`` document (``parity`` still ``None``); ``precision`` applies to both graphs."""
    s = settings
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "net": str(net),
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "source": dict(source or {}),
        "preprocessing": _preprocessing(s),
        "anchors": _anchors(s),
        "proposals": _proposals(s),
        "test": {"score_thresh": s.score_thresh, "nms_thresh": s.nms_thresh,
                 "max_per_image": s.max_per_image, "bbox_reg": s.bbox_reg},
        **_roi_op_sections(roi_op),
        "shape_profiles": dict(shape_profiles),
        "feature_map": dict(feature_map),
        "opset": int(opset),
        "versions": versions(),
        "precision": {RPN_FILE: precision, DETECTOR_FILE: precision},
        "precision_notes": precision_notes,
        "files": dict(files),
        "parity": None,
    }


# ------------------------------------------------------------------------------------------------ reader


_REQUIRED = ("class_names", "net", "preprocessing", "anchors", "proposals", "test", "files", "precision")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ExportError(f"{path} not found: not an export directory (run `frcnn-trt export` first)")
    data = load_json(path, "export.json", MAX_EXPORT_JSON_BYTES, error=ExportError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = short(data.get("format")) if isinstance(data, dict) else type(data).__name__
        raise ExportError(f"{path} is not a frcnn-trt export.json (format={got})")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ExportError(f"{path} lacks an integer format_version (got {short(version)})")
    if version not in SUPPORTED_VERSIONS:
        newer = version > max(SUPPORTED_VERSIONS)
        raise ExportError(f"{path} has format_version {version}; this frcnn-trt reads "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}{': upgrade frcnn-trt' if newer else ''}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ExportError(f"{path} lacks field(s) {', '.join(missing)}")
    check_export(data, path)
    return data


def load_export(directory: str | Path, *, verify: bool = True) -> ExportInfo:
    """Read ``directory/export.json`` and check every listed file (presence, size; SHA-256 if ``verify``)."""
    root = Path(directory)
    if not root.exists():
        raise ExportError(f"export directory {root} does not exist")
    if not root.is_dir():
        raise ExportError(f"export path {root} is not a directory (give the folder holding export.json)")
    data = _read_json(root / EXPORT_FILE)
    paths = check_files(data["files"], root, root / EXPORT_FILE, (RPN_FILE, DETECTOR_FILE))
    for name, path in paths.items():
        entry = data["files"][name]
        size = path.stat().st_size
        if entry["size"] != size:
            raise ExportError(f"export file {path} has {size} bytes, {EXPORT_FILE} records {entry['size']}:"
                              " the file is truncated or was replaced; re-export")
        if verify:
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ExportError(f"export file {path}: SHA-256 {digest[:12]}… differs from the "
                                  f"{entry['sha256'][:12]}… in {EXPORT_FILE}: the file is corrupt or "
                                  "was modified; re-export")
    check_class_outputs(paths[DETECTOR_FILE], len(data["class_names"]), root / EXPORT_FILE)
    return ExportInfo(root, data)
