"""Precision–recall curves, one line per class in one figure, each class's AP in the legend.

Each line is the precision envelope (the highest precision at this recall or beyond), drawn as steps: the curve
whose area VOC's AP is, so the picture and the number agree. Lines take the class colours of the drawn
detections (:data:`~frcnn_trt.plotting.detections.PALETTE`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from frcnn_trt.plotting.detections import class_colour
from frcnn_trt.plotting.figure import new_figure, save_png

__all__ = ["PRCurve", "draw_pr_curves", "precision_envelope"]


@dataclass(frozen=True)
class PRCurve:
    """One class: its id (the colour), name, AP (NaN: no ground truth) and the curve, in sorted-detection order."""

    class_id: int
    name: str
    ap: float
    recall: np.ndarray
    precision: np.ndarray


def precision_envelope(precision: np.ndarray) -> np.ndarray:
    """``max(precision[i:])`` for every ``i`` (the monotone envelope VOC's area AP integrates)."""
    p = np.asarray(precision, dtype=np.float64).reshape(-1)
    return np.maximum.accumulate(p[::-1])[::-1] if p.size else p


def draw_pr_curves(curves: Sequence[PRCurve], path: str | Path, title: str = "precision–recall") -> Path:
    """Every class with ground truth as a step line of its precision envelope; legend ``name  AP xx.x``, best AP
    first. Returns ``path``."""
    fig = new_figure(9.0, 6.0)
    ax = fig.subplots()
    shown = sorted((c for c in curves if not math.isnan(c.ap)), key=lambda c: (-c.ap, c.class_id))
    for c in shown:
        rec = np.asarray(c.recall, dtype=np.float64).reshape(-1)
        env = precision_envelope(c.precision)
        colour = tuple(v / 255.0 for v in class_colour(c.class_id))
        label = f"{c.name}  AP {100.0 * c.ap:.1f}"
        if rec.size == 0:  # no detection of this class: AP 0, nothing to draw but the legend entry
            ax.plot([], [], color=colour, linewidth=2.0, label=label)
            continue
        ax.plot(np.concatenate([[0.0], rec]), np.concatenate([env[:1], env]), drawstyle="steps-pre", color=colour,
                linewidth=2.0, label=label)
    missing = [c.name for c in curves if math.isnan(c.ap)]
    if missing:
        ax.plot([], [], " ", label=f"no ground truth: {', '.join(missing[:4])}" + (" …" if len(missing) > 4 else ""))
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=12)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    return save_png(fig, path)
