"""Detections in any of the three file formats, told apart by the path and the first JSON item."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.coco_results import parse_coco_results
from frcnn_trt.evaluation.detections import Detections
from frcnn_trt.evaluation.file_checks import GLOB_CHARS, class_names_tuple, load_json
from frcnn_trt.evaluation.predictions import parse_predictions
from frcnn_trt.evaluation.voc_results import read_voc_results

__all__ = ["load_detections"]


def _json_kind(items: Iterable[Any], path: Path) -> Literal["predictions", "coco"]:
    for k, item in enumerate(items):
        if isinstance(item, dict) and "detections" in item:
            return "predictions"
        if isinstance(item, dict) and "bbox" in item and "category_id" in item:
            return "coco"
        raise DatasetError(
            f"{path}: item {k} is neither a predictions.json record (with 'detections') nor a COCO result "
            f"(with 'bbox' and 'category_id'): {str(item)[:200]}"
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
    (``image_ids`` resolves their int image ids, see :func:`read_coco_results`).
    """
    p = Path(path)
    names = class_names_tuple(class_names)
    spec = str(p)
    if any(ch in spec for ch in GLOB_CHARS) or p.is_dir() or p.suffix.lower() == ".txt":
        return read_voc_results(p, names)
    if not p.exists():
        raise DatasetError(f"{p}: no such detections file")
    data = load_json(p)
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list (predictions.json or COCO results), got {type(data).__name__}")
    if _json_kind(data, p) == "predictions":
        return parse_predictions(data, p, names)
    return parse_coco_results(data, p, names, image_ids)
