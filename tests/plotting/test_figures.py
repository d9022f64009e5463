"""Training curves and PR figures: valid PNGs of a plausible size; the smoothing maths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from frcnn_trt.plotting import PRCurve, StageCurves, draw_pr_curves, draw_training_curves, smooth
from frcnn_trt.plotting.curves import default_window
from frcnn_trt.plotting.pr import precision_envelope


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _stage(name: str, n: int, extra: bool = False) -> StageCurves:
    it = np.arange(1, n + 1)
    loss = 1.0 / np.sqrt(it) + 0.05 * np.sin(it)
    return StageCurves(name, it, {"loss_cls": loss, "total_loss": loss * 1.5},
                       np.where(it < 0.75 * n, 1e-3, 1e-4), {"accuracy": 1 - loss / 2} if extra else {})


def test_smooth_is_a_trailing_moving_average() -> None:
    v = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(smooth(v, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(smooth(v, 1), v)
    np.testing.assert_allclose(smooth(v, 10), [1.0, 2.0, 3.0, 4.0])
    assert default_window(5) == 1 and default_window(400) == 40 and default_window(10**6) == 100


def test_training_curves_one_column_per_stage(tmp_path: Path) -> None:
    w1, h1 = _png(draw_training_curves([_stage("end2end", 300)], tmp_path / "one.png"))
    w4, h4 = _png(draw_training_curves([_stage(f"s{i}", 50 * (i + 1)) for i in range(4)], tmp_path / "four.png"))
    assert 500 <= w1 <= 1000 and 400 <= h1 <= 1000
    assert w4 > 2.5 * w1 and h4 == h1  # side by side
    _, h = _png(draw_training_curves([_stage("pretrain", 2, extra=True), _stage("empty", 0)], tmp_path / "x.png"))
    assert h > h1  # a third row for the accuracy


def test_pr_figure_and_envelope(tmp_path: Path) -> None:
    np.testing.assert_array_equal(precision_envelope(np.array([1.0, 0.5, 0.66, 0.4])), [1.0, 0.66, 0.66, 0.4])
    curves = [PRCurve(1, "circle", 0.8, np.array([0.1, 0.5, 0.9]), np.array([1.0, 0.8, 0.5])),
              PRCurve(2, "square", 0.0, np.zeros(0), np.zeros(0)),
              PRCurve(3, "ghost", math.nan, np.zeros(0), np.zeros(0))]
    w, h = _png(draw_pr_curves(curves, tmp_path / "pr.png", "test"))
    assert (w, h) == (900, 600)
