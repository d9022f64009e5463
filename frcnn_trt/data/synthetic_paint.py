"""Painting primitives of the synthetic dataset (:mod:`frcnn_trt.data.synthetic`): shape outlines, their
anti-aliased coverage, object textures, photograph-like backgrounds and clutter.

Every random choice draws from the ``numpy.random.Generator`` passed in, in a fixed order, so a scene is
repeated exactly from its generator's seed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from frcnn_trt.errors import ConfigError

__all__ = [
    "SHAPES",
    "background",
    "coverage",
    "draw_clutter",
    "place_shape",
    "random_colour",
    "shape_polygons",
    "texture",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "arrow")
SUPERSAMPLE = 4

_F = np.float32


# -- shapes ------------------------------------------------------------------------------------------------
def _ngon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _uniform_deg(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.radians(rng.uniform(lo, hi))


def shape_polygons(name: str, rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, int]], float, float]:
    """Unit polygons ``[(P x 2 vertices, fill 255 | 0 for a hole)]``, y-aspect and rotation (radians)."""
    if name == "circle":
        return [(_ngon(48), 255)], rng.uniform(0.7, 1.4), rng.uniform(0, np.pi)
    if name == "square":
        sq = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
        return [(sq, 255)], rng.uniform(0.6, 1.6), _uniform_deg(rng, -15, 15)
    if name == "triangle":
        tri = _ngon(3, phase=-np.pi / 2) + rng.normal(0, 0.06, (3, 2))
        return [(tri, 255)], rng.uniform(0.8, 1.25), rng.uniform(0, 2 * np.pi)
    if name == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        star = _ngon(10, phase=-np.pi / 2) * radii[:, None]
        return [(star, 255)], rng.uniform(0.85, 1.18), rng.uniform(0, 2 * np.pi)
    if name == "cross":
        w = rng.uniform(0.28, 0.4)
        cross = np.array(
            [
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
            ],
            float,
        )
        return [(cross, 255)], rng.uniform(0.8, 1.25), _uniform_deg(rng, -15, 15)
    if name == "ring":
        return (
            [(_ngon(48), 255), (_ngon(48, rng.uniform(0.5, 0.65)), 0)],
            rng.uniform(0.75, 1.33),
            rng.uniform(0, np.pi),
        )
    if name == "diamond":
        dia = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float)
        return [(dia, 255)], rng.uniform(0.6, 1.6), _uniform_deg(rng, -12, 12)
    if name == "arrow":
        t = rng.uniform(0.18, 0.28)
        arrow = np.array([[-1, -t], [0.15, -t], [0.15, -0.6], [1, 0], [0.15, 0.6], [0.15, t], [-1, t]], float)
        return [(arrow, 255)], rng.uniform(0.8, 1.2), rng.uniform(0, 2 * np.pi)
    raise ConfigError(f"unknown synthetic shape {name!r}; available: {', '.join(SHAPES)}")


def place_shape(name: str, size: float, rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, int]], np.ndarray]:
    """Shape polygons scaled so that the longer side of their extent is ``size``, centred at the origin."""
    polys, aspect, rot = shape_polygons(name, rng)
    c, s = math.cos(rot), math.sin(rot)
    rotm = np.array([[c, -s], [s, c]])
    polys = [((p * [1.0, aspect]) @ rotm.T, fill) for p, fill in polys]
    outer = polys[0][0]
    lo, hi = outer.min(0), outer.max(0)
    scale = size / float((hi - lo).max())
    centre = (lo + hi) / 2
    polys = [((p - centre) * scale, fill) for p, fill in polys]
    return polys, np.array([lo - centre, hi - centre]) * scale  # [[x0, y0], [x1, y1]] extent offsets


def coverage(polys: list[tuple[np.ndarray, int]], x0: int, y0: int, pw: int, ph: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the polygons on the pixel patch at (x0, y0), size pw x ph."""
    ss = SUPERSAMPLE
    canvas = Image.new("L", (pw * ss, ph * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for p, fill in polys:
        # pixel i covers [i - 0.5, i + 0.5) (centres on integers); PIL draws sub-pixel u centred on
        # (u + 0.5) / ss - 0.5, hence u = (x + 0.5) * ss - 0.5
        pts = (p - [x0, y0] + 0.5) * ss - 0.5
        draw.polygon([tuple(v) for v in pts.tolist()], fill=fill)
    return np.asarray(canvas.resize((pw, ph), Image.Resampling.BOX), dtype=_F) / 255.0


# -- textures ----------------------------------------------------------------------------------------------
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(h, dtype=_F)[:, None], np.arange(w, dtype=_F)[None, :]


def _ramp(h: int, w: int, angle: float) -> np.ndarray:
    """Linear ramp in [0, 1] across an h x w patch along ``angle``."""
    yy, xx = _grid(h, w)
    proj = xx * _F(math.cos(angle)) + yy * _F(math.sin(angle))
    lo, hi = float(proj.min()), float(proj.max())
    return (proj - lo) / _F(max(hi - lo, 1.0))


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(_F)


def texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random object texture ``[h, w, 3]`` float: solid, gradient, stripes or noise, with soft shading."""
    c1, c2 = random_colour(rng), random_colour(rng)
    kind = rng.choice(4, p=[0.3, 0.3, 0.2, 0.2])
    if kind == 0:
        tex = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == 1:
        t = _ramp(h, w, rng.uniform(0, 2 * np.pi))[..., None]
        tex = c1 * (1 - t) + c2 * t
    elif kind == 2:
        yy, xx = _grid(h, w)
        a = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        proj = xx * _F(math.cos(a)) + yy * _F(math.sin(a))
        t = (0.5 + 0.5 * np.sin(proj * _F(2 * np.pi / period)))[..., None]
        tex = c1 * (1 - t) + c2 * t
    else:
        tex = c1 + rng.standard_normal((h, w, 1), dtype=_F) * _F(rng.uniform(15, 35))
    shade = (_ramp(h, w, rng.uniform(0, 2 * np.pi)) - 0.5)[..., None] * _F(rng.uniform(0, 50))
    return tex + shade


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Gradient + low-frequency colour noise + an optional 'horizon', as float ``[h, w, 3]``."""
    grey = _F(rng.uniform(60, 200))
    c1 = grey + (random_colour(rng) - grey) * _F(rng.uniform(0.2, 0.7))  # muted colours
    c2 = grey + (random_colour(rng) - grey) * _F(rng.uniform(0.2, 0.7))
    t = _ramp(h, w, rng.uniform(0, 2 * np.pi))[..., None]
    bg = c1 * (1 - t) + c2 * t
    gh, gw = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    coarse = rng.uniform(0, 255, (gh, gw, 3)).astype(np.uint8)
    blobs = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=_F) - 127.5
    bg += blobs * _F(rng.uniform(0.1, 0.35))
    if rng.random() < 0.4:
        horizon = int(rng.uniform(0.3, 0.8) * h)
        bg[horizon:] += (random_colour(rng) - 127.5) * _F(0.3)
    if rng.random() < 0.3:  # faint texture (weave / tiles)
        yy, xx = _grid(h, w)
        period = rng.uniform(6, 20)
        bg += (np.sin(xx * _F(2 * np.pi / period)) * np.sin(yy * _F(2 * np.pi / period)))[..., None] * _F(
            rng.uniform(4, 12)
        )
    return bg


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """A lumpy, clearly irregular outline (harmonics 2 and 3), for clutter."""
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    a2, a3 = rng.uniform(0.15, 0.3, 2)
    r = radius * (1 + a2 * np.cos(2 * t + rng.uniform(0, 6.3)) + a3 * np.cos(3 * t + rng.uniform(0, 6.3)))
    return list(zip((cx + r * np.cos(t)).tolist(), (cy + r * np.sin(t)).tolist(), strict=True))


def draw_clutter(img: Image.Image, rng: np.random.Generator) -> None:
    """Distractors drawn under the objects: lines, arcs, dots and lumpy blobs."""
    w, h = img.size
    draw = ImageDraw.Draw(img)

    def col() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]

    for _ in range(int(rng.integers(1, 6))):
        pts = rng.uniform(0, 1, (2, 2)) * [w, h]
        draw.line([tuple(p) for p in pts.tolist()], fill=col(), width=int(rng.integers(1, 5)))
    for _ in range(int(rng.integers(0, 3))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
        a0 = rng.uniform(0, 360)
        draw.arc(
            [cx - r, cy - r, cx + r, cy + r],
            a0,
            a0 + rng.uniform(60, 200),
            fill=col(),
            width=int(rng.integers(1, 4)),
        )
    for _ in range(int(rng.integers(0, 10))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 3)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col())
    for _ in range(int(rng.integers(0, 4))):
        draw.polygon(_blob(rng, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 28)), fill=col())
