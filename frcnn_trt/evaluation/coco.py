"""COCO-style box AP (AP@[.50:.95], AP50, AP75, APs/m/l) through ``faster_coco_eval``.

Glossary: N images, G ground-truth objects, D detections, K classes (``class_names[1:]``).

The ground truth is built in memory from :class:`~frcnn_trt.data.imdb.ImageAnnotation` records:
image ids are positions 1..N in ``annotations`` order, category ids our class indices 1..K, annotation ids
1..G. Boxes go in with +1 geometry: ``bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` and ``area = w * h``, so
COCO's IoU (continuous boxes) equals py-faster-rcnn's +1 IoU and the small/medium/large split uses the
pixel-count area.

Difficult objects (decision, ``difficult="crowd"`` by default): written as ``iscrowd = 1``, as mmdetection's
VOC-to-COCO converter does. COCO then ignores a detection that matches no regular gt but overlaps the
difficult one (crowd IoU: intersection / detection area >= threshold) — the closest COCO has to VOC's
"neither TP nor FP" — and does not count them as positives. ``"drop"`` leaves them out (detections on
them become FPs); ``"keep"`` evaluates them as ordinary objects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from frcnn_trt.data.imdb import ImageAnnotation
from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.detections import Detections
from frcnn_trt.evaluation.result import ClassResult, EvalResult

__all__ = ["coco_ground_truth", "evaluate_coco"]

logger = logging.getLogger(__name__)

DifficultMode = Literal["crowd", "drop", "keep"]
_SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + 1.0], axis=1)


def coco_ground_truth(
    annotations: Sequence[ImageAnnotation],
    class_names: Sequence[str],
    *,
    difficult: DifficultMode = "crowd",
) -> dict[str, Any]:
    """A COCO ground-truth dict (``images``, ``annotations``, ``categories``) for ``annotations``."""
    if difficult not in ("crowd", "drop", "keep"):
        raise ValueError(f"difficult must be 'crowd', 'drop' or 'keep', got {difficult!r}")
    names = tuple(class_names)
    num_classes = len(names) - 1
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    seen: set[str] = set()
    for pos, a in enumerate(annotations, start=1):
        if a.image_id in seen:
            raise DatasetError(f"image id {a.image_id!r} appears twice in the annotations")
        seen.add(a.image_id)
        images.append({"id": pos, "file_name": str(a.path), "width": int(a.width), "height": int(a.height)})
        classes = np.asarray(a.classes, dtype=np.int64).reshape(-1)
        flags = np.asarray(a.difficult, dtype=bool).reshape(-1)
        if flags.size == 0:
            flags = np.zeros(classes.size, dtype=bool)
        xywh = _xywh(a.boxes)
        if not (xywh.shape[0] == classes.size == flags.size):
            raise DatasetError(
                f"image {a.image_id!r}: {xywh.shape[0]} boxes, {classes.size} classes, {flags.size} difficult"
            )
        bad = (classes < 1) | (classes > num_classes)
        if bad.any():
            raise DatasetError(
                f"ground truth of image {a.image_id!r}: class {int(classes[bad][0])} outside 1..{num_classes}"
            )
        for box, c, diff in zip(xywh.tolist(), classes.tolist(), flags.tolist(), strict=True):
            if diff and difficult == "drop":
                continue
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": pos,
                    "category_id": c,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(diff and difficult == "crowd"),
                }
            )
    categories = [{"id": c, "name": names[c]} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": anns, "categories": categories}


def _results(annotations: Sequence[ImageAnnotation], detections: Detections, num_classes: int) -> list[dict[str, Any]]:
    position = {a.image_id: pos for pos, a in enumerate(annotations, start=1)}
    unknown = [i for i in detections.image_ids if i not in position]
    if unknown:
        raise DatasetError(
            f"detections for {len(unknown)} image id(s) not in the evaluated image set, e.g. {unknown[:5]}"
        )
    out: list[dict[str, Any]] = []
    for image_id, d in detections.items():
        bad = (d.classes < 1) | (d.classes > num_classes)
        if bad.any():
            raise DatasetError(
                f"detections of image {image_id!r}: class {int(d.classes[bad][0])} outside 1..{num_classes}"
            )
        pos = position[image_id]
        out.extend(
            {"image_id": pos, "category_id": c, "bbox": b, "score": s}
            for b, s, c in zip(_xywh(d.boxes).tolist(), d.scores.tolist(), d.classes.tolist(), strict=True)
        )
    return out


def _mean_valid(x: np.ndarray) -> float:
    v = x[x > -1]
    return float(np.mean(v)) if v.size else math.nan


def evaluate_coco(
    annotations: Sequence[ImageAnnotation],
    detections: Detections,
    class_names: Sequence[str],
    *,
    difficult: DifficultMode = "crowd",
    max_dets: int = 100,
) -> EvalResult:
    """COCO box AP over ``annotations``; per-class AP is AP@[.50:.95] (``extra``: AP50, AP75).

    ``mean_ap`` = ``summary["AP"]`` (COCO's mean over classes with gt); values COCO reports as -1 (no gt in
    an area range or class) are NaN. ``max_dets`` is the last of COCO's ``maxDets`` (1, 10, 100).
    """
    from faster_coco_eval import COCO, COCOeval_faster  # heavy import, only when used

    names = tuple(class_names)
    num_classes = len(names) - 1
    if num_classes < 1:
        raise ValueError(f"class_names must hold __background__ and at least one class, got {names!r}")
    anns = list(annotations)
    gt = coco_ground_truth(anns, names, difficult=difficult)
    results = _results(anns, detections, num_classes)
    coco_gt = COCO(gt, print_function=logger.debug)
    coco_dt = coco_gt.loadRes(results)
    coco_dt.print_function = logger.debug
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=logger.debug)
    ev.params.maxDets = [1, 10, int(max_dets)]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = [float(v) for v in ev.stats[: len(_SUMMARY_KEYS)]]
    summary = {k: (math.nan if v < 0 else v) for k, v in zip(_SUMMARY_KEYS, stats, strict=True)}

    precision = np.asarray(ev.eval["precision"])  # [T IoU thresholds, R recall points, K, A areas, M maxDets]
    iou_thrs = np.asarray(ev.params.iouThrs)
    t50 = int(np.flatnonzero(np.isclose(iou_thrs, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(iou_thrs, 0.75))[0])
    cat_ids = list(ev.params.catIds)
    gt_classes = np.array([g["category_id"] for g in gt["annotations"] if not g["iscrowd"]], dtype=np.int64)
    npos = np.bincount(gt_classes, minlength=num_classes + 1)
    ndet = np.bincount(np.array([r["category_id"] for r in results], dtype=np.int64), minlength=num_classes + 1)
    per_class = []
    for c in range(1, num_classes + 1):
        k = cat_ids.index(c)
        p = precision[:, :, k, 0, -1]
        per_class.append(
            ClassResult(
                class_id=c,
                name=names[c],
                ap=_mean_valid(p),
                npos=int(npos[c]),
                num_detections=int(ndet[c]),
                extra={"AP50": _mean_valid(p[t50]), "AP75": _mean_valid(p[t75])},
            )
        )
    return EvalResult(
        metric="coco",
        per_class=tuple(per_class),
        mean_ap=summary["AP"],
        num_images=len(anns),
        settings={
            "iou_thresholds": "0.50:0.05:0.95",
            "max_dets": int(max_dets),
            "difficult": difficult,
            "box_geometry": "+1 (w = x2 - x1 + 1)",
            "backend": "faster_coco_eval",
        },
        summary=summary,
    )
