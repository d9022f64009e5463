"""The precision report of FP32 and FP16 exports: kernels ONNX Runtime really runs, upcasts said as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frcnn_trt.export.parity import synthetic_images
from frcnn_trt.export.precision_report import REPORT_FILE, add_validation, precision_report, print_report
from frcnn_trt.log import console
from frcnn_trt.model.checkpoint import load_checkpoint
from tests.helpers import tiny_export

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("fp16", [False, True])
def test_report_contents(tmp_path_factory: pytest.TempPathFactory, fp16: bool) -> None:
    ckpt, export = tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny", fp16=fp16)
    model, _ = load_checkpoint(ckpt)
    rep = precision_report(export, model, synthetic_images(1, sizes=((120, 160),)), tensorrt=False)
    stored = "fp16" if fp16 else "fp32"
    assert rep["stored_precision"] == stored and rep["tensorrt"] == {"skipped": "not asked (tensorrt=False)"}
    layers = [v for g in rep["onnxruntime_cpu_layers"].values() for v in g.values()]
    assert layers and all(v["kernel"] != "?" for v in layers)
    want = "fp32 (upcast from fp16)" if fp16 else "fp32"
    assert {v["precision"] for v in layers} == {want}
    ort = rep["computed"]["onnxruntime"]
    assert ort["precision"] == "fp32" and (("upcast" in ort["note"]) == fp16)
    assert rep["detections"]["iou_thresh"] == 0.5
    assert rep["outputs_max_abs_delta"]["rpn_cls_prob"] < (0.05 if fp16 else 1e-4)
    rows = [{"imdb": "x", "precision": stored, "backend": "onnxruntime", "map": 0.7, "ms_per_image": 12.0}]
    back = add_validation(export, rows)
    assert json.loads((Path(export) / REPORT_FILE).read_text())["validation"] == rows == back["validation"]
    con = console()
    with con.capture() as cap:
        print_report(con, back)
    text = cap.get()
    assert "precision report" in text and "mAP 70.00" in text and ("upcast" in text) == fp16
