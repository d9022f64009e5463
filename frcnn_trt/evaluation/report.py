"""Showing an :class:`~frcnn_trt.evaluation.result.EvalResult`: a rich table, py-faster-rcnn's lines, and the
files written next to the detections (the AP table as JSON, the precision–recall curves as PNG + JSON).

``pr_curves.json`` keeps, per class, the points of the PR curve where a true positive raises the recall, plus
the last point: the VOC AP (area or 11-point) of those points is the AP of the full curve, bit for bit (the
precision envelope only takes its values at those points), so the file is small and its numbers agree with the
table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from frcnn_trt.evaluation.result import ClassResult, EvalResult
from frcnn_trt.io import atomic_write_json
from frcnn_trt.plotting import PRCurve, draw_pr_curves

__all__ = ["EVAL_JSON", "PR_JSON", "PR_PNG", "detections_folder", "format_ap_lines", "format_ap_table", "pr_points",
           "write_eval_files"]

EVAL_JSON = "eval.json"
PR_PNG = "pr_curves.png"
PR_JSON = "pr_curves.json"

_METRIC_TITLES = {
    "voc07": "VOC07 AP (11-point)",
    "voc": "VOC AP (area)",
    "coco": "COCO AP@[.50:.95]",
}


def _pct(v: float) -> str:
    return "—" if math.isnan(v) else f"{100.0 * v:.2f}"


def format_ap_table(result: EvalResult, title: str | None = None) -> Table:
    """Per-class AP (in %), gt count and detection count, with the mean as the last row."""
    coco = result.metric == "coco"
    metric = _METRIC_TITLES.get(result.metric, result.metric)
    table = Table(title=title or f"{metric} — {result.num_images} images")
    table.add_column("class")
    table.add_column("AP", justify="right")
    if coco:
        table.add_column("AP50", justify="right")
        table.add_column("AP75", justify="right")
    table.add_column("gt", justify="right")
    table.add_column("dets", justify="right")
    for c in result.per_class:
        cells = [c.name, _pct(c.ap)]
        if coco:
            cells += [_pct(c.extra.get("AP50", math.nan)), _pct(c.extra.get("AP75", math.nan))]
        cells += [str(c.npos), str(c.num_detections)]
        table.add_row(*cells)
    table.add_section()
    mean = ["mAP", _pct(result.mean_ap)]
    if coco:
        mean += [_pct(result.summary.get("AP50", math.nan)), _pct(result.summary.get("AP75", math.nan))]
    mean += [str(sum(c.npos for c in result.per_class)), str(sum(c.num_detections for c in result.per_class))]
    table.add_row(*mean, style="bold")
    return table


def format_ap_lines(result: EvalResult) -> list[str]:
    """py-faster-rcnn's plain lines (``AP for cat = 0.7000`` ... ``Mean AP = 0.6990``), for logs and CI."""
    lines = [f"AP for {c.name} = {c.ap:.4f}" for c in result.per_class]
    lines.append(f"Mean AP = {result.mean_ap:.4f}")
    if result.metric == "coco":
        lines += [f"{k} = {v:.4f}" for k, v in result.summary.items() if k != "AP"]
    return lines


def pr_points(c: ClassResult) -> tuple[np.ndarray, np.ndarray]:
    """``(recall, precision)`` of ``c`` at the detections that raise the recall, and at the last one (module
    docstring: the same AP as the whole curve); empty without a curve (COCO) or without ground truth."""
    if c.recall is None or c.precision is None or c.recall.size == 0 or math.isnan(c.ap):
        return np.zeros(0), np.zeros(0)
    rec = np.asarray(c.recall, dtype=np.float64)
    prec = np.asarray(c.precision, dtype=np.float64)
    keep = np.flatnonzero(np.diff(np.concatenate([[0.0], rec])) > 0)
    keep = np.union1d(keep, [rec.size - 1])
    return rec[keep], prec[keep]


def _pr_json(result: EvalResult) -> dict[str, Any]:
    classes = []
    for c in result.per_class:
        rec, prec = pr_points(c)
        classes.append({"class_id": c.class_id, "name": c.name, "ap": None if math.isnan(c.ap) else c.ap,
                        "npos": c.npos, "recall": rec.tolist(), "precision": prec.tolist()})
    return {"metric": result.metric, "mAP": None if math.isnan(result.mean_ap) else result.mean_ap,
            "settings": dict(result.settings), "classes": classes}


def detections_folder(dets: str | Path) -> Path:
    """The folder of a detections source: the folder itself, a file's folder, or a glob's deepest folder without
    a wildcard."""
    path = Path(dets)
    if path.is_dir():
        return path
    parent = path.parent
    while any(ch in str(parent) for ch in "*?[") and parent != parent.parent:
        parent = parent.parent
    return parent


def write_eval_files(result: EvalResult, folder: str | Path, json_path: str | Path | None = None,
                     title: str | None = None) -> list[Path]:
    """The AP table as JSON (``json_path``, default ``folder/eval.json``) and, where the metric has PR curves
    (VOC), ``folder/pr_curves.png`` and ``folder/pr_curves.json``. Returns the paths written."""
    out = Path(folder)
    table = Path(json_path) if json_path is not None else out / EVAL_JSON
    atomic_write_json(table, result.to_json())
    written = [table]
    if not any(c.recall is not None for c in result.per_class):
        return written  # COCO: per-class AP without a curve
    atomic_write_json(out / PR_JSON, _pr_json(result))
    metric = _METRIC_TITLES.get(result.metric, result.metric)
    heading = f"{title + ' · ' if title else ''}{metric}, mAP {_pct(result.mean_ap)} — {result.num_images} images"
    curves = [PRCurve(c.class_id, c.name, c.ap, *pr_points(c)) for c in result.per_class]
    written += [draw_pr_curves(curves, out / PR_PNG, heading), out / PR_JSON]
    return written
