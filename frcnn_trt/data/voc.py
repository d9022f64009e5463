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
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from frcnn_trt.data.images import image_size
from frcnn_trt.data.imdb import (
    BACKGROUND,
    MAX_OBJECTS_PER_IMAGE,
    ImageAnnotation,
    Imdb,
    IssueLog,
    class_name_problem,
    clip_box,
    make_annotation,
    normalize_classes,
    read_class_file,
)
from frcnn_trt.data.voc_xml import (
    BadAnnotationFile,
    FieldProblem,
    VocObject,
    VocXml,
    coords_from_xml,
    difficult_from_xml,
    parse_voc_xml,
    read_voc_xml,
    size_from_xml,
)
from frcnn_trt.errors import DatasetError, ImageError
from frcnn_trt.files import confined, read_lines, short

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

def _exists(path: Path) -> bool:
    """Whether anything (a file, a FIFO, a dangling link) is at ``path``; False for an unusable name."""
    return os.path.lexists(path)  # catches the OSError of a too-long name and the ValueError of a NUL byte


def _id_problem(image_id: str, ann_dir: Path) -> str | None:
    """Why ``image_id`` cannot name files (a NUL byte, ``..``/absolute, longer than a file name may be)."""
    try:
        confined(ann_dir, f"{image_id}.xml", "image id")
    except DatasetError as exc:
        return str(exc).removeprefix("image id: ")
    if any(len(part.encode("utf-8", "surrogateescape")) > 250 for part in image_id.replace("\\", "/").split("/")):
        return f"image id of {len(image_id)} characters is longer than a file name may be"
    return None


class VocFolder(Imdb):
    """A VOC-format folder with its own classes.

    Classes, in order of precedence: ``classes`` (a list; a leading ``__background__`` is optional),
    ``<root>/classes.txt`` (one name per line), or inferred from the names in **all** of
    ``Annotations/*.xml`` (sorted; logged — write a classes.txt to pin the order). ``split="all"`` uses
    every annotation file when there is no ImageSets folder. Object names are matched exactly, then
    case-insensitively when that is unambiguous (``lowercase_names`` lowercases them first, as
    py-faster-rcnn did for VOC).

    Every file is read through :mod:`frcnn_trt.files`: an image-set line that is not UTF-8, an id that cannot
    name a file, an unreadable or malformed annotation, an object with a bad field and an image with more than
    :data:`~frcnn_trt.data.imdb.MAX_OBJECTS_PER_IMAGE` objects are each skipped and reported as issues.
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
        if not os.path.isdir(self.root):
            raise DatasetError(f"dataset folder not found: {short(str(self.root), 200)}")
        if not os.path.isdir(self._ann_dir):
            raise DatasetError(f"{self.root} is not a VOC-format folder: it has no Annotations/ subfolder")
        self._split_file: Path | None = None
        self._split_problems: list[str] = []
        self._ids = self._read_split()
        self._parsed: dict[str, VocXml] = {}
        self._class_file: Path | None = None
        if classes is not None:
            self.class_source = "explicit"
        elif _exists(self.root / "classes.txt"):  # a FIFO or folder there is refused by the reader, not ignored
            self._class_file = self.root / "classes.txt"
            classes = normalize_classes(read_class_file(self._class_file), source=str(self._class_file))
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
        lower = Counter(c.lower() for c in self.classes[1:])
        self._lookup_ci = {c.lower(): i for i, c in enumerate(self.classes) if i > 0 and lower[c.lower()] == 1}
        self._hints: dict[str, str] = {}

    # -- construction helpers ----------------------------------------------------------------------------
    def _read_split(self) -> list[str]:
        split_file = self.root / "ImageSets" / "Main" / f"{self.split}.txt"
        if self.split == "all" and not _exists(split_file):
            self._split_file = None
            return sorted(p.stem for p in self._ann_dir.glob("*.xml"))
        self._split_file = split_file
        if not _exists(split_file):
            raise DatasetError(self._missing_split_message(split_file))
        lines, self._split_problems = read_lines(split_file, "image set file")
        return [line.strip() for line in lines if line.strip()]

    def _missing_split_message(self, split_file: Path) -> str:
        main = split_file.parent
        found = sorted(p.stem for p in main.glob("*.txt")) if main.is_dir() else []
        splits = [s for s in found if "_" not in s] or found
        close = difflib.get_close_matches(self.split, splits, n=1)
        hint = (f"did you mean {close[0]!r}? " if close else "") + (
            f"available: {', '.join(splits[:12])}" if splits else "no ImageSets/Main/*.txt at all"
        )
        return f"image set file not found: {split_file} ({hint}{'' if splits else '; split=all uses every annotation'})"

    def _infer_classes(self) -> list[str]:
        names: set[str] = set()
        files = sorted(self._ann_dir.glob("*.xml"))
        for path in files:
            try:
                raw = read_voc_xml(path)
            except BadAnnotationFile:
                continue  # reported by the load if the file belongs to this split
            self._parsed[path.stem] = raw
            names.update(self._norm(o.name) for o in raw.objects if o.name)
        names = {n for n in names if n != BACKGROUND and class_name_problem(n) is None}  # others: unknown, reported
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
            ", ".join(classes[:100]) + (f", ... ({len(classes)} in all)" if len(classes) > 100 else ""),
        )
        return classes

    def _norm(self, name: str) -> str:
        return name.lower() if self._lowercase else name

    def _find_image(self, image_id: str, filename: str | None) -> Path | None:
        candidates = [self._img_dir / f"{image_id}.jpg"]
        if filename and "\x00" not in filename:
            candidates.append(self._img_dir / Path(filename).name)
        candidates += [self._img_dir / f"{image_id}{ext}" for ext in self._image_exts]
        return next((p for p in candidates if os.path.isfile(p)), None)

    # -- Imdb hooks --------------------------------------------------------------------------------------
    def _fingerprint_files(self) -> Iterable[Path]:
        files = [p for p in (self._split_file, self._class_file) if p is not None]
        if self.class_source == "inferred":
            files += sorted(self._ann_dir.glob("*.xml"))
        else:
            files += [self._ann_dir / f"{i}.xml" for i in self._ids if _id_problem(i, self._ann_dir) is None]
        return [*files, self._img_dir]

    def _load(self, log: IssueLog) -> list[ImageAnnotation]:
        for problem in self._split_problems:
            file, _, message = problem.rpartition(": ")
            log.add(file, message, "bad_line")
        records: list[ImageAnnotation] = []
        seen: set[str] = set()
        where = self._split_file or self._ann_dir
        for image_id in self._ids:
            if image_id in seen:
                log.add(where, f"image id {short(image_id)} listed twice; kept once", "duplicate_id", "info")
                continue
            seen.add(image_id)
            id_problem = _id_problem(image_id, self._ann_dir)
            if id_problem is not None:
                log.add(where, f"{id_problem}; line skipped", "bad_id")
                continue
            record = self._load_one(image_id, log)
            if record is not None:
                records.append(record)
        self._parsed.clear()
        return records

    def _raw(self, image_id: str, xml_path: Path, log: IssueLog) -> VocXml | None:
        """The parsed annotation of ``image_id`` (read now unless class inference read it), None if unusable."""
        raw = self._parsed.get(image_id)
        if raw is not None:
            return raw
        if not _exists(xml_path):
            log.add(xml_path, f"annotation file not found for image id {image_id!r}; image skipped",
                    "missing_annotation")
            return None
        try:
            return read_voc_xml(xml_path)
        except BadAnnotationFile as exc:
            log.add(xml_path, f"{exc}; image skipped", "malformed_file")
            return None

    def _size(self, raw: VocXml, image: Path, xml_path: Path, log: IssueLog) -> tuple[int, int] | None:
        """``(width, height)`` from <size>, else from the image header (a warning), else None (reported)."""
        size = size_from_xml(raw)
        if not isinstance(size, str):
            return size
        try:
            header = image_size(image)
        except ImageError as exc:
            log.add(image, f"{size} in {xml_path.name} and the image header is unreadable ({exc}); image skipped",
                    "unreadable_image")
            return None
        log.add(xml_path, f"{size}; size {header[0]}x{header[1]} taken from the image header {image.name}",
                "missing_size", "warning")
        return header

    def _load_one(self, image_id: str, log: IssueLog) -> ImageAnnotation | None:
        xml_path = self._ann_dir / f"{image_id}.xml"
        raw = self._raw(image_id, xml_path, log)
        if raw is None:
            return None
        if len(raw.objects) > MAX_OBJECTS_PER_IMAGE:
            log.add(xml_path, f"{len(raw.objects)} objects, over the limit of {MAX_OBJECTS_PER_IMAGE} per image; "
                    "image skipped", "too_many_objects")
            return None
        image = self._find_image(image_id, raw.filename)
        if image is None:
            log.add(self._img_dir / f"{image_id}.jpg", f"image file not found (annotation {xml_path.name}); "
                    "image skipped", "missing_image")
            return None
        size = self._size(raw, image, xml_path, log)
        if size is None:
            return None
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
        what = f"object {k} ({short(name)})"
        cls = self._class_index(name, k, xml_path, log)
        if cls is None:
            return None
        difficult = difficult_from_xml(obj.difficult)
        if isinstance(difficult, str):
            log.add(xml_path, f"{what}: {difficult}; skipped", "bad_value")
            return None
        if obj.bndbox is None:
            log.add(xml_path, f"{what} has no <bndbox>; skipped", "missing_field")
            return None
        values = coords_from_xml(obj.bndbox)
        if isinstance(values, FieldProblem):
            log.add(xml_path, f"{what}: {values.reason}; skipped", values.kind)
            return None
        xmin, ymin, xmax, ymax = values
        box = clip_box((xmin - 1, ymin - 1, xmax - 1, ymax - 1), width, height, file=xml_path, what=what, log=log)
        if box is None:
            return None
        return box, cls, difficult

    def _class_index(self, name: str, k: int, xml_path: Path, log: IssueLog) -> int | None:
        cls = self._lookup.get(name) or self._lookup_ci.get(name.lower())
        if cls is None:
            log.add(xml_path, f"unknown class {short(name)} (object {k}); skipped — {self._hint(name)}",
                    "unknown_class")
        return cls

    def _hint(self, name: str) -> str:
        """``did you mean ...? classes are ...`` for an unknown name (computed once per name; no fuzzy search
        over a huge name or class list, which would cost seconds per object)."""
        if name not in self._hints:
            names = self.classes[1:]
            close = (difflib.get_close_matches(name, names, n=1)
                     if len(name) <= 64 and len(names) <= 1000 else [])
            listed = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
            self._hints[name] = (f"did you mean {close[0]!r}? " if close else "") + f"classes are {listed}"
        return self._hints[name]


def _devkit_root(year: str, data_root: Path) -> Path:
    """``<data_root>/VOCdevkit<year>/VOC<year>`` (py-faster-rcnn), else the tarball's layout."""
    candidates = [data_root / f"VOCdevkit{year}" / f"VOC{year}", data_root / "VOCdevkit" / f"VOC{year}"]
    for c in candidates:
        if os.path.isdir(c):
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
