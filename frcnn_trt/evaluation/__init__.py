"""Detection evaluation: py-faster-rcnn's VOC AP, COCO AP, and the detection file formats.

``faster_coco_eval`` is imported only when :func:`evaluate_coco` runs.
"""

from __future__ import annotations

from frcnn_trt.evaluation.coco import coco_ground_truth, evaluate_coco
from frcnn_trt.evaluation.coco_results import read_coco_results, write_coco_results
from frcnn_trt.evaluation.detections import DetectionArrays, Detections
from frcnn_trt.evaluation.load import load_detections
from frcnn_trt.evaluation.predictions import PredictionsWriter, prediction_record, read_predictions
from frcnn_trt.evaluation.report import format_ap_lines, format_ap_table
from frcnn_trt.evaluation.result import ClassResult, EvalResult
from frcnn_trt.evaluation.voc import evaluate_voc, round_like_format, voc_ap, voc_iou
from frcnn_trt.evaluation.voc_results import read_voc_results, voc_results_filename, write_voc_results

__all__ = [
    "ClassResult",
    "DetectionArrays",
    "Detections",
    "EvalResult",
    "PredictionsWriter",
    "coco_ground_truth",
    "evaluate_coco",
    "evaluate_voc",
    "format_ap_lines",
    "format_ap_table",
    "load_detections",
    "prediction_record",
    "read_coco_results",
    "read_predictions",
    "read_voc_results",
    "round_like_format",
    "voc_ap",
    "voc_iou",
    "voc_results_filename",
    "write_coco_results",
    "write_voc_results",
]
