"""Checks of an ``export.json`` and the ONNX files it names (:func:`frcnn_trt.engines.export_format.load_export`).

Every field an engine uses is checked for type and range before anything runs: class names (a list of distinct,
non-empty strings whose count equals the detector graph's class outputs), BGR pixel means (3 finite numbers),
sizes (positive integers, not strings), anchors (finite ``[A, 4]`` boxes, ``A = scales × ratios``), proposal
and test settings, precisions, and the file list (names confined to the export folder, regular files). The
detector graph's output shapes are read from the ONNX file's protobuf without parsing its weights
(:func:`graph_outputs`), so the check costs the same for a 7 MB and a 500 MB model. Each refusal is an
:class:`~frcnn_trt.errors.ExportError` naming ``export.json`` (or the ONNX file) and the field.
"""

from __future__ import annotations

import math
import mmap
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from frcnn_trt.errors import ExportError
from frcnn_trt.files import check_regular_file, confined, is_finite_number, short

__all__ = ["PRECISIONS", "check_export", "check_files", "graph_outputs"]

#: the precisions an export's ONNX files may carry
PRECISIONS = ("fp32", "fp16", "int8")
MAX_CLASSES = 100_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Fields:
    """Typed access to one JSON object of ``export.json``: ``where`` names it in messages."""

    def __init__(self, data: Any, where: str, path: Path) -> None:
        if not isinstance(data, Mapping):
            raise ExportError(f"{path}: {where} must be an object, got {short(data)}")
        self.data, self.where, self.path = data, where, path

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise ExportError(f"{self.path}: {self.where} lacks field {key!r}")
        return self.data[key]

    def _bad(self, key: str, what: str) -> ExportError:
        return ExportError(f"{self.path}: {self.where}.{key} must be {what}, got {short(self.data.get(key))}")

    def int(self, key: str, lo: int, hi: int = (1 << 31) - 1) -> int:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self._bad(key, f"an integer in [{lo}, {hi}]")
        return v

    def num(self, key: str, lo: float, hi: float = math.inf) -> float:
        v = self._get(key)
        if not is_finite_number(v) or not lo <= v <= hi:
            raise self._bad(key, f"a finite number in [{lo}, {hi}]")
        return float(v)

    def nums(self, key: str, count: int | None, lo: float = -math.inf, positive: bool = False) -> list[float]:
        v = self._get(key)
        ok = isinstance(v, list) and (len(v) == count if count is not None else 1 <= len(v) <= 4096) and all(
            is_finite_number(x) and x >= lo
            and (x > 0 or not positive) for x in v)
        if not ok:
            raise self._bad(key, f"{count or 'a list of'} finite{' positive' if positive else ''} numbers")
        return [float(x) for x in v]

    def sub(self, key: str) -> _Fields:
        return _Fields(self._get(key), f"{self.where}.{key}" if self.where != "export.json" else key, self.path)


def _class_names(top: _Fields) -> list[str]:
    names = top._get("class_names")
    if not isinstance(names, list) or not 2 <= len(names) <= MAX_CLASSES:
        raise top._bad("class_names", f"a list of 2 to {MAX_CLASSES} names (background first)")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip() or len(n) > 1024 or "\x00" in n:
            raise ExportError(f"{top.path}: class_names[{i}] must be a non-empty name, got {short(n)}")
    if len(set(names)) != len(names):
        raise ExportError(f"{top.path}: class_names lists a name twice")
    if "num_classes" in top.data and top.data["num_classes"] != len(names):
        raise ExportError(f"{top.path}: num_classes {short(top.data['num_classes'])} but {len(names)} class_names")
    return names


def _anchors(top: _Fields) -> None:
    anc = top.sub("anchors")
    anc.int("feat_stride", 1, 1 << 10)
    scales = anc.nums("scales", None, positive=True)
    ratios = anc.nums("ratios", None, positive=True)
    base = anc._get("base_anchors")
    if not isinstance(base, list) or len(base) != len(scales) * len(ratios):
        raise anc._bad("base_anchors", f"{len(scales) * len(ratios)} boxes (scales × ratios)")
    for i, box in enumerate(base):
        _Fields({"box": box}, f"anchors.base_anchors[{i}]", top.path).nums("box", 4)


def _settings(top: _Fields) -> None:
    pre = top.sub("preprocessing")
    pre.nums("pixel_means_bgr", 3)
    pre.int("target_size", 1, 1 << 16)
    pre.int("max_size", 1, 1 << 16)
    props = top.sub("proposals")
    for stage in ("test", "rpn_generate"):
        p = props.sub(stage)
        p.int("pre_nms_top_n", -1)
        p.int("post_nms_top_n", -1)
        p.num("nms_thresh", 0.0, 1.0)
        p.num("min_size", 0.0, 1 << 16)
    test = top.sub("test")
    test.num("score_thresh", 0.0, 1.0)
    test.num("nms_thresh", 0.0, 1.0)
    test.int("max_per_image", 0)
    if not isinstance(test.data.get("bbox_reg", True), bool):
        raise test._bad("bbox_reg", "true or false")


def _roi_op(top: _Fields) -> None:
    for key in ("roi_op", "roi_pool"):
        if key not in top.data:
            continue
        op = top.sub(key)
        if key == "roi_op" and op.data.get("type") not in ("RoIPool", "RoIAlign"):
            raise op._bad("type", "RoIPool or RoIAlign")
        shape = op._get("pooled_shape")
        if not isinstance(shape, list) or len(shape) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 1024 for s in shape):
            raise op._bad("pooled_shape", "2 positive integers")
        op.num("spatial_scale", 1e-6, 1.0)


def check_export(data: Mapping[str, Any], path: Path) -> None:
    """Check every field of an ``export.json`` document an engine uses (module doc); ExportError otherwise."""
    top = _Fields(data, "export.json", path)
    net = top._get("net")
    if not isinstance(net, str) or not net or len(net) > 256:
        raise top._bad("net", "a network name")
    _class_names(top)
    _settings(top)
    _anchors(top)
    _roi_op(top)
    precision = top.sub("precision")
    for name, value in precision.data.items():
        if value not in PRECISIONS:
            raise ExportError(f"{path}: precision of {short(name)} must be one of {', '.join(PRECISIONS)}, got "
                              f"{short(value)}")


def check_files(files: Any, root: Path, path: Path, required: tuple[str, ...]) -> dict[str, Path]:
    """``files`` entry name → its path: names confined to ``root``, regular files, sizes and SHA-256 well-formed."""
    if not isinstance(files, Mapping) or not all(r in files for r in required):
        raise ExportError(f"{path}: 'files' must list {' and '.join(required)}")
    out: dict[str, Path] = {}
    for name, entry in files.items():
        where = f"{path}: files[{short(name)}]"
        target = confined(root, name, where, error=ExportError)
        if not isinstance(entry, Mapping):
            raise ExportError(f"{where} must be an object")
        size, digest = entry.get("size"), entry.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ExportError(f"{where}.size must be a byte count, got {short(size)}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ExportError(f"{where}.sha256 must be 64 hexadecimal digits, got {short(digest)}")
        if not target.exists():
            raise ExportError(f"export file {target} is missing (listed in {path.name})")
        check_regular_file(target, "export file", ExportError)
        out[name] = target
    return out


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _walk(buf: mmap.mmap | bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """``(field number, wire type, start, end)`` of every field of one protobuf message; for a varint ``start``
    holds its value (``end`` unused), for a length-delimited field ``[start, end)`` its bytes."""
    out = []
    while pos < end:
        key, pos = _varint(buf, pos, end)
        kind = key & 7
        if kind == 0:
            value, pos = _varint(buf, pos, end)
            out.append((key >> 3, 0, value, pos))
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        elif kind == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ValueError("truncated field")
            out.append((key >> 3, 2, pos, pos + n))
            pos += n
        else:
            raise ValueError(f"wire type {kind}")
    if pos != end:
        raise ValueError("truncated message")
    return out


def _fields(buf: mmap.mmap | bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """``(field number, start, end)`` of the length-delimited fields of one protobuf message (others skipped)."""
    return [(f, s, e) for f, kind, s, e in _walk(buf, pos, end) if kind == 2]


def _sub(buf: mmap.mmap | bytes, pos: int, end: int, number: int) -> tuple[int, int] | None:
    """The last length-delimited field ``number`` of a message (protobuf: the last one wins), or None."""
    found = [(s, e) for f, s, e in _fields(buf, pos, end) if f == number]
    return found[-1] if found else None


def _text(buf: mmap.mmap | bytes, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8")  # UnicodeDecodeError is a ValueError


def _dim(buf: mmap.mmap | bytes, pos: int, end: int) -> int | str:
    """``TensorShapeProto.Dimension``: ``dim_value`` (field 1, int64) or ``dim_param`` (field 2, string)."""
    value: int | str = ""
    for f, kind, s, e in _walk(buf, pos, end):
        if f == 1 and kind == 0:
            value = s - (1 << 64) if s >= 1 << 63 else s
        elif f == 2 and kind == 2:
            value = _text(buf, s, e)
    return value


def _value_info(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[str, list[int | str]]:
    """``ValueInfoProto``: name (field 1) and the dims of ``type`` (2) → ``tensor_type`` (1) → ``shape`` (2) →
    ``dim`` (1, repeated); a non-tensor or shapeless type gives no dims."""
    name = _sub(buf, pos, end, 1)
    dims: list[int | str] = []
    where: tuple[int, int] | None = (pos, end)
    for number in (2, 1, 2):  # type, tensor_type, shape
        where = _sub(buf, *where, number) if where is not None else None
    if where is not None:
        dims = [_dim(buf, s, e) for f, s, e in _fields(buf, *where) if f == 1]
    return (_text(buf, *name) if name is not None else ""), dims


def graph_outputs(path: Path) -> dict[str, list[int | str]]:
    """The graph outputs of an ONNX file and their shapes (an int per fixed dimension, a name per symbolic one),
    read from ``ModelProto.graph.output`` by hand (the few ``ValueInfoProto`` fields needed) without decoding
    the weights or importing ``onnx``; ExportError naming the file otherwise."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graph = _sub(buf, 0, len(buf), 7)  # ModelProto.graph
            if graph is None:
                raise ValueError("no graph")
            outs = [_value_info(buf, s, e) for f, s, e in _fields(buf, *graph) if f == 12]  # GraphProto.output
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable ONNX model ({exc})") from None
    return dict(outs)


def check_class_outputs(detector: Path, num_classes: int, path: Path) -> None:
    """The detector graph's ``cls_prob`` / ``bbox_pred`` widths must be ``K`` / ``4K`` for ``K`` class names."""
    outputs = graph_outputs(detector)
    for name, width in (("cls_prob", num_classes), ("bbox_pred", 4 * num_classes)):
        shape = outputs.get(name)
        if shape is None:
            raise ExportError(f"{detector}: the detector graph has no output {name!r} (outputs: "
                              f"{', '.join(outputs) or 'none'})")
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] != width:
            raise ExportError(f"{path}: {num_classes} class_names but {detector.name}'s {name} has {shape[1]} "
                              f"outputs (expected {width})")
