"""Drawing detections: the drawing threshold, one colour per class, labels kept inside the image, sizes scaled."""

from __future__ import annotations

import numpy as np
import pytest

from frcnn_trt.plotting import PALETTE, class_colour, draw_detections
from frcnn_trt.plotting.detections import drawing_scale

NAMES = ["__background__", "circle", "square", "triangle"]


def _grey(h: int = 200, w: int = 300) -> np.ndarray:
    return np.full((h, w, 3), 90, dtype=np.uint8)


def _has_colour(image: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((image.reshape(-1, 3) == np.array(colour)).all(axis=1).any())


def test_only_detections_at_or_above_the_threshold_are_drawn() -> None:
    boxes = np.array([[10, 10, 60, 60], [100, 20, 150, 90], [200, 100, 280, 180]], dtype=np.float32)
    scores = np.array([0.9, 0.5, 0.49])
    labels = np.array([1, 2, 3])
    d = draw_detections(_grey(), boxes, scores, labels, NAMES, show_conf=0.5)
    img = np.asarray(d.image)
    assert d.drawn == 2  # 0.5 is drawn (at or above), 0.49 is not
    assert _has_colour(img, class_colour(1)) and _has_colour(img, class_colour(2))
    assert not _has_colour(img, class_colour(3))
    assert (img[150:170, 220:260] == 90).all()  # the undrawn box's area is untouched
    assert draw_detections(_grey(), boxes, scores, labels, NAMES, show_conf=0.95).drawn == 0
    assert draw_detections(_grey(), boxes, scores, labels, NAMES, show_conf=0.0).drawn == 3


def test_colours_are_stable_per_class_and_distinct() -> None:
    assert class_colour(1) == PALETTE[0] and class_colour(21) == PALETTE[0] and class_colour(2) == PALETTE[1]
    assert len(set(PALETTE)) == len(PALETTE) == 20
    one = np.asarray(draw_detections(_grey(), np.array([[10, 10, 60, 60]]), np.array([0.9]), np.array([2]),
                                     NAMES).image)
    assert _has_colour(one, class_colour(2)) and not _has_colour(one, class_colour(1))


@pytest.mark.parametrize("box", [[0, 0, 40, 30], [250, 0, 299, 40], [270, 170, 299, 199], [0, 185, 20, 199]])
def test_label_stays_inside_the_image_at_every_border(box: list[float]) -> None:
    colour = class_colour(3)
    img = np.asarray(draw_detections(_grey(), np.array([box], dtype=np.float32), np.array([0.87]), np.array([3]),
                                     NAMES, show_conf=0.5).image)
    # the filled label: a solid block of the class colour, wider than the box line; all of it inside the image
    ys, xs = np.nonzero((img == np.array(colour)).all(axis=2))
    assert xs.size > 0
    filled_rows = [y for y in set(ys.tolist()) if (img[y] == np.array(colour)).all(axis=1).sum() >= 30]
    assert filled_rows, "no filled label drawn"
    assert (img.shape[0], img.shape[1]) == (200, 300)
    row = max(filled_rows, key=lambda y: (img[y] == np.array(colour)).all(axis=1).sum())
    cols = np.flatnonzero((img[row] == np.array(colour)).all(axis=1))
    width = drawing_scale(300, 200)[1] * 3  # "triangle 0.87" is wider than 3 font sizes
    assert cols.max() - cols.min() + 1 >= width  # the whole label fits, it was moved in rather than cut


def test_sizes_grow_with_the_image() -> None:
    small, large = drawing_scale(320, 240), drawing_scale(2000, 1500)
    assert small[0] >= 1 and small[1] >= 11
    assert large[0] > small[0] and large[1] > 3 * small[1]


def test_proposals_without_labels_and_bad_input() -> None:
    d = draw_detections(_grey(), np.array([[5, 5, 50, 50]]), np.array([0.7]), None, None, show_conf=0.5)
    assert d.drawn == 1
    with pytest.raises(ValueError, match="differ in number"):
        draw_detections(_grey(), np.zeros((2, 4)), np.zeros(3), np.zeros(2, dtype=int))
