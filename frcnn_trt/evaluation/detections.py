"""Detections of a whole image set, as evaluation holds them.

Glossary: D detections (of one image, or of a whole file), K classes (``class_names[1:]``; index 0 is
``__background__``). Boxes are float64 ``[D, 4]`` x1, y1, x2, y2 in 0-based inclusive pixels of the
original image (py-faster-rcnn's +1 geometry: width = x2 - x1 + 1); scores float64 ``[D]``; classes
int64 ``[D]`` in 1..K.

:class:`Detections` maps image ids to one :class:`DetectionArrays` each (float64, for scoring). It is what the
detection files are read into (:mod:`~frcnn_trt.evaluation.voc_results`,
:mod:`~frcnn_trt.evaluation.coco_results`, :mod:`~frcnn_trt.evaluation.predictions`) and what the VOC and COCO
evaluations take. (A detector's own result for one image is
:class:`frcnn_trt.engines.results.ImageDetections`: float32, with label names, image id and size.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DetectionArrays", "Detections"]


@dataclass(frozen=True)
class DetectionArrays:
    """Detections of one image: ``boxes`` float64 [D, 4], ``scores`` float64 [D], ``classes`` int64 [D]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        classes = np.asarray(self.classes)
        if classes.dtype.kind == "f" and not np.all(classes == np.round(classes)):
            raise ValueError(f"detection classes must be integers, got {classes!r}")
        classes = classes.astype(np.int64).reshape(-1)
        if not (boxes.shape[0] == scores.shape[0] == classes.shape[0]):
            raise ValueError(f"boxes {boxes.shape}, scores {scores.shape} and classes {classes.shape} disagree on D")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "classes", classes)

    @classmethod
    def empty(cls) -> DetectionArrays:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Detections:
    """Detections of an image set, keyed by image id (insertion order kept).

    ``add`` appends (several calls for the same image concatenate, e.g. one per class); ``get`` returns an
    empty :class:`DetectionArrays` for an image without detections, ``[]`` raises ``KeyError``. A reader of a
    detections file sets :attr:`problems` (the records it skipped and why, the first
    :data:`~frcnn_trt.evaluation.file_checks.MAX_PROBLEMS_KEPT`) and :attr:`num_skipped` (all of them).
    """

    def __init__(self) -> None:
        self._parts: dict[str, list[DetectionArrays]] = {}
        self.problems: list[str] = []
        self.num_skipped = 0

    @classmethod
    def from_dict(cls, per_image: Mapping[str, DetectionArrays]) -> Detections:
        dets = cls()
        for image_id, image_dets in per_image.items():
            dets.add(image_id, image_dets.boxes, image_dets.scores, image_dets.classes)
        return dets

    @classmethod
    def from_flat(
        cls,
        image_ids: Sequence[str],
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
    ) -> Detections:
        """Group flat arrays (one row per detection) by image id, keeping file order within an image."""
        flat = DetectionArrays(boxes, scores, classes)
        if len(image_ids) != len(flat):
            raise ValueError(f"{len(image_ids)} image ids for {len(flat)} detections")
        dets = cls()
        if len(flat) == 0:
            return dets
        ids = np.asarray(list(image_ids), dtype=str)
        uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # grouped by image, file order within each image
        bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
        groups = np.split(order, bounds)
        for u in np.argsort(first, kind="stable"):  # images in order of first appearance
            rows = groups[u]
            dets.add(str(uniq[u]), flat.boxes[rows], flat.scores[rows], flat.classes[rows])
        return dets

    def add(self, image_id: str, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        """Append detections of ``image_id`` (an image may be added with zero detections)."""
        if not isinstance(image_id, str):
            raise TypeError(f"image_id must be a str, got {image_id!r}")
        self._parts.setdefault(image_id, []).append(DetectionArrays(boxes, scores, classes))

    def get(self, image_id: str) -> DetectionArrays:
        parts = self._parts.get(image_id)
        if parts is None:
            return DetectionArrays.empty()
        if len(parts) > 1:
            merged = DetectionArrays(
                np.concatenate([p.boxes for p in parts]),
                np.concatenate([p.scores for p in parts]),
                np.concatenate([p.classes for p in parts]),
            )
            self._parts[image_id] = [merged]
        return self._parts[image_id][0]

    def __getitem__(self, image_id: str) -> DetectionArrays:
        if image_id not in self._parts:
            raise KeyError(image_id)
        return self.get(image_id)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    @property
    def image_ids(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def items(self) -> Iterator[tuple[str, DetectionArrays]]:
        for image_id in list(self._parts):
            yield image_id, self.get(image_id)

    @property
    def num_detections(self) -> int:
        return sum(len(p) for parts in self._parts.values() for p in parts)

    def __repr__(self) -> str:
        return f"Detections({len(self)} images, {self.num_detections} detections)"
