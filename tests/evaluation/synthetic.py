"""Shared test data: a synthetic 5-image VOC-like set with difficult objects and duplicate detections.

Worked by hand in ``test_voc.py`` (classes: cat, dog with gt; bird without gt).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from frcnn_trt.data.imdb import ImageAnnotation
from frcnn_trt.evaluation import Detections

CLASS_NAMES = ("__background__", "cat", "dog", "bird")
CAT, DOG, BIRD = 1, 2, 3


def make_annotation(
    image_id: str, objects: Sequence[tuple[Sequence[float], int, bool]], width: int = 100, height: int = 100
) -> ImageAnnotation:
    boxes = np.array([o[0] for o in objects], dtype=np.float32).reshape(-1, 4)
    return ImageAnnotation(
        image_id=image_id,
        path=Path(f"/nonexistent/{image_id}.jpg"),
        width=width,
        height=height,
        boxes=boxes,
        classes=np.array([o[1] for o in objects], dtype=np.int64),
        difficult=np.array([o[2] for o in objects], dtype=bool),
    )


def synthetic_annotations() -> list[ImageAnnotation]:
    return [
        make_annotation("000001", [([10, 10, 49, 49], CAT, False), ([60, 60, 89, 89], DOG, True)]),
        make_annotation("000002", [([0, 0, 19, 19], CAT, False), ([50, 50, 69, 69], CAT, True)]),
        make_annotation("000003", [([20, 20, 59, 59], DOG, False)]),
        make_annotation("000004", [([10, 10, 29, 29], CAT, False), ([30, 30, 69, 69], DOG, False)]),
        make_annotation("000005", []),
    ]


# (image, box, score, class): the comment says what py-faster-rcnn's matching makes of each one.
SYNTHETIC_DETECTIONS: list[tuple[str, list[float], float, int]] = [
    ("000001", [10, 10, 49, 49], 0.9, CAT),  # TP (gt A)
    ("000001", [11, 11, 50, 50], 0.8, CAT),  # duplicate of A (IoU 0.906) -> FP
    ("000001", [60, 60, 89, 89], 0.95, DOG),  # matches difficult dog B -> ignored
    ("000002", [50, 50, 69, 69], 0.7, CAT),  # matches difficult cat D -> ignored
    ("000002", [0, 0, 19, 19], 0.4, CAT),  # TP (gt C)
    ("000003", [20, 20, 59, 59], 0.6, CAT),  # no cat in image 3 -> FP
    ("000003", [20, 20, 59, 59], 0.85, DOG),  # TP (gt E)
    ("000004", [10, 10, 49, 29], 0.5, CAT),  # IoU exactly 0.5 with F -> FP (strict)
    ("000004", [30, 30, 69, 69], 0.75, DOG),  # TP (gt G)
    ("000004", [30, 30, 69, 69], 0.65, DOG),  # duplicate of G -> FP
    ("000005", [0, 0, 9, 9], 0.3, CAT),  # empty image -> FP
    ("000005", [0, 0, 9, 9], 0.2, BIRD),  # class without gt
]


def synthetic_detections() -> Detections:
    dets = Detections()
    for image_id, box, score, cls in SYNTHETIC_DETECTIONS:
        dets.add(image_id, np.array([box], dtype=np.float32), np.array([score], dtype=np.float32), np.array([cls]))
    return dets
