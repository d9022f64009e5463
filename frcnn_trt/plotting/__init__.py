"""Pictures: training curves, precision–recall curves and detections drawn on images.

Plain arrays in, PNG files (or PIL images) out: nothing here knows a model, a dataset or a file format of the
project, so the rooms above hand it numbers. Figures are drawn by matplotlib's Agg canvas directly (headless,
no ``pyplot`` and its global backend state); matplotlib is imported when a figure is drawn, not on import.
"""

from __future__ import annotations

from frcnn_trt.plotting.curves import StageCurves, draw_training_curves, smooth
from frcnn_trt.plotting.detections import PALETTE, Drawing, class_colour, draw_detections
from frcnn_trt.plotting.pr import PRCurve, draw_pr_curves

__all__ = [
    "PALETTE",
    "Drawing",
    "PRCurve",
    "StageCurves",
    "class_colour",
    "draw_detections",
    "draw_pr_curves",
    "draw_training_curves",
    "smooth",
]
