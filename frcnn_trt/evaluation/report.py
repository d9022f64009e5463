"""Showing an :class:`~frcnn_trt.evaluation.result.EvalResult`: a rich table, or py-faster-rcnn's lines."""

from __future__ import annotations

import math

from rich.table import Table

from frcnn_trt.evaluation.result import EvalResult

__all__ = ["format_ap_lines", "format_ap_table"]

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
