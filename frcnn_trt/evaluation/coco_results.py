"""COCO results JSON: writer and reader.

A list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with ``category_id`` = our class index
(1..K), ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1`` (+1 geometry, so the COCO IoU of two such boxes equals the +1
IoU of the inclusive boxes). ``image_id``: see :func:`write_coco_results`. Malformed input raises
:class:`~frcnn_trt.errors.DatasetError` naming the file and the result.
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
from frcnn_trt.evaluation.file_checks import class_names_tuple, is_number, load_json
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


def _check_coco_item(item: Any, where: str, num_classes: int) -> tuple[Any, int, list[Any], float]:
    """Validate one COCO result (slow path, for the message); return image_id, category_id, bbox, score."""
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected an object, got {item!r}")
    missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in item]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {missing}")
    img = item["image_id"]
    if type(img) not in (int, str):
        raise DatasetError(f"{where}: image_id must be an int or a string, got {img!r}")
    cat = item["category_id"]
    if type(cat) is not int or not 1 <= cat <= num_classes:
        raise DatasetError(f"{where}: category_id {cat!r} is not a class index in 1..{num_classes}")
    bbox = item["bbox"]
    if not (type(bbox) is list and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        raise DatasetError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    score = item["score"]
    if not is_number(score):
        raise DatasetError(f"{where}: score must be a finite number, got {score!r}")
    return img, cat, bbox, score


def parse_coco_results(
    items: list[Any], path: Path, names: tuple[str, ...], image_ids: Sequence[str] | None
) -> Detections:
    int_table = _resolve_int_ids(image_ids, path)
    known = set(image_ids) if image_ids is not None else None
    num_classes = len(names) - 1
    ids: list[str] = []
    xywh: list[Any] = []
    scores: list[float] = []
    classes: list[int] = []
    for k, item in enumerate(items):
        try:  # fast path for well-formed items; anything else is re-checked for a precise message
            img, cat, bbox, score = item["image_id"], item["category_id"], item["bbox"], item["score"]
            x, y, w, h = bbox
            ok = (
                type(img) in (int, str)
                and type(cat) is int
                and 0 < cat <= num_classes
                and type(bbox) is list
                and is_number(x)
                and is_number(y)
                and is_number(w)
                and is_number(h)
                and is_number(score)
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            img, cat, bbox, score = _check_coco_item(item, f"{path}: result {k}", num_classes)
        if type(img) is int:
            if int_table is None:
                image_id = str(img)
            elif img in int_table:
                image_id = int_table[img]
            else:
                raise DatasetError(f"{path}: result {k}: image_id {img} matches no image id of this image set")
        else:
            image_id = img
            if known is not None and image_id not in known:
                raise DatasetError(f"{path}: result {k}: image_id {img!r} is not in this image set")
        ids.append(image_id)
        xywh.append(bbox)
        scores.append(score)
        classes.append(cat)
    b = np.array(xywh, dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:] - 1.0], axis=1)
    return Detections.from_flat(ids, boxes, np.array(scores, dtype=np.float64), np.array(classes, dtype=np.int64))


def read_coco_results(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    image_ids: Sequence[str] | None = None,
) -> Detections:
    """Read a COCO results JSON list (``category_id`` = class index 1..K, +1 ``bbox`` w/h).

    A string ``image_id`` is used as it is; an int one is mapped to the id in ``image_ids`` whose
    ``int(id)`` equals it (``5`` -> ``"000005"``), or to ``str(int)`` when ``image_ids`` is not given.
    With ``image_ids``, an id outside the set raises :class:`DatasetError`.
    """
    p = Path(path)
    data = load_json(p)
    if not isinstance(data, list):
        raise DatasetError(f"{p}: a COCO results file is a JSON list, got {type(data).__name__}")
    return parse_coco_results(data, p, class_names_tuple(class_names), image_ids)
