"""One PASCAL VOC annotation file: bytes → text fields (:func:`parse_voc_xml`) → checked values.

The file is read through :mod:`frcnn_trt.files` (regular files only — a FIFO never blocks —, a size limit) and
parsed with ``defusedxml`` (no entity expansion, no external references). Every way a file can be unusable
(truncated, not XML, an unknown or multi-byte ``encoding=`` declaration, unsafe constructs, the wrong root
element) is one reason string; every way a field can be wrong (missing, not a number, inf/NaN, out of range)
is one reason for that object. Numerics of good files are py-faster-rcnn's (docs/REFERENCE.md: 1-based
inclusive pixel corners; the caller subtracts one).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET

from frcnn_trt.data.imdb import MAX_COORDINATE, MAX_IMAGE_SIDE
from frcnn_trt.errors import DatasetError
from frcnn_trt.files import read_bytes, short

__all__ = [
    "COORDS",
    "MAX_XML_BYTES",
    "BadAnnotationFile",
    "FieldProblem",
    "VocObject",
    "VocXml",
    "coords_from_xml",
    "difficult_from_xml",
    "parse_voc_xml",
    "read_voc_xml",
    "size_from_xml",
]

#: the largest annotation file read (a VOC XML is a few kB; 10,000 objects fit in about 3 MB)
MAX_XML_BYTES = 8 << 20

COORDS = ("xmin", "ymin", "xmax", "ymax")

_XML_FAULTS = (ET.ParseError, defusedxml.DefusedXmlException, LookupError, ValueError, UnicodeError, RecursionError)


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


@dataclass(frozen=True)
class FieldProblem:
    """Why one object of a file is unusable: the issue kind and the reason."""

    kind: str
    reason: str


class BadAnnotationFile(Exception):
    """An annotation file that cannot be used at all (the message is the reason, without the path)."""


def _text(elem: ET.Element, tag: str) -> str | None:
    child = elem.find(tag)
    if child is None:
        return None
    return (child.text or "").strip()


def _fault(exc: BaseException) -> str:
    if isinstance(exc, ET.ParseError):
        return f"malformed or truncated XML ({exc})"
    if isinstance(exc, defusedxml.DefusedXmlException):
        return f"XML rejected as unsafe ({type(exc).__name__}: {exc})"
    if isinstance(exc, LookupError):
        return f"XML declares an encoding Python does not know ({short(str(exc), 120)})"
    if isinstance(exc, RecursionError):
        return "XML nests too deeply to read"
    return f"XML cannot be decoded ({short(str(exc), 120)})"


def read_voc_xml(path: Path) -> VocXml:
    """The text fields of one annotation file; :class:`BadAnnotationFile` (reason without the path) if unusable."""
    try:
        data = read_bytes(path, "VOC annotation", MAX_XML_BYTES)
    except DatasetError as exc:
        message = str(exc)  # "<path>: <reason>": the caller names the file itself
        for prefix in (f"{path}: ", f"{short(str(path), 200)}: "):
            message = message.removeprefix(prefix)
        raise BadAnnotationFile(message) from None
    try:
        root = SafeET.fromstring(data)
    except _XML_FAULTS as exc:
        raise BadAnnotationFile(_fault(exc)) from None
    if root.tag != "annotation":
        tag = root.tag if len(root.tag) <= 40 else root.tag[:37] + "..."
        raise BadAnnotationFile(f"not a VOC annotation: root element is <{tag}>, expected <annotation>")
    size = root.find("size")
    objects = []
    for obj in root.iterfind("object"):
        bndbox = obj.find("bndbox")
        coords = None if bndbox is None else {k: _text(bndbox, k) for k in COORDS}
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
        return read_voc_xml(path)
    except BadAnnotationFile as exc:
        raise DatasetError(f"{path}: {exc}") from None


def _float(text: str) -> float:
    """``float(text)``, NaN where it is not a number."""
    try:
        return float(text)
    except (ValueError, OverflowError):
        return math.nan


def size_from_xml(raw: VocXml) -> tuple[int, int] | str:
    """``(width, height)`` from <size>, or the reason it cannot be used (missing, not a whole number >= 1,
    over :data:`~frcnn_trt.data.imdb.MAX_IMAGE_SIDE`)."""
    if not raw.has_size:
        return "no <size> element"
    width, height = _float(raw.width or ""), _float(raw.height or "")
    bad = f"invalid <size> width={short(raw.width, 40)} height={short(raw.height, 40)}"
    if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):  # NaN fails both
        return bad
    if not (width.is_integer() and height.is_integer()):
        return bad
    return int(width), int(height)


def difficult_from_xml(text: str | None) -> bool | str:
    """``<difficult>`` as a flag (absent or empty: False), or the reason it is unusable (not a finite number).

    A finite number is read as py-faster-rcnn's ``int(...) != 0`` did for integers (``0.5`` → not difficult).
    """
    if not text:
        return False
    value = _float(text)
    if not math.isfinite(value):
        return f"<difficult> {short(text, 40)} is not a finite number"
    return int(value) != 0


def coords_from_xml(bndbox: Mapping[str, str | None]) -> tuple[float, float, float, float] | FieldProblem:
    """``<bndbox>``'s 1-based ``(xmin, ymin, xmax, ymax)``, or why it is unusable: missing, not a finite
    number, beyond :data:`~frcnn_trt.data.imdb.MAX_COORDINATE`, inverted or of zero area."""
    values = []
    for key in COORDS:
        text = bndbox[key]
        if not text:
            return FieldProblem("missing_field", f"<{key}> missing or empty")
        value = _float(text)
        if not math.isfinite(value):
            return FieldProblem("bad_value", f"coordinate {key}={short(text, 40)} is not a finite number")
        if abs(value) > MAX_COORDINATE:
            return FieldProblem("bad_value", f"coordinate {key}={short(text, 40)} is out of range "
                                f"(|value| > {MAX_COORDINATE:g})")
        values.append(value)
    xmin, ymin, xmax, ymax = values
    coords = f"xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}"
    if xmax < xmin or ymax < ymin:
        return FieldProblem("inverted_box", f"inverted box {coords} (xmax < xmin or ymax < ymin)")
    if xmax == xmin or ymax == ymin:
        return FieldProblem("zero_area_box", f"zero-area box {coords}")
    return xmin, ymin, xmax, ymax
