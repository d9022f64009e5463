"""Image databases (py-faster-rcnn's ``imdb``): one dataset's images and ground truth.

An :class:`Imdb` lists images and their annotations; :mod:`frcnn_trt.data.roidb` turns it into training
records. Boxes are float ``[G, 4]`` x1, y1, x2, y2 in 0-based inclusive pixels (py-faster-rcnn's convention:
VOC XML coordinates minus one). Class index 0 is ``__background__``.

Bad input does not take a dataset down: each problem becomes a :class:`DatasetIssue` (file, message, kind,
severity) on ``imdb.issues``, the record or object is skipped or repaired, and one summary line is logged.
With ``strict=True`` the first problem that drops or changes data raises :class:`DatasetError` instead.
Severities: ``error`` (a record or object was dropped), ``warning`` (data was repaired: a box clipped, a size
read from the image header), ``info`` (worth knowing, nothing changed: an image with no objects).

Glossary: G objects in one image, K object classes (``num_classes = K + 1`` with the background).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from frcnn_trt.errors import DatasetError
from frcnn_trt.files import read_text, short

__all__ = [
    "BACKGROUND",
    "MAX_CLASS_NAME",
    "MAX_COORDINATE",
    "MAX_IMAGE_SIDE",
    "MAX_OBJECTS_PER_IMAGE",
    "CombinedImdb",
    "DatasetIssue",
    "ImageAnnotation",
    "Imdb",
    "IssueLog",
    "clip_box",
    "normalize_classes",
    "read_class_file",
]

logger = logging.getLogger(__name__)

BACKGROUND = "__background__"

# Bump when a parser change alters what annotations() returns: it is part of every fingerprint, so roidb
# caches built by an older parser are rebuilt.
ANNOTATION_SCHEMA = 2

# A box edge past the image by at most this much (float rounding in COCO-style annotations) is clipped
# without an issue; VOC's classic "xmin = 0" (one whole pixel out) is reported.
SUBPIXEL_TOLERANCE = 0.5

# Limits on what one annotation may claim. A record past them is skipped and reported, never trusted: an image
# side or coordinate this large would overflow float32 boxes to inf downstream, a class name this long or this
# many objects in one image is a broken file, not a dataset.
#: the longest class name accepted (characters)
MAX_CLASS_NAME = 256
#: the largest image width/height an annotation may state (pixels); larger is read from the image header
MAX_IMAGE_SIDE = 1 << 20
#: the largest absolute box coordinate accepted (pixels; float32 holds every integer up to 2**24 exactly)
MAX_COORDINATE = float(1 << 24)
#: the most objects one image may have; an image with more is skipped
MAX_OBJECTS_PER_IMAGE = 10_000

Severity = Literal["error", "warning", "info"]

_UNKNOWN_CLASS = re.compile(r"unknown class (['\"])(.*?)\1")


@dataclass(frozen=True)
class ImageAnnotation:
    """Ground truth of one image, difficult objects included (``difficult`` flags them)."""

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [G, 4], 0-based inclusive
    classes: np.ndarray  # int64 [G], 1..K
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # bool [G]

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True)
class DatasetIssue:
    """One problem found while reading a dataset: which file, what, of which kind and how bad."""

    file: str
    message: str
    kind: str  # e.g. "malformed_file", "missing_image", "clipped_box", "unknown_class", "no_objects"
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


class IssueLog:
    """Collects the issues of one dataset load; raises at once in strict mode (except ``info``)."""

    def __init__(self, dataset: str, *, strict: bool) -> None:
        self.dataset = dataset
        self.strict = strict
        self.issues: list[DatasetIssue] = []

    def add(self, file: str | Path, message: str, kind: str, severity: Severity = "error") -> None:
        issue = DatasetIssue(str(file), message, kind, severity)
        if self.strict and severity != "info":
            raise DatasetError(f"{issue} [dataset {self.dataset}, strict mode]")
        logger.debug("%s: %s", self.dataset, issue)
        self.issues.append(issue)

    def log_summary(self, num_images: int) -> None:
        """One warning line for the whole load (not one line per problem)."""
        problems = [i for i in self.issues if i.severity != "info"]
        infos = [i for i in self.issues if i.severity == "info"]
        if problems:
            counts = Counter(i.kind for i in problems)
            kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.most_common())
            files = len({i.file for i in problems})
            unknown = sorted(
                {m.group(2) for i in problems if i.kind == "unknown_class" and (m := _UNKNOWN_CLASS.search(i.message))}
            )
            extra = f"; unknown classes: {', '.join(unknown)}" if unknown else ""
            logger.warning(
                "%s: %d annotation problem(s) in %d file(s) (%s%s); first: %s — `data inspect` lists all",
                self.dataset,
                len(problems),
                files,
                kinds,
                extra,
                problems[0],
            )
        if infos:
            counts = Counter(i.kind for i in infos)
            kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.most_common())
            logger.info("%s: %s (of %d images)", self.dataset, kinds, num_images)


def class_name_problem(name: str) -> str | None:
    """Why ``name`` (stripped) cannot be a class name, or None: empty, too long, a control character."""
    if not name:
        return "empty class name"
    if len(name) > MAX_CLASS_NAME:
        return f"class name of {len(name)} characters (the limit is {MAX_CLASS_NAME}): {short(name)}"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"class name {short(name)} holds a control character"
    return None


def normalize_classes(classes: Iterable[str], *, source: str) -> tuple[str, ...]:
    """Class names → ``("__background__", c1, ..., cK)``; a leading background entry is accepted."""
    names = [c.strip() if isinstance(c, str) else str(c).strip() for c in classes]
    if names and names[0] == BACKGROUND:
        names = names[1:]
    if not names:
        raise DatasetError(f"{source}: no object classes given")
    for k, c in enumerate(names, start=1):
        problem = class_name_problem(c)
        if problem is not None:
            raise DatasetError(f"{source}: class {k}: invalid {problem}")
        if c == BACKGROUND:
            raise DatasetError(f"{source}: invalid class name {c!r} ({BACKGROUND!r} may only come first)")
    dupes = sorted(c for c, n in Counter(names).items() if n > 1)
    if dupes:
        raise DatasetError(f"{source}: duplicate class name(s) {short(', '.join(map(repr, dupes)), 300)}")
    return (BACKGROUND, *names)


def read_class_file(path: Path) -> list[str]:
    """A ``classes.txt``: one class per line; blank lines and ``#`` comments ignored.

    The file is read through :mod:`frcnn_trt.files` (regular files only, size limit, byte-order mark removed).
    An undecodable line or an invalid name is a :class:`DatasetError` naming the file and line, not a skipped
    line: the classes' order is the model's output order, so leaving one out would shift every later class.
    """
    names: list[str] = []
    for number_, line in enumerate(read_text(path, "class list").splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        problem = class_name_problem(name)
        if problem is not None:
            raise DatasetError(f"{path}:{number_}: {problem}")
        names.append(name)
    return names


def clip_box(
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    *,
    file: str | Path,
    what: str,
    log: IssueLog,
) -> tuple[float, float, float, float] | None:
    """Clip a valid (x2 ≥ x1, y2 ≥ y1) 0-based inclusive box to the image; ``None`` if wholly outside."""
    x1, y1, x2, y2 = box
    if x1 > width - 1 or y1 > height - 1 or x2 < 0 or y2 < 0:
        log.add(
            file,
            f"{what}: box {_fmt_box(box)} lies outside the {width}x{height} image; skipped",
            "outside_box",
        )
        return None
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, width - 1.0), min(y2, height - 1.0))
    overshoot = max(abs(a - b) for a, b in zip(clipped, box, strict=True))
    if overshoot > SUBPIXEL_TOLERANCE:
        log.add(
            file,
            f"{what}: box {_fmt_box(box)} extends past the {width}x{height} image; clipped to {_fmt_box(clipped)}",
            "clipped_box",
            "warning",
        )
    return clipped


def _fmt_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "] (0-based)"


def make_annotation(
    image_id: str,
    path: Path,
    width: int,
    height: int,
    objects: Sequence[tuple[tuple[float, float, float, float], int, bool]],
) -> ImageAnnotation:
    """Pack ``(box, class index, difficult)`` triples into an :class:`ImageAnnotation`."""
    boxes = np.array([o[0] for o in objects], dtype=np.float32).reshape(-1, 4)
    classes = np.array([o[1] for o in objects], dtype=np.int64)
    difficult = np.array([o[2] for o in objects], dtype=bool)
    return ImageAnnotation(image_id, path, int(width), int(height), boxes, classes, difficult)


def file_stats(paths: Iterable[Path]) -> list[list[object]]:
    """``[path, size, mtime_ns]`` per file (``[path, None, None]`` when it is missing) for fingerprints."""
    out: list[list[object]] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append([str(p), st.st_size, st.st_mtime_ns])
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            out.append([str(p), None, None])
    return out


class Imdb(ABC):
    """One dataset: names, classes, image ids and per-image ground truth (loaded once, on first use).

    Subclasses implement :meth:`_load` (returning the records, adding problems to the given
    :class:`IssueLog`) and :meth:`_fingerprint_files`.
    """

    def __init__(
        self,
        name: str,
        classes: Iterable[str],
        *,
        use_diff: bool = False,
        strict: bool = False,
        use_07_metric: bool = False,
    ) -> None:
        self._name = name
        self._classes = normalize_classes(classes, source=name)
        self.use_diff = use_diff  # the roidb keeps difficult objects only when True (py-faster-rcnn)
        self.strict = strict
        self.use_07_metric = use_07_metric  # VOC07 11-point AP (py-faster-rcnn: year < 2010)
        self._records: list[ImageAnnotation] | None = None
        self._issues: list[DatasetIssue] = []

    # -- names and classes -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, index 0 = ``__background__``."""
        return self._classes

    @property
    def num_classes(self) -> int:
        """K + 1 (background included), as py-faster-rcnn's ``imdb.num_classes``."""
        return len(self._classes)

    @property
    def class_to_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self._classes)}

    # -- images and ground truth -------------------------------------------------------------------------
    def annotations(self) -> list[ImageAnnotation]:
        """Ground truth of every usable image, in image-set order; difficult objects included and flagged."""
        if self._records is None:
            log = IssueLog(self._name, strict=self.strict)
            records = self._load(log)
            self._issues = log.issues
            self._records = records
            log.log_summary(len(records))
        return list(self._records)

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.annotations()]

    @property
    def num_images(self) -> int:
        return len(self.annotations())

    def image_path(self, i: int) -> Path:
        """Path of image ``i`` (an index into :attr:`image_ids`)."""
        return self.annotations()[i].path

    @property
    def issues(self) -> list[DatasetIssue]:
        """Problems found while loading (loads the annotations if needed)."""
        self.annotations()
        return list(self._issues)

    def __repr__(self) -> str:
        loaded = f"{len(self._records)} images" if self._records is not None else "not loaded"
        return f"{type(self).__name__}({self._name!r}, {self.num_classes - 1} classes, {loaded})"

    # -- cache key ---------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """SHA-256 of what determines :meth:`annotations` and the roidb built from it.

        Covers the parser version, name, classes, ``use_diff`` and every source file's path, size and
        mtime (annotation files, image-set file, class list, image folder), so editing, adding or removing
        an annotation changes it. Files are only stat'ed, not read.
        """
        payload = {
            "schema": ANNOTATION_SCHEMA,
            "type": type(self).__name__,
            "name": self._name,
            "classes": list(self._classes),
            "use_diff": self.use_diff,
            "files": file_stats(self._fingerprint_files()),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    # -- subclass hooks ----------------------------------------------------------------------------------
    @abstractmethod
    def _load(self, log: IssueLog) -> list[ImageAnnotation]:
        """The dataset's records; problems go to ``log`` (which raises in strict mode)."""

    @abstractmethod
    def _fingerprint_files(self) -> Iterable[Path]:
        """The files whose paths, sizes and mtimes identify this dataset's content (cache invalidation)."""


class CombinedImdb(Imdb):
    """Several imdbs with the same classes, concatenated (py-faster-rcnn's ``a+b`` training sets).

    Image ids are kept as the parts give them (VOC 2007 and 2012 ids do not collide). ``use_07_metric``
    is True only when every part uses it.
    """

    def __init__(self, parts: Sequence[Imdb], name: str | None = None) -> None:
        if not parts:
            raise DatasetError("a combined dataset needs at least one part")
        first = parts[0]
        for part in parts[1:]:
            if part.classes != first.classes:
                only_a = [c for c in first.classes if c not in part.classes]
                only_b = [c for c in part.classes if c not in first.classes]
                detail = (
                    f"only in {first.name}: {only_a}; only in {part.name}: {only_b}"
                    if only_a or only_b
                    else "same names in a different order"
                )
                raise DatasetError(f"cannot combine {first.name} and {part.name}: their classes differ ({detail})")
            if part.use_diff != first.use_diff:
                raise DatasetError(f"cannot combine {first.name} and {part.name}: use_diff differs")
        super().__init__(
            name or "+".join(p.name for p in parts),
            first.classes,
            use_diff=first.use_diff,
            strict=any(p.strict for p in parts),
            use_07_metric=all(p.use_07_metric for p in parts),
        )
        self.parts = list(parts)

    def _load(self, log: IssueLog) -> list[ImageAnnotation]:
        records: list[ImageAnnotation] = []
        for part in self.parts:
            records.extend(part.annotations())
            log.issues.extend(part.issues)
        return records

    def annotations(self) -> list[ImageAnnotation]:
        if self._records is None:  # the parts log their own summaries
            log = IssueLog(self._name, strict=False)
            self._records = self._load(log)
            self._issues = log.issues
        return list(self._records)

    def fingerprint(self) -> str:
        payload = {
            "schema": ANNOTATION_SCHEMA,
            "name": self._name,
            "parts": [p.fingerprint() for p in self.parts],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _fingerprint_files(self) -> Iterable[Path]:
        return []
