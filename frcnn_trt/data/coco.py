"""COCO-format (JSON) datasets as an imdb.

Categories are mapped to contiguous class indices 1..K in category-id order (py-faster-rcnn's ``coco``
imdb did the same), class names are the category names. A ``bbox`` ``[x, y, w, h]`` becomes the 0-based
inclusive box ``x1 = x, y1 = y, x2 = x + w - 1, y2 = y + h - 1``. ``iscrowd`` objects are kept and flagged
``difficult``, so training ignores them (unless ``use_diff``) and evaluation neither rewards nor penalises
detections on them. Bad records follow :mod:`frcnn_trt.data.imdb`'s policy.

The JSON is read through :mod:`frcnn_trt.files` (regular files only, byte-order mark removed, nesting, digit and
NaN limits). Nothing in it is trusted: the categories define the classes, so an invalid category refuses the
file with a :class:`DatasetError` naming the entry; an image or annotation entry of the wrong shape (a list
where an id or a number belongs, a ``file_name`` that leaves the image folder, a bbox of the wrong length,
a reference to a missing image or category, too many objects) is skipped and reported.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from frcnn_trt.data.images import image_size
from frcnn_trt.data.imdb import (
    MAX_COORDINATE,
    MAX_IMAGE_SIDE,
    MAX_OBJECTS_PER_IMAGE,
    ImageAnnotation,
    Imdb,
    IssueLog,
    class_name_problem,
    clip_box,
    make_annotation,
    normalize_classes,
)
from frcnn_trt.errors import DatasetError, ImageError
from frcnn_trt.files import check_regular_file, confined, is_finite_number, load_json, short

__all__ = ["MAX_COCO_BYTES", "CocoImdb", "default_image_dir"]

#: the largest COCO JSON read (COCO 2017's train instances file is about 450 MB)
MAX_COCO_BYTES = 4 << 30

_Box = tuple[tuple[float, float, float, float], int, bool]


def default_image_dir(annotation_json: Path) -> Path:
    """Where the images of a COCO JSON most likely are.

    ``<root>/annotations/instances_<set>.json`` → ``<root>/<set>`` or ``<root>/images/<set>`` (the official
    and py-faster-rcnn layouts), else ``images/`` next to the JSON, else the JSON's own folder.
    """
    parent = annotation_json.parent
    stem = annotation_json.stem
    set_name = stem.split("_", 1)[1] if "_" in stem else stem
    candidates = [
        parent.parent / set_name,
        parent.parent / "images" / set_name,
        parent / "images",
        parent / set_name,
    ]
    return next((c for c in candidates if os.path.isdir(c)), parent)


def _number(value: Any) -> float | None:
    """``value`` as a finite float within ±MAX_COORDINATE, None for anything else (bool, str, list, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return value if math.isfinite(value) and abs(value) <= MAX_COORDINATE else None


def _image_key(value: Any) -> int | str | None:
    """An image id usable as a key: an int (not bool) or a non-empty string of sane length; else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) < 1 << 63 else None
    if isinstance(value, str) and 0 < len(value) <= 1000:
        return value
    return None


def _crowd(value: Any) -> bool | None:
    """``iscrowd`` as a flag (absent: False), None when it is not a bool or a finite number."""
    if isinstance(value, bool):
        return value
    if is_finite_number(value):
        return value != 0
    return None


def _size(img: dict[str, Any]) -> tuple[int, int] | None:
    """``(width, height)`` of an image entry, None when missing or not a whole number in 1..MAX_IMAGE_SIDE."""
    width, height = _number(img.get("width")), _number(img.get("height"))
    if width is None or height is None:
        return None
    if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
        return None
    if not (width.is_integer() and height.is_integer()):
        return None
    return int(width), int(height)


def _check_categories(path: Path, cats: list[Any]) -> list[dict[str, Any]]:
    """The categories sorted by id; :class:`DatasetError` naming the entry for an invalid or duplicate one."""
    for k, c in enumerate(cats):
        cid = c.get("id") if isinstance(c, dict) else None
        name = c.get("name") if isinstance(c, dict) else None
        if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(name, str):
            raise DatasetError(f"{path}: category entry #{k} {short(c)} needs an integer 'id' and a string 'name'")
        if abs(cid) >= 1 << 63:
            raise DatasetError(f"{path}: category entry #{k}: id {short(cid)} is out of range")
        problem = class_name_problem(name.strip())
        if problem is not None:
            raise DatasetError(f"{path}: category entry #{k} (id {cid}): invalid {problem}")
    dupes = sorted(i for i, n in Counter(c["id"] for c in cats).items() if n > 1)
    if dupes:
        raise DatasetError(f"{path}: duplicate category ids {short(dupes, 200)}")
    cats = sorted(cats, key=lambda c: c["id"])
    normalize_classes([c["name"] for c in cats], source=str(path))  # none, duplicates, a misplaced background
    return cats


class CocoImdb(Imdb):
    """A COCO-JSON dataset: ``annotation_json`` (images, annotations, categories) + the image folder."""

    def __init__(
        self,
        annotation_json: str | Path,
        image_dir: str | Path | None = None,
        *,
        name: str | None = None,
        use_diff: bool = False,
        strict: bool = False,
    ) -> None:
        self.annotation_json = Path(annotation_json)
        self._data = self._read_json()
        self.image_dir = Path(image_dir) if image_dir is not None else default_image_dir(self.annotation_json)
        if not os.path.isdir(self.image_dir):
            raise DatasetError(f"image folder not found: {short(str(self.image_dir), 200)} "
                               f"(for {self.annotation_json})")
        categories = self._data["categories"]
        self.category_ids: list[int] = [c["id"] for c in categories]
        super().__init__(
            name or f"coco_{self.annotation_json.stem}",
            [c["name"] for c in categories],
            use_diff=use_diff,
            strict=strict,
        )
        self.category_to_class = {cid: k for k, cid in enumerate(self.category_ids, start=1)}

    def _read_json(self) -> dict[str, Any]:
        path = self.annotation_json
        check_regular_file(path, "COCO annotation file")
        # NaN/Infinity parse as floats: the record holding one is skipped, not the whole file
        data = load_json(path, "COCO annotation file", max_bytes=MAX_COCO_BYTES, allow_nan=True)
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: expected a JSON object with images/annotations/categories")
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(f"{path}: missing or invalid {key!r} list")
        if not isinstance(data.get("annotations", []), list):
            raise DatasetError(f"{path}: 'annotations' is not a list")
        data["categories"] = _check_categories(path, data["categories"])
        return data

    def _fingerprint_files(self) -> Iterable[Path]:
        return [self.annotation_json, self.image_dir]

    def _group_annotations(self, image_ids: set[int | str], log: IssueLog) -> dict[int | str, list[dict[str, Any]]]:
        """Annotations by image id; an entry that is not an object or names no listed image is reported."""
        by_image: dict[int | str, list[dict[str, Any]]] = {}
        for k, ann in enumerate(self._data.get("annotations", [])):
            raw = ann.get("image_id") if isinstance(ann, dict) else None
            image_id = _image_key(raw)
            if not isinstance(ann, dict):
                log.add(self.annotation_json, f"annotation #{k} is not a JSON object ({short(ann)}); skipped",
                        "missing_field")
            elif image_id is None or image_id not in image_ids:
                log.add(self.annotation_json, f"annotation #{k} refers to unknown image_id {short(raw)}; skipped",
                        "missing_field")
            else:
                by_image.setdefault(image_id, []).append(ann)
        return by_image

    def _load(self, log: IssueLog) -> list[ImageAnnotation]:
        src = self.annotation_json.name
        images = self._data["images"]
        keys = [_image_key(img.get("id")) if isinstance(img, dict) else None for img in images]
        by_image = self._group_annotations({k for k in keys if k is not None}, log)
        records: list[ImageAnnotation] = []
        seen: set[str] = set()
        for k, (img, key) in enumerate(zip(images, keys, strict=True)):
            if key is None or not isinstance(img.get("file_name"), str):
                log.add(self.annotation_json, f"image entry #{k} needs 'id' (an integer or a string) and "
                        f"'file_name' (a string), got {short(img)}; skipped", "missing_field")
                continue
            if str(key) in seen:
                log.add(self.annotation_json, f"image id {key!r} listed twice; kept once", "duplicate_id", "info")
                continue
            seen.add(str(key))
            record = self._load_image(img, key, by_image.get(key, []), src, log)
            if record is not None:
                records.append(record)
        return records

    def _image_path(self, img: dict[str, Any], key: int | str, src: str, log: IssueLog) -> Path | None:
        """The image file of an entry, confined to the image folder; None (reported) if unusable or missing."""
        where = f"{self.annotation_json}: image id {short(key)}"
        try:
            path = confined(self.image_dir, img["file_name"], where)
        except DatasetError as exc:
            log.add(self.annotation_json, f"{str(exc).removeprefix(where + ': ')} (image id {short(key)}); "
                    "image skipped", "bad_path")
            return None
        if not os.path.isfile(path):
            log.add(path, f"image file not found (image id {short(key)} in {src}); image skipped", "missing_image")
            return None
        return path

    def _image_size(self, img: dict[str, Any], path: Path, src: str, log: IssueLog) -> tuple[int, int] | None:
        size = _size(img)
        if size is not None:
            return size
        try:
            w, h = image_size(path)
        except ImageError as exc:
            log.add(path, f"no valid width/height in {src} and the header is unreadable ({exc}); skipped",
                    "unreadable_image")
            return None
        log.add(path, f"width/height {short(img.get('width'), 30)}x{short(img.get('height'), 30)} in {src} invalid "
                f"or missing; {w}x{h} taken from the image header", "missing_size", "warning")
        return w, h

    def _load_image(
        self, img: dict[str, Any], key: int | str, anns: list[dict[str, Any]], src: str, log: IssueLog
    ) -> ImageAnnotation | None:
        path = self._image_path(img, key, src, log)
        if path is None:
            return None
        if len(anns) > MAX_OBJECTS_PER_IMAGE:
            log.add(path, f"{len(anns)} annotations in {src}, over the limit of {MAX_OBJECTS_PER_IMAGE} per image; "
                    "image skipped", "too_many_objects")
            return None
        size = self._image_size(img, path, src, log)
        if size is None:
            return None
        width, height = size
        objects = [o for ann in anns if (o := self._parse_ann(ann, path, width, height, src, log)) is not None]
        if not objects:
            detail = f"all {len(anns)} annotations skipped" if anns else "no annotations"
            log.add(path, f"image has no usable objects ({detail}); kept", "no_objects", "info")
        return make_annotation(str(key), path, width, height, objects)

    def _parse_ann(self, ann: dict[str, Any], path: Path, width: int, height: int, src: str,
                   log: IssueLog) -> _Box | None:
        what = f"annotation id {short(ann.get('id'))} in {src}"
        cid = ann.get("category_id")
        # a list/object here is unhashable, a bool equals 0/1: neither names a category (3.0 does, as 3)
        usable = isinstance(cid, int | float) and not isinstance(cid, bool)
        cls = self.category_to_class.get(cid) if usable else None  # type: ignore[arg-type]
        if cls is None:
            log.add(path, f"{what}: unknown class {short(str(cid))} (category_id not among the categories); "
                    "skipped", "unknown_class")
            return None
        crowd = _crowd(ann.get("iscrowd", 0))
        if crowd is None:
            log.add(path, f"{what}: iscrowd {short(ann.get('iscrowd'))} is not 0 or 1; skipped", "bad_value")
            return None
        bbox = ann.get("bbox")
        values = [_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
        if values is None or any(v is None for v in values):
            log.add(path, f"{what}: bbox {short(bbox)} is not four finite numbers [x, y, w, h] (each within "
                    f"±{MAX_COORDINATE:g}); skipped", "bad_value")
            return None
        x, y, w, h = (float(v) for v in values)  # type: ignore[arg-type]
        if w < 0 or h < 0:
            log.add(path, f"{what}: negative size in bbox {short(bbox)}; skipped", "inverted_box")
            return None
        if w < 1 or h < 1:
            log.add(path, f"{what}: zero-area (under one pixel) bbox {short(bbox)}; skipped", "zero_area_box")
            return None
        box = clip_box((x, y, x + w - 1, y + h - 1), width, height, file=path, what=what, log=log)
        if box is None:
            return None
        return box, cls, crowd
