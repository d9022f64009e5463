"""COCO results JSON: writer and reader.

A list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with ``category_id`` = our class index
(1..K), ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1`` (+1 geometry, so the COCO IoU of two such boxes equals the +1
IoU of the inclusive boxes). ``image_id``: see :func:`write_coco_results`. A malformed result is skipped and
reported as ``<file>: result <k>: <reason>``; a file that cannot be read raises
:class:`~frcnn_trt.errors.DatasetError` naming it (policy: :mod:`frcnn_trt.evaluation.file_checks`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.detections import Detections
from frcnn_trt.evaluation.file_checks import (
    BadRecord,
    SkipLog,
    box_of,
    class_names_tuple,
    image_id_of,
    load_json,
    score_of,
)
from frcnn_trt.files import short
from frcnn_trt.io import atomic_write_text

__all__ = ["parse_coco_results", "read_coco_results", "write_coco_results"]


def _coco_image_id_writer(image_ids: Sequence[str], mode: Literal["auto", "int", "str"]) -> dict[str, int | str]:
    if mode not in ("auto", "int", "str"):
        raise ValueError(f"image_id_mode must be 'auto', 'int' or 'str', got {mode!r}")
    if mode == "str":
        return {i: i for i in image_ids}
    int_like = all(i.isdigit() and i.isascii() for i in image_ids)
    unique = int_like and len({int(i) for i in image_ids}) == len(image_ids)
    if mode == "int" and not unique:
        bad = [i for i in image_ids if not (i.isdigit() and i.isascii())]
        what = f"image id {bad[0]!r} is not a decimal integer" if bad else "two image ids share one int value"
        raise DatasetError(f"cannot write int COCO image ids: {what}")
    if unique:
        return {i: int(i) for i in image_ids}
    return {i: i for i in image_ids}


def write_coco_results(
    detections: Detections,
    path: str | os.PathLike[str],
    *,
    image_id_mode: Literal["auto", "int", "str"] = "auto",
) -> Path:
    """Write a COCO results JSON list (atomically).

    ``category_id`` is our class index (1..K); ``bbox`` is ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``.
    ``image_id``: ``"int"`` writes ``int(image_id)`` (VOC's ``"000005"`` -> 5, what COCO tools expect);
    ``"str"`` writes the id string unchanged; ``"auto"`` (default) writes ints when every id is a decimal
    integer string and no two share a value, strings otherwise. :func:`read_coco_results` reads both back.
    """
    out = Path(path)
    id_map = _coco_image_id_writer(list(detections.image_ids), image_id_mode)
    items: list[dict[str, Any]] = []
    for image_id, d in detections.items():
        xywh = np.concatenate([d.boxes[:, :2], d.boxes[:, 2:] - d.boxes[:, :2] + 1.0], axis=1)
        img = id_map[image_id]
        for k in range(len(d)):
            items.append(
                {
                    "image_id": img,
                    "category_id": int(d.classes[k]),
                    "bbox": [float(v) for v in xywh[k]],
                    "score": float(d.scores[k]),
                }
            )
    atomic_write_text(out, json.dumps(items, allow_nan=False))
    return out


def _resolve_int_ids(image_ids: Sequence[str] | None, path: Path) -> dict[int, str] | None:
    if image_ids is None:
        return None
    table: dict[int, str] = {}
    for i in image_ids:
        if i.isdigit() and i.isascii():
            v = int(i)
            if v in table and table[v] != i:
                raise DatasetError(f"{path}: int image ids are ambiguous: {table[v]!r} and {i!r} both read as {v}")
            table[v] = i
    return table


class _Ids:
    """Turns a COCO ``image_id`` (an int or a string) into one of ours (see :func:`read_coco_results`)."""

    def __init__(self, image_ids: Sequence[str] | None, path: Path) -> None:
        self.int_table = _resolve_int_ids(image_ids, path)
        self.known = frozenset(image_ids) if image_ids is not None else None

    def __call__(self, img: Any) -> str:
        if type(img) is int:
            if self.int_table is None:
                if abs(img) >= 1 << 63:
                    raise BadRecord(f"image_id {short(img)} is out of range")
                return str(img)
            if img in self.int_table:
                return self.int_table[img]
            raise BadRecord(f"image_id {short(img)} matches no image id of this image set")
        if type(img) is not str:
            raise BadRecord(f"image_id must be an int or a string, got {short(img)}")
        return image_id_of(img, self.known)


def _coco_item(item: Any, ids: _Ids, num_classes: int) -> tuple[str, int, list[float], float]:
    """``(image_id, category_id, xywh, score)`` of one COCO result; :class:`BadRecord` if malformed."""
    if not isinstance(item, dict):
        raise BadRecord(f"expected an object, got {short(item)}")
    missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in item]
    if missing:
        raise BadRecord(f"missing key(s) {missing}")
    image_id = ids(item["image_id"])
    cat = item["category_id"]
    if type(cat) is not int or not 1 <= cat <= num_classes:
        raise BadRecord(f"category_id {short(cat)} is not a class index in 1..{num_classes}")
    return image_id, cat, box_of(item["bbox"], xywh=True), score_of(item["score"])


def parse_coco_results(
    items: list[Any], path: Path, names: tuple[str, ...], image_ids: Sequence[str] | None
) -> Detections:
    """Detections of a parsed COCO results list; a malformed result is skipped and reported (see
    :mod:`frcnn_trt.evaluation.file_checks`)."""
    ids_of = _Ids(image_ids, path)
    num_classes = len(names) - 1
    skips = SkipLog(path)
    ids: list[str] = []
    xywh: list[list[float]] = []
    scores: list[float] = []
    classes: list[int] = []
    for k, item in enumerate(items):
        try:
            image_id, cat, bbox, score = _coco_item(item, ids_of, num_classes)
        except BadRecord as e:
            skips.add(f"{path}: result {k}", str(e))
            continue
        ids.append(image_id)
        xywh.append(bbox)
        scores.append(score)
        classes.append(cat)
    b = np.array(xywh, dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:] - 1.0], axis=1)
    dets = Detections.from_flat(ids, boxes, np.array(scores, dtype=np.float64), np.array(classes, dtype=np.int64))
    return skips.finish(dets)


def read_coco_results(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    image_ids: Sequence[str] | None = None,
) -> Detections:
    """Read a COCO results JSON list (``category_id`` = class index 1..K, +1 ``bbox`` w/h).

    A string ``image_id`` is used as it is; an int one is mapped to the id in ``image_ids`` whose
    ``int(id)`` equals it (``5`` -> ``"000005"``), or to ``str(int)`` when ``image_ids`` is not given.
    With ``image_ids``, a result of an image outside the set is skipped and reported, as is any malformed
    result; a file that cannot be read, or whose results are all bad, raises :class:`DatasetError`.
    """
    p = Path(path)
    data = load_json(p)
    if not isinstance(data, list):
        raise DatasetError(f"{p}: a COCO results file is a JSON list, got {type(data).__name__}")
    return parse_coco_results(data, p, class_names_tuple(class_names), image_ids)
