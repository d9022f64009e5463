"""COCO-format (JSON) datasets as an imdb.

Categories are mapped to contiguous class indices 1..K in category-id order (py-faster-rcnn's ``coco``
imdb did the same), class names are the category names. A ``bbox`` ``[x, y, w, h]`` becomes the 0-based
inclusive box ``x1 = x, y1 = y, x2 = x + w - 1, y2 = y + h - 1``. ``iscrowd`` objects are kept and flagged
``difficult``, so training ignores them (unless ``use_diff``) and evaluation neither rewards nor penalises
detections on them. Bad records follow :mod:`frcnn_trt.data.imdb`'s policy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from frcnn_trt.data.images import image_size
from frcnn_trt.data.imdb import ImageAnnotation, Imdb, IssueLog, clip_box, make_annotation
from frcnn_trt.errors import DatasetError, ImageError

__all__ = ["CocoImdb", "default_image_dir"]


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
    return next((c for c in candidates if c.is_dir()), parent)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
        if not self.image_dir.is_dir():
            raise DatasetError(f"image folder not found: {self.image_dir} (for {self.annotation_json})")
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
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"COCO annotation file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read COCO annotation file {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: malformed JSON ({exc})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: expected a JSON object with images/annotations/categories")
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(f"{path}: missing or invalid {key!r} list")
        if not isinstance(data.get("annotations", []), list):
            raise DatasetError(f"{path}: 'annotations' is not a list")
        cats = data["categories"]
        for c in cats:
            if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
                raise DatasetError(f"{path}: category entry {c!r} needs an integer 'id' and a string 'name'")
        ids = [c["id"] for c in cats]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{path}: duplicate category ids {sorted(i for i in ids if ids.count(i) > 1)}")
        data["categories"] = sorted(cats, key=lambda c: c["id"])
        return data

    def _fingerprint_files(self) -> Iterable[Path]:
        return [self.annotation_json, self.image_dir]

    def _load(self, log: IssueLog) -> list[ImageAnnotation]:
        src = self.annotation_json.name
        by_image: dict[Any, list[dict[str, Any]]] = {}
        image_ids = {img.get("id") for img in self._data["images"] if isinstance(img, dict)}
        for k, ann in enumerate(self._data.get("annotations", [])):
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if image_id not in image_ids:
                log.add(
                    self.annotation_json,
                    f"annotation #{k} refers to unknown image_id {image_id!r}; skipped",
                    "missing_field",
                )
                continue
            by_image.setdefault(image_id, []).append(ann)
        records: list[ImageAnnotation] = []
        seen: set[Any] = set()
        for k, img in enumerate(self._data["images"]):
            if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or "id" not in img:
                log.add(
                    self.annotation_json,
                    f"image entry #{k} needs 'id' and 'file_name'; skipped",
                    "missing_field",
                )
                continue
            if img["id"] in seen:
                log.add(
                    self.annotation_json,
                    f"image id {img['id']!r} listed twice; kept once",
                    "duplicate_id",
                    "info",
                )
                continue
            seen.add(img["id"])
            record = self._load_image(img, by_image.get(img["id"], []), src, log)
            if record is not None:
                records.append(record)
        return records

    def _load_image(
        self, img: dict[str, Any], anns: list[dict[str, Any]], src: str, log: IssueLog
    ) -> ImageAnnotation | None:
        path = self.image_dir / img["file_name"]
        if not path.is_file():
            log.add(path, f"image file not found (image id {img['id']} in {src}); image skipped", "missing_image")
            return None
        width, height = _number(img.get("width")), _number(img.get("height"))
        if (
            width is None
            or height is None
            or width < 1
            or height < 1
            or not (width.is_integer() and height.is_integer())
        ):
            try:
                w, h = image_size(path)
            except ImageError as exc:
                log.add(
                    path,
                    f"no valid width/height in {src} and the header is unreadable ({exc}); skipped",
                    "unreadable_image",
                )
                return None
            log.add(
                path,
                f"width/height {img.get('width')!r}x{img.get('height')!r} in {src} invalid or missing; "
                f"{w}x{h} taken from the image header",
                "missing_size",
                "warning",
            )
            width, height = float(w), float(h)
        objects = []
        for ann in anns:
            parsed = self._parse_ann(ann, path, int(width), int(height), src, log)
            if parsed is not None:
                objects.append(parsed)
        if not objects:
            detail = f"all {len(anns)} annotations skipped" if anns else "no annotations"
            log.add(path, f"image has no usable objects ({detail}); kept", "no_objects", "info")
        return make_annotation(str(img["id"]), path, int(width), int(height), objects)

    def _parse_ann(
        self, ann: dict[str, Any], path: Path, width: int, height: int, src: str, log: IssueLog
    ) -> tuple[tuple[float, float, float, float], int, bool] | None:
        what = f"annotation id {ann.get('id')!r} in {src}"
        cls = self.category_to_class.get(ann.get("category_id"))  # type: ignore[arg-type]
        if cls is None:
            log.add(
                path,
                f"{what}: unknown class {str(ann.get('category_id'))!r} (category_id not among the "
                "categories); skipped",
                "unknown_class",
            )
            return None
        bbox = ann.get("bbox")
        values = [_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
        if values is None or any(v is None for v in values):
            log.add(path, f"{what}: bbox {bbox!r} is not four finite numbers [x, y, w, h]; skipped", "bad_value")
            return None
        x, y, w, h = (float(v) for v in values)  # type: ignore[arg-type]
        if w < 0 or h < 0:
            log.add(path, f"{what}: negative size in bbox {bbox!r}; skipped", "inverted_box")
            return None
        if w < 1 or h < 1:
            log.add(path, f"{what}: zero-area (under one pixel) bbox {bbox!r}; skipped", "zero_area_box")
            return None
        box = clip_box((x, y, x + w - 1, y + h - 1), width, height, file=path, what=what, log=log)
        if box is None:
            return None
        return box, cls, bool(ann.get("iscrowd", 0))
