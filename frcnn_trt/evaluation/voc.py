"""PASCAL VOC detection AP, number for number as py-faster-rcnn's ``voc_eval.py`` (docs/REFERENCE.md §12).

Glossary: N images, G ground-truth objects (of one image, or of the whole set), D detections, K classes
(``class_names[1:]``; index 0 is ``__background__``).

Per class, over the whole image set:

- Detections are sorted by descending score. py-faster-rcnn uses ``np.argsort(-confidence)`` (unstable);
  here the sort is **stable**, so tied scores keep file order: image order of ``annotations``, then each
  image's stored order (the order py-faster-rcnn writes its results files in). With 3-decimal scores ties
  are common, and the order among them can move AP slightly; the stable rule makes it deterministic.
- IoU uses +1 areas on 0-based inclusive boxes, computed in 1-based coordinates (``box + 1``) with
  exactly ``voc_eval``'s formula, so the numbers match its run on 1-based XML ints bit for bit.
- A detection is matched to its max-IoU ground truth of the class (first one on ties) if that IoU is
  **strictly** greater than ``iou_thresh``: a difficult gt => ignored (neither TP nor FP, but it still
  takes a place in the PR arrays, as in ``voc_eval``); a gt already matched => FP; else TP. IoU <= the
  threshold, or no gt of the class in the image => FP.
- ``npos`` = number of non-difficult gt; ``rec = tp / npos``, ``prec = tp / max(tp + fp, eps)``.
- By default scores are rounded to 3 decimals and box coordinates (1-based) to 1 decimal, as the results
  files py-faster-rcnn evaluates hold them (``round_scores`` / ``round_boxes`` switch this off).

Decision: a class with no non-difficult gt has AP **NaN** and is left out of the mean (py-faster-rcnn
divides by ``npos = 0`` there; on VOC every class has gt, so the mean is the plain mean of 20 as §12 says).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from frcnn_trt.data.imdb import ImageAnnotation
from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.detections import DetectionArrays, Detections
from frcnn_trt.evaluation.result import ClassResult, EvalResult

__all__ = ["evaluate_voc", "round_like_format", "voc_ap", "voc_iou"]

_EPS = np.finfo(np.float64).eps


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """AP of one PR curve (``rec``, ``prec`` in sorted-detection order), as ``voc_eval.voc_ap``.

    ``use_07_metric``: VOC2007 11-point AP, the mean over t in ``np.arange(0., 1.1, 0.1)`` of the max
    precision at recall >= t (0 if none). Those thresholds are numpy's: 0.30000000000000004,
    0.6000000000000001 and 0.7000000000000001, so a recall of exactly 3/10 does *not* reach t = 0.3.
    Otherwise: area under the monotone (right-to-left running max) precision envelope, summed where
    recall changes.
    """
    rec = np.asarray(rec, dtype=np.float64).reshape(-1)
    prec = np.asarray(prec, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"rec {rec.shape} and prec {prec.shape} differ in length")
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # 11 thresholds; the sum order is voc_eval's (bit-exact)
            at = rec >= t
            p = float(np.max(prec[at])) if at.any() else 0.0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_iou(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """[D, G] IoU with +1 areas (inclusive pixel boxes), float64, in ``voc_eval``'s operation order."""
    bb = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:, None, :]
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)[None, :, :]
    ixmin = np.maximum(gt[..., 0], bb[..., 0])
    iymin = np.maximum(gt[..., 1], bb[..., 1])
    ixmax = np.minimum(gt[..., 2], bb[..., 2])
    iymax = np.minimum(gt[..., 3], bb[..., 3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    uni = (
        (bb[..., 2] - bb[..., 0] + 1.0) * (bb[..., 3] - bb[..., 1] + 1.0)
        + (gt[..., 2] - gt[..., 0] + 1.0) * (gt[..., 3] - gt[..., 1] + 1.0)
        - inters
    )
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes: NaN, never a match
        return inters / uni


def round_like_format(x: np.ndarray, decimals: int) -> np.ndarray:
    """``float(f"{v:.{decimals}f}")`` for every v, vectorised.

    ``np.round`` (multiply, rint, divide) agrees with Python's correctly rounded formatting except when the
    scaled value lies within rounding error of a half; those few are formatted one by one.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.round(x, decimals)
    scaled = x * 10.0**decimals
    near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    if near_half.any():
        out[near_half] = [float(f"{v:.{decimals}f}") for v in x[near_half]]
    return out


def _check_classes(classes: np.ndarray, num_classes: int, what: str) -> None:
    bad = (classes < 1) | (classes > num_classes)
    if bad.any():
        raise DatasetError(f"{what}: class {int(classes[bad][0])} outside 1..{num_classes}")


def evaluate_voc(
    annotations: Sequence[ImageAnnotation],
    detections: Detections,
    class_names: Sequence[str],
    use_07_metric: bool,
    iou_thresh: float = 0.5,
    round_scores: bool = True,
    round_boxes: bool = True,
) -> EvalResult:
    """VOC AP per class and their mean over ``annotations`` (see the module docstring for the rules).

    Every image of ``annotations`` is evaluated (one without detections simply has none); a detection
    for an image id outside ``annotations`` raises :class:`DatasetError`, as py-faster-rcnn would fail.
    """
    names = tuple(class_names)
    num_classes = len(names) - 1
    if num_classes < 1:
        raise ValueError(f"class_names must hold __background__ and at least one class, got {names!r}")
    anns = list(annotations)
    _check_image_ids(anns, detections)

    # Per image: IoU of every detection with every gt, other classes masked out -> max IoU and its gt.
    per_image: list[_ImageMatch] = []
    gt_offset = 0
    for a in anns:
        per_image.append(_match_image(a, detections.get(a.image_id), gt_offset, num_classes, round_scores,
                                      round_boxes))
        gt_offset += per_image[-1].gt_classes.size
    m = _ImageMatch.concatenate(per_image)
    per_class = [_class_result(c, names[c], m, iou_thresh, use_07_metric) for c in range(1, num_classes + 1)]
    valid = [c.ap for c in per_class if not math.isnan(c.ap)]
    mean_ap = float(np.mean(valid)) if valid else math.nan
    return EvalResult(
        metric="voc07" if use_07_metric else "voc",
        per_class=tuple(per_class),
        mean_ap=mean_ap,
        num_images=len(anns),
        settings={
            "use_07_metric": bool(use_07_metric),
            "iou_thresh": float(iou_thresh),
            "round_scores": bool(round_scores),
            "round_boxes": bool(round_boxes),
            "sort": "stable",
            "classes_without_gt": "nan, excluded from mAP",
        },
        summary={"mAP": mean_ap},
    )


def _check_image_ids(anns: list[ImageAnnotation], detections: Detections) -> None:
    """Image ids unique in the annotations, and every detection's image among them."""
    index: set[str] = set()
    for a in anns:
        if a.image_id in index:
            raise DatasetError(f"image id {a.image_id!r} appears twice in the annotations")
        index.add(a.image_id)
    unknown = [i for i in detections.image_ids if i not in index]
    if unknown:
        raise DatasetError(
            f"detections for {len(unknown)} image id(s) not in the evaluated image set, e.g. {unknown[:5]} "
            f"(first annotated ids: {[a.image_id for a in anns[:3]]})"
        )


@dataclass
class _ImageMatch:
    """Ground truth and detections of one image (or, concatenated, of all): each detection's score, class,
    max IoU with a gt of its class (``-inf``: none) and that gt's index over the whole set (``-1``: none)."""

    gt_classes: np.ndarray
    gt_difficult: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    ovmax: np.ndarray
    jmax: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[_ImageMatch]) -> _ImageMatch:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), np.zeros(0, np.int64), np.zeros(0),
                       np.zeros(0, np.int64))
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


def _match_image(a: ImageAnnotation, d: DetectionArrays, gt_offset: int, num_classes: int, round_scores: bool,
                 round_boxes: bool) -> _ImageMatch:
    g = np.asarray(a.boxes, dtype=np.float64).reshape(-1, 4) + 1.0
    gc = np.asarray(a.classes, dtype=np.int64).reshape(-1)
    gd = np.asarray(a.difficult, dtype=bool).reshape(-1)
    if gd.size == 0 and gc.size > 0:
        gd = np.zeros(gc.size, dtype=bool)
    if not (g.shape[0] == gc.size == gd.size):
        raise DatasetError(f"image {a.image_id!r}: {g.shape[0]} boxes, {gc.size} classes, {gd.size} difficult flags")
    _check_classes(gc, num_classes, f"ground truth of image {a.image_id!r}")
    _check_classes(d.classes, num_classes, f"detections of image {a.image_id!r}")
    b = round_like_format(d.boxes + 1.0, 1) if round_boxes else d.boxes + 1.0
    s = round_like_format(d.scores, 3) if round_scores else d.scores
    ovmax = np.full(len(d), -np.inf)
    jmax = np.full(len(d), -1, dtype=np.int64)
    if len(d) and g.shape[0]:
        iou = voc_iou(b, g)
        iou[d.classes[:, None] != gc[None, :]] = -np.inf
        j = np.argmax(iou, axis=1)
        ovmax = iou[np.arange(len(d)), j]
        jmax = np.where(np.isfinite(ovmax), j + gt_offset, -1)
    return _ImageMatch(gc, gd, s, d.classes, ovmax, jmax)


def _class_result(c: int, name: str, m: _ImageMatch, iou_thresh: float, use_07_metric: bool) -> ClassResult:
    """One class's PR curve and AP over the whole set (greedy matching in descending score order)."""
    # One extra "no gt" slot at the end, so jmax = -1 indexes a non-difficult placeholder.
    gt_difficult = np.concatenate([m.gt_difficult, np.zeros(1, dtype=bool)])
    npos = int(np.count_nonzero((m.gt_classes == c) & ~m.gt_difficult))
    sel = np.flatnonzero(m.classes == c)
    order = sel[np.argsort(-m.scores[sel], kind="stable")]
    ov = m.ovmax[order]
    j = m.jmax[order]
    above = ov > iou_thresh  # strict, as voc_eval
    ignored = above & gt_difficult[j]
    cand = np.flatnonzero(above & ~ignored)
    # Greedy matching to the max-IoU gt only: the first (highest-scoring) claim on a gt is the TP.
    _, first = np.unique(j[cand], return_index=True)
    tp = np.zeros(order.size)
    tp[cand[first]] = 1.0
    fp = np.where(ignored, 0.0, 1.0 - tp)
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    prec = tp / np.maximum(tp + fp, _EPS)
    if npos == 0:
        ap, rec, final_recall = math.nan, np.full(order.size, math.nan), math.nan
    else:
        rec = tp / float(npos)
        ap = voc_ap(rec, prec, use_07_metric)
        final_recall = float(rec[-1]) if rec.size else 0.0
    return ClassResult(class_id=c, name=name, ap=ap, npos=npos, num_detections=int(order.size),
                       extra={"recall": final_recall}, recall=rec, precision=prec)
