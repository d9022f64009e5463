"""A small synthetic detection dataset in VOC format: shapes on photograph-like backgrounds.

Meant as a real (if easy) test of the whole pipeline on a CPU: a small detector can learn it (high mAP is
attainable) but it is not trivial — several shape classes of varied size (about 16 px up to half the
shorter image side), aspect ratio, rotation, colour and texture (solid, gradient, stripes, noise), partial
occlusion, truncation at the image border, clutter (lines, arcs, dots, lumpy blobs: not objects), noisy
gradient backgrounds, soft (anti-aliased) edges, sensor noise and JPEG compression. Colour is drawn
independently of the class, so only the silhouette tells the classes apart.

Annotation rules (VOC's: the box is the tight extent of the **visible** part of the object):

* box = extent of the pixels whose shape coverage is ≥ 1/2 and that no later shape or clutter line covers;
  written 1-based inclusive in the XML as VOC does;
* an object less than half visible (occluded by later shapes) is marked ``difficult``; one with less than
  15% of its area (or fewer than 40 pixels) left visible is dropped from the annotations — a sliver no one
  can recognise (its pixels stay in the image);
* about 4% of objects are drawn faint (semi-transparent) and marked ``difficult``;
* an object cut by the image border (at most ~15% of its extent) is ``truncated``, not difficult.

Output: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml``, ``ImageSets/Main/{trainval,test}.txt``,
``classes.txt`` and ``synthetic.json`` (the generator's parameters). Generation is deterministic: the same
arguments give the same bytes (image ``i`` draws from its own generator seeded by ``(seed, i)``, so a
smaller dataset's images are a prefix of a larger one's).
"""

from __future__ import annotations

import io
import json
import math
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from frcnn_trt.data.synthetic_paint import (
    SHAPES,
    background,
    coverage,
    draw_clutter,
    place_shape,
    random_colour,
    texture,
)
from frcnn_trt.errors import ConfigError, DatasetError
from frcnn_trt.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "DEFAULT_CLASSES",
    "SHAPES",
    "Scene",
    "SynthObject",
    "SyntheticSummary",
    "make_synthetic_dataset",
    "render_scene",
]

DEFAULT_CLASSES: tuple[str, ...] = SHAPES[:5]

GENERATOR_VERSION = 1
MIN_OBJECT_SIZE = 16  # px, longest side of the unoccluded shape
DIFFICULT_VISIBLE = 0.5  # visible / in-image area below this: difficult
DROP_VISIBLE = 0.15  # visible / full area below this (or < DROP_PIXELS pixels): not annotated
DROP_PIXELS = 40
FAINT_PROB = 0.04
MAX_IOU = 0.35  # placement: IoU of unoccluded boxes with earlier shapes at most this
TRUNCATE = 0.15  # placement: up to this fraction of a shape's extent may lie outside the image
JPEG_QUALITY = 90

_F = np.float32


@dataclass(frozen=True)
class SynthObject:
    """One annotated object: class, tight 0-based inclusive box of its visible pixels, flags."""

    name: str
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool
    visible_fraction: float  # visible / in-image area


@dataclass
class Scene:
    """A rendered image (uint8 ``[H, W, 3]`` RGB), its pixel ownership map and its annotations.

    ``owner[y, x]`` is ``k`` where ``objects[k]`` is the visible shape, ``-1`` for background and clutter,
    ``-2`` for a shape too occluded to annotate.
    """

    image: np.ndarray
    owner: np.ndarray
    objects: list[SynthObject]
    dropped: int = 0


@dataclass(frozen=True)
class SyntheticSummary:
    root: Path
    num_images: int
    num_trainval: int
    num_test: int
    classes: tuple[str, ...]
    objects_per_class: dict[str, int]
    num_difficult: int
    num_dropped: int
    smallest_image: tuple[int, int] = (0, 0)  # (width, height) with the smallest area
    largest_image: tuple[int, int] = (0, 0)
    num_portrait: int = 0  # images taller than wide


# -- scenes ------------------------------------------------------------------------------------------------
class _Drawn(NamedTuple):
    """A shape painted into the scene, before the annotation pass."""

    name: str
    full_area: int  # pixels its unoccluded shape covers (≥ 1/2), inside the image or not
    inside: int  # of them inside the image
    faint: bool


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _with_clutter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw_clutter(pil, rng)
    return np.asarray(pil, dtype=_F).copy()


def _find_place(
    ext: np.ndarray, width: int, height: int, placed: list[np.ndarray], rng: np.random.Generator
) -> tuple[float, float, np.ndarray] | None:
    """A centre (and the box) for a shape of extent ``ext`` overlapping the ``placed`` boxes little (15 tries)."""
    (ex0, ey0), (ex1, ey1) = ext
    bw, bh = ex1 - ex0, ey1 - ey0
    for _attempt in range(15):
        cx = rng.uniform(-ex0 - TRUNCATE * bw, width - ex1 + TRUNCATE * bw)
        cy = rng.uniform(-ey0 - TRUNCATE * bh, height - ey1 + TRUNCATE * bh)
        box = np.array([cx + ex0, cy + ey0, cx + ex1, cy + ey1])
        if all(_iou(box, b) <= MAX_IOU for b in placed):
            return cx, cy, box
    return None


def _contrasting_texture(region: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A texture for the shape whose mean colour stands out from what is under it (10 tries)."""
    h, w = region.shape[:2]
    bg_mean = (region * weight).sum((0, 1)) / max(float(weight.sum()), 1e-6)
    for _attempt in range(10):  # keep the object visible against what is under it
        tex = texture(h, w, rng)
        fg_mean = (tex * weight).sum((0, 1)) / max(float(weight.sum()), 1e-6)
        if float(np.linalg.norm(fg_mean - bg_mean)) >= 60:
            break
    return tex


def _paint_shape(
    img: np.ndarray,
    owner: np.ndarray,
    k: int,
    polys: list[tuple[np.ndarray, int]],
    centre: tuple[float, float],
    box: np.ndarray,
    rng: np.random.Generator,
) -> tuple[int, int, bool] | None:
    """Paint the shape centred at ``centre`` into ``img``, claim its pixels as ``k`` in ``owner``; returns
    ``(full_area, inside, faint)``, or None (nothing drawn) when no pixel of it lies in the image."""
    height, width = owner.shape
    cx, cy = centre
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    pw, ph = math.ceil(box[2]) - x0 + 1, math.ceil(box[3]) - y0 + 1
    cov = coverage([(p + np.array([cx, cy]), f) for p, f in polys], x0, y0, pw, ph)
    full_area = int((cov >= 0.5).sum())
    # the part of the patch inside the image
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + pw, width), min(y0 + ph, height)
    cov = cov[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    region = img[iy0:iy1, ix0:ix1]
    inside = int((cov >= 0.5).sum())
    if full_area == 0 or inside == 0:
        return None
    weight = cov[..., None]
    tex = _contrasting_texture(region, weight, rng)
    faint = bool(rng.random() < FAINT_PROB)
    alpha = weight * _F(0.3 if faint else 1.0)
    img[iy0:iy1, ix0:ix1] = region * (1 - alpha) + np.clip(tex, 0, 255) * alpha
    owner[iy0:iy1, ix0:ix1][cov >= 0.5] = k
    return full_area, inside, faint


def _add_object(
    img: np.ndarray,
    owner: np.ndarray,
    drawn: list[_Drawn],
    placed: list[np.ndarray],
    classes: Sequence[str],
    max_size: float,
    rng: np.random.Generator,
) -> None:
    """Draw one random shape where it fits (appended to ``drawn``); skipped when no place is found or it
    falls outside the image."""
    height, width = owner.shape
    name = classes[int(rng.integers(len(classes)))]
    size = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(max_size)))
    polys, ext = place_shape(name, size, rng)
    where = _find_place(ext, width, height, placed, rng)
    if where is None:
        return
    cx, cy, box = where
    placed.append(box)
    painted = _paint_shape(img, owner, len(drawn), polys, (cx, cy), box, rng)
    if painted is not None:
        drawn.append(_Drawn(name, *painted))


def _occluding_lines(img: np.ndarray, owner: np.ndarray, rng: np.random.Generator) -> None:
    """Thin lines over everything: clutter that occludes a little (their pixels belong to no object)."""
    height, width = owner.shape
    mask_img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_img)
    for _ in range(int(rng.integers(1, 3))):
        pts = rng.uniform(0, 1, (2, 2)) * [width, height]
        draw.line([tuple(p) for p in pts.tolist()], fill=255, width=int(rng.integers(1, 3)))
    m = np.asarray(mask_img) > 0
    img[m] = random_colour(rng)
    owner[m] = -1


def _annotate(owner: np.ndarray, drawn: Sequence[_Drawn]) -> tuple[list[SynthObject], np.ndarray, int]:
    """VOC annotations of the visible parts (module doc): the objects, the renumbered owner map, the number
    dropped as too occluded."""
    objects: list[SynthObject] = []
    remap = np.full(len(drawn) + 1, -1, dtype=np.int16)  # last entry: background (-1) maps to -1
    dropped = 0
    counts = np.bincount(owner[owner >= 0].ravel(), minlength=len(drawn))
    for k, (name, full_area, inside, faint) in enumerate(drawn):
        visible = int(counts[k])
        if visible < DROP_PIXELS or visible < DROP_VISIBLE * full_area:
            remap[k] = -2
            dropped += 1
            continue
        ys, xs = np.nonzero(owner == k)
        vis_frac = visible / inside
        objects.append(
            SynthObject(
                name=name,
                box=(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                difficult=faint or vis_frac < DIFFICULT_VISIBLE,
                truncated=inside < full_area,
                visible_fraction=round(vis_frac, 4),
            )
        )
        remap[k] = len(objects) - 1
    owner = np.where(owner >= 0, remap[np.maximum(owner, 0)], owner).astype(np.int16)
    return objects, owner, dropped


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    num_objects: int | None = None,
    clutter: bool = True,
    noise: bool = True,
) -> Scene:
    """Render one image with ``num_objects`` shapes (default 1 to 6) and annotate it (see module doc)."""
    if num_objects is None:
        num_objects = 1 + int(rng.binomial(5, 0.5))
    img = background(height, width, rng)
    if clutter:
        img = _with_clutter(img, rng)
    owner = np.full((height, width), -1, dtype=np.int16)
    drawn: list[_Drawn] = []
    placed: list[np.ndarray] = []
    max_size = max(MIN_OBJECT_SIZE + 1.0, 0.5 * min(width, height))
    for _ in range(num_objects):
        _add_object(img, owner, drawn, placed, classes, max_size, rng)
    if clutter and rng.random() < 0.3:
        _occluding_lines(img, owner, rng)
    if noise:
        img += rng.standard_normal((height, width, 3), dtype=_F) * _F(rng.uniform(3, 10))
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    objects, owner, dropped = _annotate(owner, drawn)
    return Scene(image=image, owner=owner, objects=objects, dropped=dropped)


# -- dataset -----------------------------------------------------------------------------------------------
def _voc_xml(image_id: str, width: int, height: int, objects: Sequence[SynthObject]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "synthetic"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "frcnn-trt synthetic shapes"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = obj.name
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = str(int(obj.truncated))
        ET.SubElement(o, "difficult").text = str(int(obj.difficult))
        bb = ET.SubElement(o, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box, strict=True):
            ET.SubElement(bb, tag).text = str(value + 1)  # VOC: 1-based inclusive
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _image_size(rng: np.random.Generator, base: tuple[int, int], vary: bool) -> tuple[int, int]:
    if not vary:
        return base
    w0, h0 = base
    scale = rng.uniform(0.85, 1.15)
    aspect = (w0 / h0) * rng.uniform(0.85, 1.2)
    area = w0 * h0 * scale * scale
    w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    if rng.random() < 0.25:  # portrait images, so aspect grouping sees both kinds
        w, h = h, w
    return max(round(w), 32), max(round(h), 32)


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _check_arguments(
    classes: tuple[str, ...], num_images: int, test_fraction: float, image_size: tuple[int, int]
) -> None:
    for name in classes:
        if name not in SHAPES:
            raise ConfigError(f"unknown synthetic shape {name!r}; available: {', '.join(SHAPES)}")
    if len(set(classes)) != len(classes) or not classes:
        raise ConfigError(f"synthetic classes must be distinct and non-empty, got {classes}")
    if num_images < 1:
        raise ConfigError(f"num_images must be at least 1, got {num_images}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if min(int(v) for v in image_size) < 48:
        raise ConfigError(f"image_size must be at least 48x48, got {image_size}")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"synthetic dataset target {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "synthetic.json").is_file():
            raise DatasetError(
                f"{out} is not empty and is not a synthetic dataset (no synthetic.json); refusing to write into it"
            )
        if not overwrite:
            raise DatasetError(f"{out} already holds a synthetic dataset; pass overwrite=True to regenerate it")
        for sub in ("JPEGImages", "Annotations", "ImageSets"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def make_synthetic_dataset(
    out: str | Path,
    *,
    num_images: int = 200,
    image_size: tuple[int, int] = (320, 240),
    classes: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    test_fraction: float = 0.25,
    vary_size: bool = True,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write a VOC-format synthetic dataset into ``out`` (see the module doc) and summarise it.

    ``image_size`` is the typical ``(width, height)``; with ``vary_size`` each image's area varies by
    about ±30% and its aspect by -15%/+20%, and a quarter of the images are portrait.
    """
    classes = tuple(classes)
    _check_arguments(classes, num_images, test_fraction, image_size)
    w0, h0 = (int(v) for v in image_size)
    out = Path(out)
    _prepare_out(out, overwrite)

    ids = [f"{i:06d}" for i in range(num_images)]
    per_class: Counter[str] = Counter()
    sizes: list[tuple[int, int]] = []
    num_difficult = num_dropped = 0
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, i])
        width, height = _image_size(rng, (w0, h0), vary_size)
        scene = render_scene(rng, width, height, classes)
        atomic_write_bytes(out / "JPEGImages" / f"{image_id}.jpg", _jpeg(scene.image))
        atomic_write_bytes(out / "Annotations" / f"{image_id}.xml", _voc_xml(image_id, width, height, scene.objects))
        per_class.update(o.name for o in scene.objects)
        num_difficult += sum(o.difficult for o in scene.objects)
        num_dropped += scene.dropped
        sizes.append((width, height))

    num_test = round(num_images * test_fraction)
    perm = np.random.default_rng([seed, 2**32 - 1]).permutation(num_images)
    test = sorted(ids[j] for j in perm[:num_test])
    trainval = sorted(ids[j] for j in perm[num_test:])
    main = out / "ImageSets" / "Main"
    atomic_write_text(main / "trainval.txt", "".join(f"{i}\n" for i in trainval))
    atomic_write_text(main / "test.txt", "".join(f"{i}\n" for i in test))
    atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    params = {
        "generator": "frcnn_trt.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_images": num_images,
        "image_size": [w0, h0],
        "vary_size": vary_size,
        "classes": list(classes),
        "test_fraction": test_fraction,
    }
    atomic_write_text(out / "synthetic.json", json.dumps(params, indent=2) + "\n")
    return SyntheticSummary(
        root=out,
        num_images=num_images,
        num_trainval=len(trainval),
        num_test=len(test),
        classes=classes,
        objects_per_class={c: per_class[c] for c in classes},
        num_difficult=num_difficult,
        num_dropped=num_dropped,
        smallest_image=min(sizes, key=lambda s: s[0] * s[1]),
        largest_image=max(sizes, key=lambda s: s[0] * s[1]),
        num_portrait=sum(h > w for w, h in sizes),
    )
