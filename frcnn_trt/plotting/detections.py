"""Detections drawn on an image: a box in its class colour and a filled ``name score`` label that stays inside
the image.

Glossary: D detections, boxes ``[D, 4]`` x1, y1, x2, y2 in pixels (0-based inclusive), H × W the image.

Only detections scoring at least ``show_conf`` are drawn (the ones a person wants to look at; the file of saved
detections keeps its own, lower threshold). Each class keeps one colour (a fixed palette indexed by class id), so
the same class looks the same in every image and in the precision–recall figure. Line width and font size grow
with the image (the square root of its area), so a label is as readable on a 300-pixel thumbnail as on a
2000-pixel photo. The label sits above the box where there is room, inside its top edge otherwise, and is moved
left / down so it never leaves the image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "Drawing", "class_colour", "draw_detections", "drawing_scale"]

#: 20 distinct colours (RGB; Sasha Trubetskoy's list, the strongest first, so a few classes get very different ones
#: that also read on the white of a plot); class ``k`` ≥ 1 takes ``PALETTE[(k - 1) % 20]``, proposals (0) the last
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (210, 245, 60), (0, 128, 128), (128, 0, 0), (0, 0, 128), (128, 128, 0), (170, 110, 40), (250, 190, 212),
    (255, 225, 25), (220, 190, 255), (170, 255, 195), (255, 215, 180), (255, 250, 200), (128, 128, 128),
)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The colour of class ``class_id`` (stable: it depends on the id alone)."""
    return PALETTE[(int(class_id) - 1) % len(PALETTE)]


@dataclass(frozen=True)
class Drawing:
    """The drawn image (PIL, RGB) and how many detections are on it."""

    image: Image.Image
    drawn: int


def drawing_scale(width: int, height: int) -> tuple[int, int]:
    """``(line width, font size)`` in pixels for an image of ``width × height``: 2 and 11 at 320 × 240, 4 and 24
    at 1000 × 600."""
    side = math.sqrt(max(width, 1) * max(height, 1))
    return max(1, round(side / 180)), max(11, round(side / 32))


@lru_cache(maxsize=16)
def _font(size: int) -> Any:
    """PIL's built-in TrueType font at ``size`` pixels (its fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or Pillow built without FreeType
        return ImageFont.load_default()


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light fills, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def draw_detections(image_rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray | None = None,
                    class_names: Sequence[str] | Mapping[int, str] | None = None, *,
                    show_conf: float = 0.5) -> Drawing:
    """Draw the detections scoring ``>= show_conf`` on a copy of ``image_rgb`` (uint8 ``[H, W, 3]`` RGB).

    ``labels`` are class ids indexing ``class_names`` (a list with ``__background__`` first, or a mapping id →
    name; an id it lacks is shown as the number) (None: class-less boxes such as proposals, drawn in the
    first colour with the score alone). Low scores are drawn first, so the best boxes and labels end on top.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.zeros(len(b), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(b) == len(s) == len(lab):
        raise ValueError(f"{len(b)} boxes, {len(s)} scores and {len(lab)} labels differ in number")
    img = Image.fromarray(np.ascontiguousarray(image_rgb, dtype=np.uint8))
    width, height = img.size
    line, size = drawing_scale(width, height)
    font = _font(size)
    draw = ImageDraw.Draw(img)
    keep = np.flatnonzero(s >= show_conf)
    keep = keep[np.argsort(s[keep], kind="stable")]
    b = np.clip(b, 0.0, [width - 1, height - 1, width - 1, height - 1])
    for i in keep.tolist():
        colour = class_colour(int(lab[i]))
        x1, y1, x2, y2 = (float(v) for v in b[i])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        name = _name(int(lab[i]), class_names) if labels is not None else ""
        _label(draw, f"{name} {s[i]:.2f}".strip(), (x1, y1), colour, font, line, (width, height))
    return Drawing(img, int(keep.size))


def _name(label: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _label(draw: Any, text: str, corner: tuple[float, float], fill: tuple[int, int, int], font: Any, line: int,
           image_size: tuple[int, int]) -> None:
    """A filled label with ``text``, its bottom-left at the box's top-left corner where it fits, kept inside."""
    width, height = image_size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, line)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x0 = min(max(corner[0], 0.0), max(width - w, 0))
    y0 = corner[1] - h if corner[1] - h >= 0 else corner[1]  # above the box, else inside its top edge
    y0 = min(max(y0, 0.0), max(height - h, 0))
    draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=fill)
    draw.text((x0 + pad - left, y0 + pad - top), text, fill=_text_colour(fill), font=font)
