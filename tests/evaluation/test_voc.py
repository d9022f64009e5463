"""VOC AP as py-faster-rcnn's voc_eval.py (docs/REFERENCE.md §12): hand-worked cases and a loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frcnn_trt.data.imdb import ImageAnnotation
from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation import Detections, evaluate_voc, round_like_format, voc_ap, voc_iou

from .synthetic import CAT, CLASS_NAMES, DOG, make_annotation, synthetic_annotations, synthetic_detections

# A PR curve by hand: npos = 4, sorted detections TP FP TP FP TP.
HAND_REC = np.array([1, 1, 2, 2, 3]) / 4
HAND_PREC = np.array([1 / 1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])


def test_voc_ap_area_hand_worked() -> None:
    # envelope [1, 2/3, 0.6] over recall steps 0.25 each, nothing past 0.75: 0.25 * (1 + 2/3 + 0.6) = 17/30
    assert voc_ap(HAND_REC, HAND_PREC, use_07_metric=False) == pytest.approx(17 / 30, abs=1e-15)


def test_voc_ap_11_point_hand_worked() -> None:
    # t = 0, .1, .2 -> 1; t = .3, .4, .5 -> 2/3; t = .6, .7 -> 0.6; t = .8, .9, 1 -> 0.  Sum 6.2.
    assert voc_ap(HAND_REC, HAND_PREC, use_07_metric=True) == pytest.approx(6.2 / 11, abs=1e-15)


def test_voc_ap_11_point_uses_numpys_arange_thresholds() -> None:
    # np.arange(0., 1.1, 0.1)[3] is 0.30000000000000004, so recall 3/10 = 0.3 does not reach it.
    rec = np.array([1, 2, 3]) / 10
    prec = np.ones(3)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(3 / 11, abs=1e-15)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.3, abs=1e-15)


def test_voc_ap_without_detections_is_zero() -> None:
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=False) == 0.0


def test_voc_iou_uses_plus_one_areas() -> None:
    # 10x10 boxes shifted by 5 px: intersection 5*10 = 50, union 150 (the +1-free IoU would be 45/117).
    iou = voc_iou(np.array([[0, 0, 9, 9]]), np.array([[5, 0, 14, 9], [20, 20, 29, 29]]))
    np.testing.assert_allclose(iou, [[1 / 3, 0.0]], rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("use_07", "cat_ap", "map_"),
    [
        # cat: rec [1/3 x5, 2/3 x2], prec [1, 1/2, 1/2 (ignored det), 1/3, 1/4, 2/5, 2/6]
        (True, 5.2 / 11, (5.2 / 11 + 1.0) / 2),  # 4 thresholds at 1, 3 (.4 .5 .6) at 0.4
        (False, 7 / 15, (7 / 15 + 1.0) / 2),  # 1/3 * 1 + 1/3 * 0.4
    ],
)
def test_synthetic_set_hand_worked(use_07: bool, cat_ap: float, map_: float) -> None:
    result = evaluate_voc(synthetic_annotations(), synthetic_detections(), CLASS_NAMES, use_07)
    cat, dog, bird = result.per_class
    assert cat.ap == pytest.approx(cat_ap, abs=1e-12)
    # dog: the difficult match comes first (tp = fp = 0 -> prec 0 at rec 0), then TP, TP, duplicate FP.
    assert dog.ap == pytest.approx(1.0, abs=1e-12)
    assert (cat.npos, dog.npos, bird.npos) == (3, 2, 0)
    assert (cat.num_detections, dog.num_detections, bird.num_detections) == (7, 4, 1)
    assert cat.precision is not None and dog.precision is not None
    assert cat.recall is not None and dog.recall is not None
    np.testing.assert_allclose(cat.precision, [1, 1 / 2, 1 / 2, 1 / 3, 1 / 4, 2 / 5, 2 / 6])
    np.testing.assert_allclose(cat.recall, [1 / 3] * 5 + [2 / 3] * 2)
    np.testing.assert_allclose(dog.precision, [0, 1, 1, 2 / 3])
    np.testing.assert_allclose(dog.recall, [0, 1 / 2, 1, 1])
    assert cat.extra["recall"] == pytest.approx(2 / 3)
    # A class without gt: NaN, left out of the mean.
    assert math.isnan(bird.ap)
    assert result.mean_ap == pytest.approx(map_, abs=1e-12)
    assert result.metric == ("voc07" if use_07 else "voc")
    assert result.num_images == 5


def test_iou_exactly_half_is_not_a_match() -> None:
    gt = np.array([[10, 10, 29, 29]])
    det = np.array([[10, 10, 49, 29]])
    assert voc_iou(det, gt)[0, 0] == 0.5  # 400 / 800, exact in binary
    anns = [make_annotation("a", [([10, 10, 29, 29], CAT, False)])]
    dets = Detections()
    dets.add("a", det, np.array([0.9]), np.array([CAT]))
    assert evaluate_voc(anns, dets, CLASS_NAMES, False)["cat"].ap == 0.0
    assert evaluate_voc(anns, dets, CLASS_NAMES, False, iou_thresh=0.49)["cat"].ap == 1.0


def test_difficult_match_is_ignored_not_false_positive() -> None:
    objects = [([0, 0, 19, 19], CAT, False), ([50, 50, 69, 69], CAT, True)]
    dets = Detections()
    dets.add("a", np.array([[50, 50, 69, 69], [0, 0, 19, 19]]), np.array([0.9, 0.8]), np.array([CAT, CAT]))
    with_difficult = evaluate_voc([make_annotation("a", objects)], dets, CLASS_NAMES, False)["cat"]
    assert with_difficult.npos == 1
    np.testing.assert_array_equal(with_difficult.precision, [0.0, 1.0])  # the ignored det adds neither
    assert with_difficult.ap == 1.0
    # The same detections without the difficult object: the first one becomes an FP.
    without = evaluate_voc([make_annotation("a", objects[:1])], dets, CLASS_NAMES, False)["cat"]
    np.testing.assert_array_equal(without.precision, [0.0, 0.5])
    assert without.ap == 0.5


def test_duplicate_detection_is_false_positive_even_if_gt_is_difficult_free() -> None:
    dets = Detections()
    boxes = np.array([[0, 0, 19, 19], [1, 1, 20, 20], [0, 0, 19, 19]])
    dets.add("a", boxes, np.array([0.9, 0.8, 0.7]), np.array([CAT, CAT, CAT]))
    res = evaluate_voc([make_annotation("a", [([0, 0, 19, 19], CAT, False)])], dets, CLASS_NAMES, False)
    np.testing.assert_array_equal(res["cat"].precision, [1.0, 0.5, 1 / 3])
    np.testing.assert_array_equal(res["cat"].recall, [1.0, 1.0, 1.0])


def test_matching_goes_to_max_iou_gt_only() -> None:
    # Two gts; the second detection's max-IoU gt is the matched one -> FP, though it overlaps the other
    # gt by more than 0.5 (voc_eval does not fall back to the next-best gt).
    objects = [([0, 0, 19, 19], CAT, False), ([4, 0, 23, 19], CAT, False)]
    dets = Detections()
    dets.add("a", np.array([[0, 0, 19, 19], [1, 0, 20, 19]]), np.array([0.9, 0.8]), np.array([CAT, CAT]))
    res = evaluate_voc([make_annotation("a", objects)], dets, CLASS_NAMES, False)["cat"]
    np.testing.assert_array_equal(res.precision, [1.0, 0.5])


def test_score_rounding_to_three_decimals_ties_and_reorders() -> None:
    # Unrounded, the TP (0.12369) outranks the FP (0.12351); both round to 0.124, the tie keeps file
    # (image) order, and the FP of image "a" comes first.
    anns = [make_annotation("a", []), make_annotation("b", [([0, 0, 9, 9], CAT, False)])]
    dets = Detections()
    dets.add("a", np.array([[0, 0, 9, 9]]), np.array([0.12351]), np.array([CAT]))
    dets.add("b", np.array([[0, 0, 9, 9]]), np.array([0.12369]), np.array([CAT]))
    exact = evaluate_voc(anns, dets, CLASS_NAMES, False, round_scores=False)["cat"]
    rounded = evaluate_voc(anns, dets, CLASS_NAMES, False)["cat"]
    assert exact.ap == 1.0
    assert rounded.ap == 0.5
    assert evaluate_voc(anns, dets, CLASS_NAMES, True)["cat"].ap == pytest.approx(0.5)


def test_box_rounding_to_one_decimal_like_results_files() -> None:
    # y2 = 4.04 is written as 5.0 (1-based): IoU exactly 0.5 -> no match; unrounded IoU 0.504 -> match.
    anns = [make_annotation("a", [([0, 0, 9, 9], CAT, False)])]
    dets = Detections()
    dets.add("a", np.array([[0, 0, 9, 4.04]]), np.array([0.9]), np.array([CAT]))
    assert evaluate_voc(anns, dets, CLASS_NAMES, False)["cat"].ap == 0.0
    assert evaluate_voc(anns, dets, CLASS_NAMES, False, round_boxes=False)["cat"].ap == 1.0


def test_round_like_format_matches_python_formatting() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.random(2000),
            np.arange(2001) / 2000.0,  # many exact and near halves at 3 decimals
            rng.random(500).astype(np.float32).astype(np.float64),
            np.array([0.0005, 0.0015, 0.1235, 0.9995, 2.675, 1.0005]),
        ]
    )
    expect3 = np.array([float(f"{v:.3f}") for v in values])
    np.testing.assert_array_equal(round_like_format(values, 3), expect3)
    boxes = np.concatenate([rng.random(2000) * 1000, np.arange(4000) / 20.0 + 0.05])
    expect1 = np.array([float(f"{v:.1f}") for v in boxes])
    np.testing.assert_array_equal(round_like_format(boxes, 1), expect1)


def test_detections_for_unknown_images_raise() -> None:
    dets = synthetic_detections()
    dets.add("999999", np.zeros((1, 4)), np.ones(1), np.array([CAT]))
    with pytest.raises(DatasetError, match="999999"):
        evaluate_voc(synthetic_annotations(), dets, CLASS_NAMES, True)


def test_out_of_range_classes_raise() -> None:
    dets = Detections()
    dets.add("000001", np.zeros((1, 4)), np.ones(1), np.array([7]))
    with pytest.raises(DatasetError, match="class 7"):
        evaluate_voc(synthetic_annotations(), dets, CLASS_NAMES, True)


def test_images_without_detections_and_empty_detections() -> None:
    empty = evaluate_voc(synthetic_annotations(), Detections(), CLASS_NAMES, True)
    assert [c.ap for c in empty.per_class[:2]] == [0.0, 0.0]
    assert empty.mean_ap == 0.0


# ------------------------------------------------------------------------------------------------------
# Loop reference: docs/REFERENCE.md §12 written out one detection at a time, on 1-based results-file values.
# ------------------------------------------------------------------------------------------------------


def _reference_ap(rec: list[float], prec: list[float], use_07: bool) -> float:
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            at = [p for r, p in zip(rec, prec, strict=True) if r >= t]
            ap = ap + (max(at) if at else 0.0) / 11.0
        return ap
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return float(
        np.sum([(mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i]])
    )


def _reference_class_ap(anns: list[ImageAnnotation], dets: Detections, cls: int, use_07: bool, rounding: bool) -> float:
    recs = {}
    npos = 0
    for a in anns:
        m = a.classes == cls
        recs[a.image_id] = {
            "bbox": a.boxes[m].astype(np.float64) + 1.0,
            "difficult": list(a.difficult[m]),
            "det": [False] * int(m.sum()),
        }
        npos += int((~a.difficult[m]).sum())
    lines = []
    for a in anns:
        d = dets.get(a.image_id)
        for k in range(len(d)):
            if d.classes[k] != cls:
                continue
            score = float(f"{d.scores[k]:.3f}") if rounding else float(d.scores[k])
            box = [float(f"{v + 1.0:.1f}") if rounding else float(v + 1.0) for v in d.boxes[k]]
            lines.append((a.image_id, score, box))
    lines.sort(key=lambda line: -line[1])  # Python's sort is stable
    tp, fp = [], []
    for image_id, _, bb in lines:
        r = recs[image_id]
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(r["bbox"]):
            iw = max(min(g[2], bb[2]) - max(g[0], bb[0]) + 1.0, 0.0)
            ih = max(min(g[3], bb[3]) - max(g[1], bb[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0)
            ov = inters / (uni - inters)
            if ov > ovmax:
                ovmax, jmax = ov, j
        t = f = 0.0
        if ovmax > 0.5:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    t, r["det"][jmax] = 1.0, True
                else:
                    f = 1.0
        else:
            f = 1.0
        tp.append(t)
        fp.append(f)
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = list(ctp / float(npos))
    prec = list(ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps))
    return _reference_ap(rec, prec, use_07)


def _random_set(seed: int) -> tuple[list[ImageAnnotation], Detections]:
    rng = np.random.default_rng(seed)
    anns, dets = [], Detections()
    for i in range(40):
        g = int(rng.integers(0, 6))
        xy = rng.integers(0, 300, size=(g, 2))
        wh = rng.integers(8, 120, size=(g, 2))
        gt = np.concatenate([xy, xy + wh - 1], axis=1).astype(np.float32)
        classes = rng.integers(1, 4, size=g)
        difficult = rng.random(g) < 0.2
        anns.append(
            make_annotation(
                f"{i:06d}",
                [(list(b), int(c), bool(d)) for b, c, d in zip(gt, classes, difficult, strict=True)],
            )
        )
        # jittered copies of the gt (some twice), plus clutter; coarse scores so 3-decimal ties happen
        src = np.concatenate([gt, gt[: g // 2]]) if g else np.zeros((0, 4), dtype=np.float32)
        cls = np.concatenate([classes, classes[: g // 2]]).astype(np.int64)
        jitter = rng.normal(0, 6, size=src.shape)
        n_clutter = int(rng.integers(0, 4))
        cxy = rng.random((n_clutter, 2)) * 300
        clutter = np.concatenate([cxy, cxy + 10 + rng.random((n_clutter, 2)) * 100], axis=1)
        boxes = np.concatenate([src + jitter, clutter])
        cls = np.concatenate([cls, rng.integers(1, 4, size=n_clutter)])
        scores = np.round(rng.random(len(boxes)) * 20) / 20 + rng.random(len(boxes)) * 4e-4
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        dets.add(anns[-1].image_id, boxes, scores, cls)
    return anns, dets


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("use_07", [True, False])
@pytest.mark.parametrize("rounding", [True, False])
def test_matches_loop_reference(seed: int, use_07: bool, rounding: bool) -> None:
    anns, dets = _random_set(seed)
    result = evaluate_voc(anns, dets, CLASS_NAMES, use_07, round_scores=rounding, round_boxes=rounding)
    for c in (CAT, DOG, 3):
        expected = _reference_class_ap(anns, dets, c, use_07, rounding)
        assert result.per_class[c - 1].ap == pytest.approx(expected, abs=1e-12), c
    assert 0.0 < result.mean_ap < 1.0
