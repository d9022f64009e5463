"""EvalResult.to_json and the rich / plain-text AP reports."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from frcnn_trt.evaluation import evaluate_coco, evaluate_voc, format_ap_lines, format_ap_table

from .synthetic import CLASS_NAMES, synthetic_annotations, synthetic_detections


def render(table: object) -> str:
    out = io.StringIO()
    Console(width=120, file=out).print(table)
    return out.getvalue()


def test_voc_to_json_and_table() -> None:
    res = evaluate_voc(synthetic_annotations(), synthetic_detections(), CLASS_NAMES, use_07_metric=True)
    js = json.loads(json.dumps(res.to_json(), allow_nan=False))  # NaN written as null
    assert js["metric"] == "voc07"
    assert js["mAP"] == pytest.approx((5.2 / 11 + 1) / 2)
    assert js["num_classes_evaluated"] == 2 and js["num_images"] == 5
    assert js["settings"]["use_07_metric"] is True and js["settings"]["round_scores"] is True
    bird = js["per_class"][2]
    assert bird == {"class_id": 3, "name": "bird", "ap": None, "npos": 0, "num_detections": 1, "recall": None}
    assert js["per_class"][0]["ap"] == pytest.approx(5.2 / 11)
    text = render(format_ap_table(res))
    assert "VOC07 AP (11-point)" in text
    assert "47.27" in text and "100.00" in text and "73.64" in text and "—" in text
    lines = format_ap_lines(res)
    assert lines[0] == "AP for cat = 0.4727" and lines[-1] == "Mean AP = 0.7364"


def test_coco_table_has_ap50_columns() -> None:
    res = evaluate_coco(synthetic_annotations(), synthetic_detections(), CLASS_NAMES)
    js = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert set(js["summary"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert "AP50" in js["per_class"][0]
    text = render(format_ap_table(res, title="coco"))
    assert "AP50" in text and "AP75" in text
    assert any(line.startswith("AP50 = ") for line in format_ap_lines(res))
