"""PASCAL VOC and any VOC-format folder, read as py-faster-rcnn's ``pascal_voc`` imdb did.

Layout: ``<root>/ImageSets/Main/<split>.txt`` (one image id per line), ``<root>/Annotations/<id>.xml``,
``<root>/JPEGImages/<id>.jpg``. Boxes are the XML's 1-based inclusive corners minus one (0-based inclusive),
stored as float32: py-faster-rcnn stored them as uint16, so a custom dataset's ``xmin = 0`` wrapped to 65535
and crashed ``append_flipped_images``; here such a box is clipped to the image and reported instead.
Difficult objects are kept and flagged (the roidb drops them unless ``use_diff``).

XML is parsed with ``defusedxml`` (no entity expansion, no external references). Bad records follow the
policy of :mod:`frcnn_trt.data.imdb`: reported as issues and skipped, or a :class:`DatasetError` in strict
mode.
"""

from __future__ import annotations

import difflib
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET

from frcnn_trt.data.images import image_size
from frcnn_trt.data.imdb import (
    ImageAnnotation,
    Imdb,
    IssueLog,
    clip_box,
    make_annotation,
    read_class_file,
)
from frcnn_trt.errors import DatasetError, ImageError

__all__ = ["IMAGE_EXTS", "VOC_CLASSES", "PascalVoc", "VocFolder", "VocObject", "VocXml", "parse_voc_xml"]

logger = logging.getLogger(__name__)

# py-faster-rcnn's order (lib/datasets/pascal_voc.py); index 0 is the background.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# Tried in this order after ``<id>.jpg`` and the XML's <filename> when a custom folder's image is not a .jpg.
IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG", ".BMP")

_COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VocObject:
    """One ``<object>`` as text, before validation (``None`` = element missing)."""

    name: str | None
    difficult: str | None
    bndbox: dict[str, str | None] | None


@dataclass(frozen=True)
class VocXml:
    """One annotation file as text, before validation."""

    filename: str | None
    width: str | None
    height: str | None
    has_size: bool
    objects: tuple[VocObject, ...]


class _BadFile(Exception):
    """An annotation file that cannot be used at all (the message is the reason, without the path)."""


def _text(elem: ET.Element, tag: str) -> str | None:
    child = elem.find(tag)
    if child is None:
        return None
    return (child.text or "").strip()


def _parse(path: Path) -> VocXml:
    try:
        root = SafeET.parse(path).getroot()
    except ET.ParseError as exc:
        raise _BadFile(f"malformed or truncated XML ({exc})") from None
    except defusedxml.DefusedXmlException as exc:
        raise _BadFile(f"XML rejected as unsafe ({type(exc).__name__}: {exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _BadFile(f"cannot read ({exc})") from None
    if root.tag != "annotation":
        raise _BadFile(f"not a VOC annotation: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    objects = []
    for obj in root.findall("object"):
        bndbox = obj.find("bndbox")
        coords = None if bndbox is None else {k: _text(bndbox, k) for k in _COORDS}
        objects.append(VocObject(_text(obj, "name"), _text(obj, "difficult"), coords))
    return VocXml(
        filename=_text(root, "filename"),
        width=None if size is None else _text(size, "width"),
        height=None if size is None else _text(size, "height"),
        has_size=size is not None,
        objects=tuple(objects),
    )


def parse_voc_xml(path: str | Path) -> VocXml:
    """Read one VOC annotation file (hardened parser); :class:`DatasetError` naming the file if unusable."""
    path = Path(path)
    try:
        return _parse(path)
    except _BadFile as exc:
        raise DatasetError(f"{path}: {exc}") from None


def _size_from_xml(raw: VocXml) -> tuple[int, int] | str:
    """``(width, height)`` from <size>, or the reason it cannot be used."""
    if not raw.has_size:
        return "no <size> element"
    try:
        width, height = float(raw.width or ""), float(raw.height or "")
    except ValueError:
        return f"invalid <size> width={raw.width!r} height={raw.height!r}"
    if not (width >= 1 and height >= 1 and width.is_integer() and height.is_integer()):
        return f"invalid <size> width={raw.width!r} height={raw.height!r}"
    return int(width), int(height)


class VocFolder(Imdb):
    """A VOC-format folder with its own classes.

    Classes, in order of precedence: ``classes`` (a list; a leading ``__background__`` is optional),
    ``<root>/classes.txt`` (one name per line), or inferred from the names in **all** of
    ``Annotations/*.xml`` (sorted; logged — write a classes.txt to pin the order). ``split="all"`` uses
    every annotation file when there is no ImageSets folder. Object names are matched exactly, then
    case-insensitively when that is unambiguous (``lowercase_names`` lowercases them first, as
    py-faster-rcnn did for VOC).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        classes: Sequence[str] | None = None,
        *,
        name: str | None = None,
        use_diff: bool = False,
        strict: bool = False,
        use_07_metric: bool = False,
        lowercase_names: bool = False,
        image_exts: Sequence[str] = IMAGE_EXTS,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self._ann_dir = self.root / "Annotations"
        self._img_dir = self.root / "JPEGImages"
        self._lowercase = lowercase_names
        self._image_exts = tuple(image_exts)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        if not self._ann_dir.is_dir():
            raise DatasetError(f"{self.root} is not a VOC-format folder: it has no Annotations/ subfolder")
        self._split_file: Path | None = None
        self._ids = self._read_split()
        self._parsed: dict[str, VocXml] = {}
        self._class_file: Path | None = None
        if classes is not None:
            self.class_source = "explicit"
        elif (self.root / "classes.txt").is_file():
            self._class_file = self.root / "classes.txt"
            classes = read_class_file(self._class_file)
            self.class_source = "classes.txt"
        else:
            classes = self._infer_classes()
            self.class_source = "inferred"
        super().__init__(
            name or f"{self.root.name}_{split}",
            classes,
            use_diff=use_diff,
            strict=strict,
            use_07_metric=use_07_metric,
        )
        self._lookup = {c: i for i, c in enumerate(self.classes) if i > 0}
        lower = [c.lower() for c in self.classes[1:]]
        self._lookup_ci = {c.lower(): i for i, c in enumerate(self.classes) if i > 0 and lower.count(c.lower()) == 1}

    # -- construction helpers ----------------------------------------------------------------------------
    def _read_split(self) -> list[str]:
        split_file = self.root / "ImageSets" / "Main" / f"{self.split}.txt"
        if self.split == "all" and not split_file.is_file():
            self._split_file = None
            return sorted(p.stem for p in self._ann_dir.glob("*.xml"))
        self._split_file = split_file
        if not split_file.is_file():
            main = split_file.parent
            found = sorted(p.stem for p in main.glob("*.txt")) if main.is_dir() else []
            splits = [s for s in found if "_" not in s] or found
            close = difflib.get_close_matches(self.split, splits, n=1)
            hint = (f"did you mean {close[0]!r}? " if close else "") + (
                f"available: {', '.join(splits[:12])}" if splits else "no ImageSets/Main/*.txt at all"
            )
            raise DatasetError(
                f"image set file not found: {split_file} ({hint}"
                f"{'' if splits else '; split=all uses every annotation'})"
            )
        try:
            lines = split_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read image set file {split_file}: {exc}") from None
        return [line.strip() for line in lines if line.strip()]

    def _infer_classes(self) -> list[str]:
        names: set[str] = set()
        files = sorted(self._ann_dir.glob("*.xml"))
        for path in files:
            try:
                raw = _parse(path)
            except _BadFile:
                continue  # reported by the load if the file belongs to this split
            self._parsed[path.stem] = raw
            names.update(self._norm(o.name) for o in raw.objects if o.name)
        if not names:
            raise DatasetError(
                f"{self.root}: no object names in {len(files)} annotation file(s) to infer classes "
                "from; pass classes or write classes.txt"
            )
        classes = sorted(names)
        logger.info(
            "%s: %d classes inferred from %d annotation files (sorted; write classes.txt to pin them): %s",
            self.root,
            len(classes),
            len(files),
            ", ".join(classes),
        )
        return classes

    def _norm(self, name: str) -> str:
        return name.lower() if self._lowercase else name

    def _find_image(self, image_id: str, filename: str | None) -> Path | None:
        candidates = [self._img_dir / f"{image_id}.jpg"]
        if filename:
            candidates.append(self._img_dir / Path(filename).name)
        candidates += [self._img_dir / f"{image_id}{ext}" for ext in self._image_exts]
        return next((p for p in candidates if p.is_file()), None)

    # -- Imdb hooks --------------------------------------------------------------------------------------
    def _fingerprint_files(self) -> Iterable[Path]:
        files = [p for p in (self._split_file, self._class_file) if p is not None]
        if self.class_source == "inferred":
            files += sorted(self._ann_dir.glob("*.xml"))
        else:
            files += [self._ann_dir / f"{i}.xml" for i in self._ids]
        return [*files, self._img_dir]

    def _load(self, log: IssueLog) -> list[ImageAnnotation]:
        records: list[ImageAnnotation] = []
        seen: set[str] = set()
        for image_id in self._ids:
            if image_id in seen:
                log.add(
                    self._split_file or self._ann_dir,
                    f"image id {image_id!r} listed twice; kept once",
                    "duplicate_id",
                    "info",
                )
                continue
            seen.add(image_id)
            record = self._load_one(image_id, log)
            if record is not None:
                records.append(record)
        self._parsed.clear()
        return records

    def _load_one(self, image_id: str, log: IssueLog) -> ImageAnnotation | None:
        xml_path = self._ann_dir / f"{image_id}.xml"
        raw = self._parsed.get(image_id)
        if raw is None:
            if not xml_path.is_file():
                log.add(
                    xml_path,
                    f"annotation file not found for image id {image_id!r}; image skipped",
                    "missing_annotation",
                )
                return None
            try:
                raw = _parse(xml_path)
            except _BadFile as exc:
                log.add(xml_path, f"{exc}; image skipped", "malformed_file")
                return None
        image = self._find_image(image_id, raw.filename)
        if image is None:
            log.add(
                self._img_dir / f"{image_id}.jpg",
                f"image file not found (annotation {xml_path.name}); image skipped",
                "missing_image",
            )
            return None
        size = _size_from_xml(raw)
        if isinstance(size, str):
            reason = size
            try:
                size = image_size(image)
            except ImageError as exc:
                log.add(
                    image,
                    f"{reason} in {xml_path.name} and the image header is unreadable ({exc}); image skipped",
                    "unreadable_image",
                )
                return None
            log.add(
                xml_path,
                f"{reason}; size {size[0]}x{size[1]} taken from the image header {image.name}",
                "missing_size",
                "warning",
            )
        width, height = size
        objects = []
        for k, obj in enumerate(raw.objects, start=1):
            parsed = self._parse_object(obj, k, xml_path, width, height, log)
            if parsed is not None:
                objects.append(parsed)
        if not objects:
            detail = f"all {len(raw.objects)} objects skipped" if raw.objects else "no <object> elements"
            log.add(xml_path, f"image has no usable objects ({detail}); kept", "no_objects", "info")
        return make_annotation(image_id, image, width, height, objects)

    def _parse_object(
        self, obj: VocObject, k: int, xml_path: Path, width: int, height: int, log: IssueLog
    ) -> tuple[tuple[float, float, float, float], int, bool] | None:
        """One ``<object>``: ``(0-based clipped box, class index, difficult)``, or None (the reason logged)."""
        if not obj.name:
            log.add(xml_path, f"object {k} has no <name>; skipped", "missing_field")
            return None
        name = self._norm(obj.name)
        what = f"object {k} ({name!r})"
        cls = self._class_index(name, k, xml_path, log)
        if cls is None:
            return None
        difficult = _parse_difficult(obj.difficult, what, xml_path, log)
        if difficult is None:
            return None
        if obj.bndbox is None:
            log.add(xml_path, f"{what} has no <bndbox>; skipped", "missing_field")
            return None
        values = _parse_coords(obj.bndbox, what, xml_path, log)
        if values is None:
            return None
        xmin, ymin, xmax, ymax = values
        box = clip_box((xmin - 1, ymin - 1, xmax - 1, ymax - 1), width, height, file=xml_path, what=what, log=log)
        if box is None:
            return None
        return box, cls, difficult

    def _class_index(self, name: str, k: int, xml_path: Path, log: IssueLog) -> int | None:
        cls = self._lookup.get(name) or self._lookup_ci.get(name.lower())
        if cls is None:
            close = difflib.get_close_matches(name, self.classes[1:], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            log.add(
                xml_path,
                f"unknown class {name!r} (object {k}); skipped — {hint}classes are {', '.join(self.classes[1:])}",
                "unknown_class",
            )
        return cls


def _parse_difficult(text: str | None, what: str, xml_path: Path, log: IssueLog) -> bool | None:
    """``<difficult>`` as a flag (absent or empty: False); None (logged) when it is not a number."""
    if not text:
        return False
    try:
        return int(float(text)) != 0
    except ValueError:
        log.add(xml_path, f"{what}: non-numeric <difficult> {text!r}; skipped", "bad_value")
        return None


def _parse_coords(
    bndbox: Mapping[str, str | None], what: str, xml_path: Path, log: IssueLog
) -> tuple[float, float, float, float] | None:
    """``<bndbox>``'s 1-based ``(xmin, ymin, xmax, ymax)``; None (logged) when one is missing or not a finite
    number, or the box is inverted or has zero area."""
    values = []
    for key in _COORDS:
        text = bndbox[key]
        if not text:
            log.add(xml_path, f"{what}: <{key}> missing or empty; skipped", "missing_field")
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            log.add(xml_path, f"{what}: non-numeric coordinate {key}={text!r}; skipped", "bad_value")
            return None
        values.append(value)
    xmin, ymin, xmax, ymax = values
    coords = f"xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}"
    if xmax < xmin or ymax < ymin:
        log.add(
            xml_path,
            f"{what}: inverted box {coords} (xmax < xmin or ymax < ymin); skipped",
            "inverted_box",
        )
        return None
    if xmax == xmin or ymax == ymin:
        log.add(xml_path, f"{what}: zero-area box {coords}; skipped", "zero_area_box")
        return None
    return xmin, ymin, xmax, ymax


def _devkit_root(year: str, data_root: Path) -> Path:
    """``<data_root>/VOCdevkit<year>/VOC<year>`` (py-faster-rcnn), else the tarball's layout."""
    candidates = [data_root / f"VOCdevkit{year}" / f"VOC{year}", data_root / "VOCdevkit" / f"VOC{year}"]
    for c in candidates:
        if c.is_dir():
            return c
    raise DatasetError(
        f"PASCAL VOC {year} not found: looked for {candidates[0]} and {candidates[1]}. Extract the "
        f"VOC {year} tarballs under {data_root} (py-faster-rcnn: a symlink {candidates[0].parent} -> "
        "VOCdevkit), or pass another data root"
    )


class PascalVoc(VocFolder):
    """``voc_<year>_<split>``: the 20 VOC classes in py-faster-rcnn's order, lowercased names, ``.jpg``.

    ``use_07_metric`` is ``year < 2010`` (VOC2007's 11-point AP), as in py-faster-rcnn.
    """

    def __init__(
        self,
        year: str | int,
        split: str,
        data_root: str | Path = "data",
        *,
        use_diff: bool = False,
        strict: bool = False,
    ) -> None:
        self.year = str(year)
        if not (self.year.isdigit() and len(self.year) == 4):
            raise DatasetError(f"VOC year must be four digits such as 2007 or 2012, got {year!r}")
        root = _devkit_root(self.year, Path(data_root))
        super().__init__(
            root,
            split,
            VOC_CLASSES,
            name=f"voc_{self.year}_{split}",
            use_diff=use_diff,
            strict=strict,
            use_07_metric=int(self.year) < 2010,
            lowercase_names=True,
            image_exts=(".jpg",),
        )
