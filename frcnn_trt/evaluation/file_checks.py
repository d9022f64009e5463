"""What the three detection file readers share: reading the file, checking one record, reporting skips.

Policy (the same for per-class results files, COCO results JSON and ``predictions.json``):

- **File-level faults raise** :class:`~frcnn_trt.errors.DatasetError` naming the file: not a regular file (a
  FIFO, a folder), over the size limit, not UTF-8 (or UTF-16 with its byte-order mark) JSON, nested too deep,
  integers beyond Python's digit limit, a top level of the wrong type, a results file name of an unknown class.
- **Record-level faults skip that record** (a results line, a COCO result, a predictions record or one of its
  detections) and report it: a line that is not UTF-8, the wrong number of fields, a value of the wrong type
  (a list or an object where an id, a label or a number belongs), a non-finite (JSON ``NaN``/``Infinity``,
  which Python's ``json`` writes, included) or out-of-range number, an
  inverted box (+1 width or height below 0), an unknown class, an image id that is empty, holds control
  characters (NUL included), is longer than :data:`MAX_ID_CHARS`, or is not in the evaluated image set. The
  reasons land in :attr:`Detections.problems <frcnn_trt.evaluation.detections.Detections.problems>` and one
  warning line sums them up, so one bad record never costs the good ones beside it.
- A file (or set of files) whose detections were all malformed is refused: evaluating it would report an AP
  of 0 for a reason the user should see first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frcnn_trt import files
from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.detections import Detections

__all__ = [
    "GLOB_CHARS",
    "MAX_COORD",
    "MAX_DETECTIONS_BYTES",
    "MAX_ID_CHARS",
    "BadRecord",
    "SkipLog",
    "box_of",
    "class_names_tuple",
    "image_id_of",
    "load_json",
    "read_lines",
    "score_of",
]

logger = logging.getLogger("frcnn_trt.evaluation")

#: a detections path holding one of these is a glob pattern
GLOB_CHARS = frozenset("*?[")
#: the largest detections file read (COCO results of a large set run to hundreds of megabytes)
MAX_DETECTIONS_BYTES = 1 << 30
#: the longest image id accepted (file names stop at 255 bytes; this leaves room for folders)
MAX_ID_CHARS = 1024
#: the largest magnitude of a box coordinate, in pixels (beyond it +1 areas lose all precision)
MAX_COORD = 1e7
#: reasons kept in :attr:`Detections.problems` (the count covers them all)
MAX_PROBLEMS_KEPT = 1000


class BadRecord(Exception):
    """One record is malformed: the reader skips it and reports the message (never escapes a reader)."""


def class_names_tuple(class_names: Sequence[str]) -> tuple[str, ...]:
    """``class_names`` as a tuple, checked to hold ``__background__`` and at least one class."""
    names = tuple(class_names)
    if len(names) < 2:
        raise ValueError(f"class_names must hold __background__ and at least one class, got {names!r}")
    return names


def load_json(path: Path) -> Any:
    """The JSON value in ``path``, read through :mod:`frcnn_trt.files` (file-level faults → DatasetError).
    ``NaN``/``Infinity`` literals parse (Python's ``json`` writes them): the record holding one is skipped."""
    return files.load_json(path, "detections file", max_bytes=MAX_DETECTIONS_BYTES, error=DatasetError,
                           allow_nan=True)


def read_lines(path: Path) -> tuple[list[str], list[str]]:
    """``(lines, problems)`` of a results file: an undecodable line is left out and named in ``problems``."""
    return files.read_lines(path, "results file", max_bytes=MAX_DETECTIONS_BYTES, error=DatasetError)


def image_id_of(value: Any, known: frozenset[str] | None = None) -> str:
    """``value`` as an image id: a non-empty string without control characters, of at most :data:`MAX_ID_CHARS`,
    in ``known`` when given; :class:`BadRecord` otherwise."""
    if not isinstance(value, str):
        raise BadRecord(f"image_id must be a string, got {files.short(value)}")
    if not value or len(value) > MAX_ID_CHARS:
        raise BadRecord(f"image_id {files.short(value)} is empty or longer than {MAX_ID_CHARS} characters")
    if not value.isprintable():
        raise BadRecord(f"image_id {files.short(value)} holds control characters")
    if known is not None and value not in known:
        raise BadRecord(f"image_id {files.short(value)} is not in the evaluated image set")
    return value


def score_of(value: Any) -> float:
    """A finite score (a JSON number, not a boolean); :class:`BadRecord` otherwise."""
    if type(value) is float and math.isfinite(value):
        return value
    try:
        return float(files.number(value, "score", error=DatasetError))
    except DatasetError as e:
        raise BadRecord(str(e)) from None


def _coord(v: Any) -> float:
    if (type(v) is float or type(v) is int) and -MAX_COORD <= v <= MAX_COORD:  # NaN fails the range test
        return float(v)
    raise BadRecord(f"box values must be finite numbers within ±{MAX_COORD:g}, got {files.short(v)}")


def box_of(value: Any, xywh: bool = False) -> list[float]:
    """Four finite coordinates ``[x1, y1, x2, y2]`` (``xywh``: ``[x, y, w, h]``, returned as given) with a
    +1 width and height of at least 0; :class:`BadRecord` otherwise."""
    if type(value) is not list or len(value) != 4:
        raise BadRecord(f"box must be a list of 4 numbers, got {files.short(value)}")
    a, b, c, d = (_coord(v) for v in value)
    w, h = (c, d) if xywh else (c - a + 1.0, d - b + 1.0)
    if w < 0 or h < 0:
        raise BadRecord(f"inverted box {files.short(value)} (negative width or height)")
    return [a, b, c, d]


class SkipLog:
    """The records one load skipped, and why; :meth:`finish` reports them and refuses an all-bad file."""

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.count = 0
        self.detections = 0  # of ``count``: detections (lines, results, boxes), not whole per-image records
        self.kept: list[str] = []

    def add(self, where: str, reason: str, detection: bool = True) -> None:
        self.count += 1
        self.detections += detection
        if len(self.kept) < MAX_PROBLEMS_KEPT:
            self.kept.append(f"{where}: {reason}, skipped")

    def extend(self, problems: Sequence[str]) -> None:
        for p in problems:
            self.count += 1
            self.detections += 1
            if len(self.kept) < MAX_PROBLEMS_KEPT:
                self.kept.append(p)

    def finish(self, dets: Detections) -> Detections:
        """Attach the problems to ``dets`` and warn once; :class:`DatasetError` when nothing valid is left: no
        detection, and no image either or only detections skipped (an image listed without detections beside a
        malformed record is a valid, empty result)."""
        dets.problems = list(self.kept)
        dets.num_skipped = self.count
        if not self.count:
            return dets
        if dets.num_detections == 0 and (len(dets) == 0 or self.detections):
            raise DatasetError(f"{self.source}: no valid detection ({self.count} record(s) skipped); first: "
                               f"{self.kept[0]}")
        logger.warning("%s: %d detection record(s) skipped; first: %s", self.source, self.count, self.kept[0])
        return dets
