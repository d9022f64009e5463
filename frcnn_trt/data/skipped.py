"""The one report of what a dataset lost and why: ``skipped: <file or image>: <reason>`` lines.

Two stages drop data: the readers (an annotation file, object or image-set line that cannot be used becomes an
``error`` :class:`~frcnn_trt.data.imdb.DatasetIssue`) and ``filter_roidb`` (an entry without a usable RoI,
listed in ``TrainingRoidb.removed``). :func:`skipped_lines` turns both into the same lines; ``data inspect``
prints them and training logs them at its start (:func:`log_skipped`), so a user sees the same words in both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from frcnn_trt.data.imdb import DatasetIssue

__all__ = ["log_skipped", "skipped_lines"]

logger = logging.getLogger(__name__)


def skipped_lines(issues: Iterable[DatasetIssue], removed: Iterable[tuple[str, bool, str]] = ()) -> list[str]:
    """``skipped: <file>: <reason>`` for every issue that dropped data (severity ``error``), then
    ``skipped: image <id> [(flipped)]: <reason>`` for every roidb entry ``filter_roidb`` removed."""
    lines = [f"skipped: {i.file}: {i.message}" for i in issues if i.severity == "error"]
    for image_id, flipped, reason in removed:
        lines.append(f"skipped: image {image_id!r}{' (flipped)' if flipped else ''}: {reason}")
    return lines


def log_skipped(dataset: str, lines: Sequence[str], *, limit: int = 20, log: logging.Logger = logger) -> None:
    """Log ``lines`` (a warning headline and the first ``limit`` lines); nothing when nothing was skipped."""
    if not lines:
        return
    log.warning("%s: %d record(s) skipped — `frcnn-trt data inspect` lists every one", dataset, len(lines))
    for line in lines[:limit]:
        log.warning("  %s", line)
    if len(lines) > limit:
        log.warning("  ... and %d more", len(lines) - limit)
