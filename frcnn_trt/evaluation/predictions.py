"""``predictions.json`` (``frcnn-trt detect`` / ``test`` output): record, streaming writer, reader.

A JSON list of per-image records ``{"image_id", "file", "width", "height", "detections": [{"class_id", "label",
"score", "box"}]}`` with 0-based inclusive ``box`` = [x1, y1, x2, y2], streamed by :class:`PredictionsWriter`.
A malformed record or detection is skipped and reported as ``<file>: record <r> (image <id>), detection <k>:
<reason>``; a file that cannot be read raises :class:`~frcnn_trt.errors.DatasetError` naming it (policy:
:mod:`frcnn_trt.evaluation.file_checks`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.detections import DetectionArrays, Detections
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
from frcnn_trt.io import atomic_open

__all__ = ["PredictionsWriter", "parse_predictions", "prediction_record", "read_predictions"]


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def prediction_record(
    image_id: str,
    file: str | os.PathLike[str],
    width: int,
    height: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """One ``predictions.json`` record; values are written as given (float32 -> exact float64 repr)."""
    d = DetectionArrays(boxes, scores, classes)
    names = tuple(class_names)
    bad = (d.classes < 1) | (d.classes >= len(names))
    if bad.any():
        raise ValueError(f"image {image_id!r}: class {int(d.classes[bad][0])} outside 1..{len(names) - 1}")
    box_list = d.boxes.tolist()
    score_list = d.scores.tolist()
    class_list = d.classes.tolist()
    return {
        "image_id": str(image_id),
        "file": str(file),
        "width": int(width),
        "height": int(height),
        "detections": [
            {"class_id": c, "label": names[c], "score": s, "box": b}
            for c, s, b in zip(class_list, score_list, box_list, strict=True)
        ],
    }


class _Aborted(Exception):
    """What :meth:`PredictionsWriter.abort` hands the temporary file's context (never raised)."""


class PredictionsWriter:
    """Stream ``predictions.json``: ``[``, one record per :meth:`write` (flushed), ``]`` on close.

    Writes go to a temporary file in the target directory (:func:`frcnn_trt.io.atomic_open`), renamed onto
    ``path`` only by a successful :meth:`close`; an exception inside the ``with`` block (or :meth:`abort`)
    removes the temporary file and leaves ``path`` as it was (absent, or its previous content).
    """

    def __init__(self, path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.count = 0
        self._stack = contextlib.ExitStack()  # holds the atomic_open of the temporary file until close/abort
        self._file: Any = self._stack.enter_context(atomic_open(self.path, "w"))
        self._file.write("[")
        self._file.flush()

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one per-image record (a mapping with at least ``image_id`` and ``detections``)."""
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        if not isinstance(record, Mapping) or "image_id" not in record or "detections" not in record:
            raise ValueError(f"a predictions record needs 'image_id' and 'detections', got {record!r}")
        text = json.dumps(dict(record), default=json_default, allow_nan=False)
        self._file.write(("\n" if self.count == 0 else ",\n") + text)
        self._file.flush()
        self.count += 1

    def write_image(
        self,
        image_id: str,
        file: str | os.PathLike[str],
        width: int,
        height: int,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
    ) -> dict[str, Any]:
        """Build a record with :func:`prediction_record` (needs ``class_names``), write it, return it."""
        if self.class_names is None:
            raise ValueError("write_image needs the writer's class_names")
        record = prediction_record(image_id, file, width, height, boxes, scores, classes, self.class_names)
        self.write(record)
        return record

    def close(self) -> Path:
        """Finish the list, sync it to disk and rename it onto ``path``."""
        if self._file is None:
            return self.path
        try:
            self._file.write("\n]\n")
        except BaseException:
            self.abort()
            raise
        self._file = None
        self._stack.close()  # atomic_open: flush, fsync, rename onto path (or remove the temporary file)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left untouched."""
        if self._file is None:
            return
        self._file = None
        # atomic_open, left by an exception, removes its temporary file; the exception itself is not raised
        self._stack.__exit__(_Aborted, _Aborted(), None)

    def __enter__(self) -> PredictionsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # never closed: drop the temporary file, write nothing
        if getattr(self, "_file", None) is not None:
            with contextlib.suppress(Exception):
                self.abort()


#: the largest class id of a predictions.json read without class names
MAX_CLASS_ID = (1 << 31) - 1


def _class_of(det: dict[str, Any], names: tuple[str, ...] | None, label_to_id: dict[str, int] | None) -> int:
    """The class id of one detection, from ``class_id`` and/or ``label`` (checked to agree with the names)."""
    cid = det.get("class_id")
    label = det.get("label")
    if label is not None and not isinstance(label, str):
        raise BadRecord(f"label must be a string, got {short(label)}")
    if label_to_id is not None and label is not None:
        if label_to_id.get(label, 0) == 0:
            raise BadRecord(f"unknown class label {short(label)}")
        if cid is None:
            cid = label_to_id[label]
    max_class = len(names) - 1 if names is not None else MAX_CLASS_ID
    if type(cid) is not int or cid < 1:
        raise BadRecord(f"class_id must be an int >= 1, got {short(cid)}")
    if cid > max_class:
        raise BadRecord(f"class_id {short(cid)} outside 1..{max_class}")
    if names is not None and label is not None and label_to_id is not None and label_to_id[label] != cid:
        raise BadRecord(f"class_id {cid} ({names[cid]!r}) disagrees with label {short(label)}")
    return cid


def _prediction(det: Any, names: tuple[str, ...] | None, label_to_id: dict[str, int] | None
                ) -> tuple[int, list[float], float]:
    """``(class_id, box, score)`` of one predictions.json detection; :class:`BadRecord` if malformed."""
    if not isinstance(det, dict):
        raise BadRecord(f"expected an object, got {short(det)}")
    cid = _class_of(det, names, label_to_id)
    return cid, box_of(det.get("box")), score_of(det.get("score"))


def _record(rec: Any, known: frozenset[str] | None) -> tuple[str, list[Any]]:
    """``(image_id, detections)`` of one per-image record; :class:`BadRecord` if malformed."""
    if not isinstance(rec, dict):
        raise BadRecord(f"expected an object, got {short(rec)}")
    image_id = image_id_of(rec.get("image_id"), known)
    det_list = rec.get("detections")
    if not isinstance(det_list, list):
        raise BadRecord(f"(image {short(image_id)}) 'detections' must be a list, got {short(det_list)}")
    return image_id, det_list


def parse_predictions(items: list[Any], path: Path, names: tuple[str, ...] | None,
                      image_ids: Sequence[str] | None = None) -> Detections:
    """Detections of a parsed predictions.json list; a malformed record or detection is skipped and reported
    (see :mod:`frcnn_trt.evaluation.file_checks`)."""
    label_to_id = {n: i for i, n in enumerate(names)} if names is not None else None
    known = frozenset(image_ids) if image_ids is not None else None
    skips = SkipLog(path)
    dets = Detections()
    for r, rec in enumerate(items):
        try:
            image_id, det_list = _record(rec, known)
        except BadRecord as e:
            skips.add(f"{path}: record {r}", str(e), detection=False)
            continue
        boxes: list[list[float]] = []
        scores: list[float] = []
        classes: list[int] = []
        for k, det in enumerate(det_list):
            try:
                cid, box, score = _prediction(det, names, label_to_id)
            except BadRecord as e:
                skips.add(f"{path}: record {r} (image {short(image_id)}), detection {k}", str(e))
                continue
            boxes.append(box)
            scores.append(score)
            classes.append(cid)
        dets.add(image_id, np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(scores, dtype=np.float64),
                 np.array(classes, dtype=np.int64))
    return skips.finish(dets)


def read_predictions(path: str | os.PathLike[str], class_names: Sequence[str] | None = None, *,
                     image_ids: Sequence[str] | None = None) -> Detections:
    """Read ``predictions.json``; with ``class_names``, labels and class ids are checked against them, with
    ``image_ids`` records of other images are skipped. A malformed record or detection is skipped and reported;
    a file that cannot be read, or holds records but no valid one, raises :class:`DatasetError`."""
    p = Path(path)
    data = load_json(p)
    if not isinstance(data, list):
        raise DatasetError(f"{p}: predictions.json is a JSON list of records, got {type(data).__name__}")
    return parse_predictions(data, p, class_names_tuple(class_names) if class_names is not None else None,
                             image_ids)
