"""Detections in any of the three file formats, told apart by the path and the first JSON item."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.coco_results import parse_coco_results
from frcnn_trt.evaluation.detections import Detections
from frcnn_trt.evaluation.file_checks import GLOB_CHARS, class_names_tuple, load_json
from frcnn_trt.evaluation.predictions import parse_predictions
from frcnn_trt.evaluation.voc_results import read_voc_results
from frcnn_trt.files import short

__all__ = ["load_detections"]


def _json_kind(items: list[Any], path: Path) -> Literal["predictions", "coco"]:
    """The format of a JSON list: told by its first object that looks like either (a malformed item before it
    is then skipped by that format's reader, not taken for a verdict on the whole file)."""
    for item in items:
        if isinstance(item, dict) and "detections" in item:
            return "predictions"
        if isinstance(item, dict) and "bbox" in item and "category_id" in item:
            return "coco"
    if items:
        raise DatasetError(
            f"{path}: no item is a predictions.json record (with 'detections') or a COCO result (with 'bbox' and "
            f"'category_id'); item 0: {short(items[0], 200)}"
        )
    return "coco"  # an empty list: no detections either way


def load_detections(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    image_ids: Sequence[str] | None = None,
) -> Detections:
    """Read detections in any of the three formats, told apart by the path and the first JSON item.

    A directory, a glob pattern or a ``.txt`` file -> per-class results files; a JSON list whose items
    have ``detections`` -> ``predictions.json``; items with ``bbox`` and ``category_id`` -> COCO results
    (``image_ids`` resolves their int image ids, see :func:`read_coco_results`). With ``image_ids``, detections
    of images outside the set are skipped and reported in every format, as are malformed records (policy:
    :mod:`frcnn_trt.evaluation.file_checks`).
    """
    spec = os.fspath(path)
    if "\x00" in spec:
        raise DatasetError(f"{short(spec, 200)}: a detections path cannot hold a NUL byte")
    p = Path(spec)
    names = class_names_tuple(class_names)
    if any(ch in spec for ch in GLOB_CHARS) or p.is_dir() or p.suffix.lower() == ".txt":
        return read_voc_results(p, names, image_ids=image_ids)
    if not os.path.lexists(p):
        raise DatasetError(f"{p}: no such detections file")
    data = load_json(p)
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list (predictions.json or COCO results), got {type(data).__name__}")
    if _json_kind(data, p) == "predictions":
        return parse_predictions(data, p, names, image_ids)
    return parse_coco_results(data, p, names, image_ids)
