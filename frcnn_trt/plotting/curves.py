"""Training curves: losses (every iteration faint, a moving average solid) and the learning rate, one column per
stage (alt-opt's four stages side by side), plus a row of other metrics (pretraining's accuracy) when any stage
has them.

Glossary: N rows of one stage (one per iteration), S stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_trt.plotting.figure import new_figure, save_png

__all__ = ["StageCurves", "default_window", "draw_training_curves", "smooth"]

#: the moving-average window is about this fraction of a stage's iterations (within [1, MAX_WINDOW])
WINDOW_FRACTION = 0.1
#: Caffe's ``average_loss`` of py-faster-rcnn's solvers
MAX_WINDOW = 100
_TOTAL = "total_loss"


@dataclass(frozen=True)
class StageCurves:
    """One stage's rows: ``iterations [N]``, each loss ``[N]``, ``lr [N]`` and other metrics ``[N]``."""

    name: str
    iterations: np.ndarray
    losses: Mapping[str, np.ndarray]
    lr: np.ndarray
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.iterations.size)


def default_window(n: int) -> int:
    """The moving-average window for ``n`` points: 10 % of them, at least 1, at most 100."""
    return int(min(MAX_WINDOW, max(1, round(n * WINDOW_FRACTION))))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (the first ones average what there is so far)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if window <= 1 or v.size == 0:
        return v.copy()
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def draw_training_curves(stages: Sequence[StageCurves], path: str | Path, title: str | None = None) -> Path:
    """One PNG with a column per stage: losses on top, the learning rate below (log scale when it steps), other
    metrics in a third row when any stage has them. Returns ``path``."""
    if not stages:
        raise ValueError("no stages to draw")
    has_extra = any(s.extra for s in stages)
    rows = 3 if has_extra else 2
    fig = new_figure(max(6.0, 4.6 * len(stages)), 2.6 + 2.2 * rows)
    axes = fig.subplots(rows, len(stages), squeeze=False, sharex="col",
                        gridspec_kw={"height_ratios": [2.0] + [1.0] * (rows - 1)})
    for col, stage in enumerate(stages):
        column = [axes[r][col] for r in range(rows)]
        if len(stage) == 0:
            _empty(column, stage.name)
            continue
        _draw_losses(column[0], stage)
        _draw_lr(column[1], stage)
        if has_extra:
            _draw_extra(column[2], stage)
        column[-1].set_xlabel("iteration")
        if col == 0:
            column[0].set_ylabel("loss")
            column[1].set_ylabel("learning rate")
    fig.suptitle(title or "training curves", fontsize=13)
    return save_png(fig, path)


def _empty(column: list[Any], name: str) -> None:
    column[0].set_title(name)
    for ax in column:
        ax.text(0.5, 0.5, "no iterations yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])


def _draw_losses(ax: Any, stage: StageCurves) -> None:
    it = stage.iterations
    window = default_window(len(stage))
    marker = "o" if len(stage) < 3 else None
    names = sorted(stage.losses, key=lambda k: (k == _TOTAL, k))  # the total last, on top
    for k, name in enumerate(names):
        values = stage.losses[name]
        colour = "black" if name == _TOTAL else f"C{k}"
        ax.plot(it, values, color=colour, alpha=0.22, linewidth=0.8)
        ax.plot(it, smooth(values, window), color=colour, linewidth=2.0 if name == _TOTAL else 1.5, label=name,
                marker=marker)
    note = f"moving average over {window} iterations" if window > 1 else "every iteration"
    ax.set_title(f"{stage.name}\n{note} (faint: raw)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.85)


def _draw_lr(ax: Any, stage: StageCurves) -> None:
    lr = np.asarray(stage.lr, dtype=np.float64)
    ax.plot(stage.iterations, lr, color="C3", linewidth=1.5, drawstyle="steps-post",
            marker="o" if len(stage) < 3 else None)
    positive = lr[lr > 0]
    if positive.size and positive.max() > 1.5 * positive.min():
        from matplotlib.ticker import NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())  # labels on the decades only
    ax.grid(alpha=0.3, which="both")


def _draw_extra(ax: Any, stage: StageCurves) -> None:
    if not stage.extra:
        ax.text(0.5, 0.5, "—", ha="center", va="center", transform=ax.transAxes, color="0.4")
        return
    window = default_window(len(stage))
    for k, (name, values) in enumerate(sorted(stage.extra.items())):
        ax.plot(stage.iterations, values, color=f"C{k + 4}", alpha=0.22, linewidth=0.8)
        ax.plot(stage.iterations, smooth(values, window), color=f"C{k + 4}", linewidth=1.5, label=name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.85)
