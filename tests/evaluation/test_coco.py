"""COCO AP through faster_coco_eval: perfect detections, hand-worked partial cases, +1 geometry, difficult."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation import Detections, coco_ground_truth, evaluate_coco

from .synthetic import CAT, CLASS_NAMES, DOG, make_annotation, synthetic_annotations


def perfect_detections(difficult_too: bool = False) -> Detections:
    dets = Detections()
    for a in synthetic_annotations():
        keep = np.ones(a.num_objects, dtype=bool) if difficult_too else ~a.difficult
        dets.add(a.image_id, a.boxes[keep], np.linspace(0.9, 0.5, int(keep.sum())), a.classes[keep])
    return dets


def test_ground_truth_uses_plus_one_geometry_and_crowd_for_difficult() -> None:
    gt = coco_ground_truth(synthetic_annotations(), CLASS_NAMES)
    assert gt["images"][0] == {"id": 1, "file_name": "/nonexistent/000001.jpg", "width": 100, "height": 100}
    first, second = gt["annotations"][:2]
    box = {"bbox": [10.0, 10.0, 40.0, 40.0], "area": 1600.0}  # [10, 10, 49, 49] inclusive is 40x40 px
    assert first == {"id": 1, "image_id": 1, "category_id": CAT, **box, "iscrowd": 0}
    assert second["category_id"] == DOG and second["iscrowd"] == 1  # the difficult dog
    assert [c["name"] for c in gt["categories"]] == ["cat", "dog", "bird"]
    assert len(coco_ground_truth(synthetic_annotations(), CLASS_NAMES, difficult="drop")["annotations"]) == 5
    keep = coco_ground_truth(synthetic_annotations(), CLASS_NAMES, difficult="keep")["annotations"]
    assert len(keep) == 7 and not any(a["iscrowd"] for a in keep)


def test_perfect_detections_give_ap_one() -> None:
    res = evaluate_coco(synthetic_annotations(), perfect_detections(), CLASS_NAMES)
    assert res.metric == "coco"
    assert res.mean_ap == pytest.approx(1.0)
    for key in ("AP", "AP50", "AP75", "APs", "APm"):  # 20x20 px gt are small (area 400), 40x40 medium
        assert res.summary[key] == pytest.approx(1.0), key
    assert res["cat"].ap == pytest.approx(1.0) and res["dog"].extra["AP75"] == pytest.approx(1.0)
    assert math.isnan(res["bird"].ap)  # no gt
    assert math.isnan(res.summary["APl"])  # no large object
    assert (res["cat"].npos, res["dog"].npos, res["cat"].num_detections) == (3, 2, 3)


def test_half_recall_hand_worked() -> None:
    # One of two gt found, perfectly: precision 1 at recall thresholds 0.00 .. 0.50 (51 of 101), 0 above.
    anns = [make_annotation("a", [([0, 0, 19, 19], CAT, False), ([40, 40, 59, 59], CAT, False)])]
    dets = Detections()
    dets.add("a", np.array([[0, 0, 19, 19]]), np.array([0.9]), np.array([CAT]))
    res = evaluate_coco(anns, dets, CLASS_NAMES)
    assert res.mean_ap == pytest.approx(51 / 101)
    assert res.summary["AP50"] == pytest.approx(51 / 101)
    assert res["cat"].ap == pytest.approx(51 / 101)


def test_iou_uses_plus_one_geometry() -> None:
    # gt [0, 0, 4, 4] is 5x5 px; det [0, 0, 4, 3.1] is 5x4.1: +1 IoU 20.5/25 = 0.82 (without +1: 0.775).
    # It matches at the 7 thresholds 0.50 .. 0.80 -> AP 0.7 (0.6 if COCO saw the boxes without +1).
    anns = [make_annotation("a", [([0, 0, 4, 4], CAT, False)])]
    dets = Detections()
    dets.add("a", np.array([[0, 0, 4, 3.1]]), np.array([0.9]), np.array([CAT]))
    res = evaluate_coco(anns, dets, CLASS_NAMES)
    assert res["cat"].ap == pytest.approx(0.7)
    assert res.summary["APs"] == pytest.approx(0.7)


@pytest.mark.parametrize(("mode", "cat_ap50"), [("crowd", 1.0), ("keep", 1.0), ("drop", None)])
def test_difficult_modes(mode: str, cat_ap50: float | None) -> None:
    # The difficult cat D of image 2 is detected with the highest score.
    dets = perfect_detections()
    dets.add("000002", np.array([[50, 50, 69, 69]]), np.array([0.99]), np.array([CAT]))
    res = evaluate_coco(synthetic_annotations(), dets, CLASS_NAMES, difficult=mode)  # type: ignore[arg-type]
    if mode == "crowd":  # ignored, and not a positive
        assert res["cat"].npos == 3 and res["cat"].ap == pytest.approx(1.0)
    elif mode == "keep":  # an ordinary object, found
        assert res["cat"].npos == 4 and res["cat"].extra["AP50"] == pytest.approx(1.0)
    else:  # dropped: the top-scoring detection is an FP, precision 1/2 at the first TP, then 2/3, 3/4
        assert res["cat"].npos == 3
        assert res["cat"].extra["AP50"] == pytest.approx(0.75, abs=1e-12)
        assert res["cat"].ap < 1.0


def test_no_detections_and_unknown_images() -> None:
    res = evaluate_coco(synthetic_annotations(), Detections(), CLASS_NAMES)
    assert res.mean_ap == 0.0
    dets = Detections()
    dets.add("nope", np.zeros((1, 4)), np.ones(1), np.array([CAT]))
    with pytest.raises(DatasetError, match="nope"):
        evaluate_coco(synthetic_annotations(), dets, CLASS_NAMES)
