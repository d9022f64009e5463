"""Detections of a whole image set, and the files they travel in.

Glossary: D detections (of one image, or of a whole file), K classes (``class_names[1:]``; index 0 is
``__background__``). Boxes are float64 ``[D, 4]`` x1, y1, x2, y2 in 0-based inclusive pixels of the
original image (py-faster-rcnn's +1 geometry: width = x2 - x1 + 1); scores float64 ``[D]``; classes
int64 ``[D]`` in 1..K.

Three file formats, each with a reader and a writer:

- **py-faster-rcnn per-class results files** (``pascal_voc.py:_write_voc_results_file``): one file per
  class, ``{comp_id}_det_{image_set}_{class}.txt``, lines ``"{id} {score:.3f} {x1+1:.1f} {y1+1:.1f}
  {x2+1:.1f} {y2+1:.1f}"`` (1-based on disk).
- **COCO results JSON**: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with
  ``category_id`` = our class index (1..K), ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1`` (+1 geometry, so the
  COCO IoU of two such boxes equals the +1 IoU of the inclusive boxes). ``image_id`` see
  :func:`write_coco_results`.
- **predictions.json** (this project's ``detect`` output): a JSON list of per-image records
  ``{"image_id", "file", "width", "height", "detections": [{"class_id", "label", "score", "box"}]}`` with
  0-based inclusive ``box`` = [x1, y1, x2, y2], streamed by :class:`PredictionsWriter`.

:func:`load_detections` tells the three apart. Malformed input raises
:class:`~frcnn_trt.errors.DatasetError` naming the file and the line, record or value.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn

import numpy as np

from frcnn_trt.errors import DatasetError

__all__ = [
    "Detections",
    "ImageDetections",
    "PredictionsWriter",
    "load_detections",
    "prediction_record",
    "read_coco_results",
    "read_predictions",
    "read_voc_results",
    "voc_results_filename",
    "write_coco_results",
    "write_voc_results",
]

_GLOB_CHARS = frozenset("*?[")


# --------------------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image: ``boxes`` float64 [D, 4], ``scores`` float64 [D], ``classes`` int64 [D]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        classes = np.asarray(self.classes)
        if classes.dtype.kind == "f" and not np.all(classes == np.round(classes)):
            raise ValueError(f"detection classes must be integers, got {classes!r}")
        classes = classes.astype(np.int64).reshape(-1)
        if not (boxes.shape[0] == scores.shape[0] == classes.shape[0]):
            raise ValueError(f"boxes {boxes.shape}, scores {scores.shape} and classes {classes.shape} disagree on D")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "classes", classes)

    @classmethod
    def empty(cls) -> ImageDetections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Detections:
    """Detections of an image set, keyed by image id (insertion order kept).

    ``add`` appends (several calls for the same image concatenate, e.g. one per class); ``get`` returns an
    empty :class:`ImageDetections` for an image without detections, ``[]`` raises ``KeyError``.
    """

    def __init__(self) -> None:
        self._parts: dict[str, list[ImageDetections]] = {}

    @classmethod
    def from_dict(cls, per_image: Mapping[str, ImageDetections]) -> Detections:
        dets = cls()
        for image_id, image_dets in per_image.items():
            dets.add(image_id, image_dets.boxes, image_dets.scores, image_dets.classes)
        return dets

    @classmethod
    def from_flat(
        cls,
        image_ids: Sequence[str],
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
    ) -> Detections:
        """Group flat arrays (one row per detection) by image id, keeping file order within an image."""
        flat = ImageDetections(boxes, scores, classes)
        if len(image_ids) != len(flat):
            raise ValueError(f"{len(image_ids)} image ids for {len(flat)} detections")
        dets = cls()
        if len(flat) == 0:
            return dets
        ids = np.asarray(list(image_ids), dtype=str)
        uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # grouped by image, file order within each image
        bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
        groups = np.split(order, bounds)
        for u in np.argsort(first, kind="stable"):  # images in order of first appearance
            rows = groups[u]
            dets.add(str(uniq[u]), flat.boxes[rows], flat.scores[rows], flat.classes[rows])
        return dets

    def add(self, image_id: str, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        """Append detections of ``image_id`` (an image may be added with zero detections)."""
        if not isinstance(image_id, str):
            raise TypeError(f"image_id must be a str, got {image_id!r}")
        self._parts.setdefault(image_id, []).append(ImageDetections(boxes, scores, classes))

    def get(self, image_id: str) -> ImageDetections:
        parts = self._parts.get(image_id)
        if parts is None:
            return ImageDetections.empty()
        if len(parts) > 1:
            merged = ImageDetections(
                np.concatenate([p.boxes for p in parts]),
                np.concatenate([p.scores for p in parts]),
                np.concatenate([p.classes for p in parts]),
            )
            self._parts[image_id] = [merged]
        return self._parts[image_id][0]

    def __getitem__(self, image_id: str) -> ImageDetections:
        if image_id not in self._parts:
            raise KeyError(image_id)
        return self.get(image_id)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    @property
    def image_ids(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def items(self) -> Iterator[tuple[str, ImageDetections]]:
        for image_id in list(self._parts):
            yield image_id, self.get(image_id)

    @property
    def num_detections(self) -> int:
        return sum(len(p) for parts in self._parts.values() for p in parts)

    def __repr__(self) -> str:
        return f"Detections({len(self)} images, {self.num_detections} detections)"


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def _temp_path(path: Path) -> Path:
    """A fresh temporary name next to ``path`` (same file system, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # "x": normal permissions (umask), never clobbers
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read detections file ({e.strerror or e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def _class_names_tuple(class_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(class_names)
    if len(names) < 2:
        raise ValueError(f"class_names must hold __background__ and at least one class, got {names!r}")
    return names


def _is_number(v: Any) -> bool:
    """A finite JSON number (``bool`` is not one)."""
    return type(v) in (int, float) and math.isfinite(v)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _check_image_id(image_id: str, what: str) -> None:
    if not image_id or any(ch.isspace() for ch in image_id):
        raise DatasetError(f"{what}: image id {image_id!r} is empty or contains whitespace")


# --------------------------------------------------------------------------------------------------------
# py-faster-rcnn per-class results files
# --------------------------------------------------------------------------------------------------------


def voc_results_filename(class_name: str, *, comp_id: str = "comp4", image_set: str = "test") -> str:
    """py-faster-rcnn's results file name: ``{comp_id}_det_{image_set}_{class_name}.txt``."""
    return f"{comp_id}_det_{image_set}_{class_name}.txt"


def write_voc_results(
    detections: Detections,
    out_dir: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    image_ids: Sequence[str] | None = None,
    comp_id: str = "comp4",
    image_set: str = "test",
) -> list[Path]:
    """Write one py-faster-rcnn results file per class (an empty file for a class without detections).

    Lines follow ``image_ids`` order (default: the detections' own order), then each image's stored order;
    coordinates are written 1-based with one decimal (``x + 1`` computed in float64) and scores with three,
    exactly as ``_write_voc_results_file``. Each file is written atomically. Returns the paths, class order.
    """
    names = _class_names_tuple(class_names)
    out = Path(out_dir)
    ids = list(detections.image_ids if image_ids is None else image_ids)
    lines: list[list[str]] = [[] for _ in names]
    for image_id in ids:
        d = detections.get(image_id)
        if len(d) == 0:
            continue
        _check_image_id(image_id, f"writing results files in {out}")
        bad = (d.classes < 1) | (d.classes >= len(names))
        if bad.any():
            raise DatasetError(
                f"writing results files in {out}: image {image_id!r} has class {int(d.classes[bad][0])} "
                f"outside 1..{len(names) - 1}"
            )
        b1 = d.boxes + 1.0
        for k in range(len(d)):
            lines[int(d.classes[k])].append(
                f"{image_id} {d.scores[k]:.3f} {b1[k, 0]:.1f} {b1[k, 1]:.1f} {b1[k, 2]:.1f} {b1[k, 3]:.1f}\n"
            )
    paths = []
    for c in range(1, len(names)):
        path = out / voc_results_filename(names[c], comp_id=comp_id, image_set=image_set)
        _atomic_write_text(path, "".join(lines[c]))
        paths.append(path)
    return paths


def _class_of_results_file(path: Path, names: tuple[str, ...]) -> int:
    """The class index a results file belongs to: its name ends with ``_{class}.txt`` (longest match)."""
    fname = path.name
    best = 0
    for c in range(1, len(names)):
        matches = fname == f"{names[c]}.txt" or fname.endswith(f"_{names[c]}.txt")
        if matches and (best == 0 or len(names[c]) > len(names[best])):
            best = c
    if best == 0:
        stem = fname[:-4] if fname.endswith(".txt") else fname
        value = stem.rsplit("_", 1)[-1]
        raise DatasetError(
            f"{path}: unknown class {value!r} in results file name (expected '*_det_*_<class>.txt' "
            f"with <class> one of {list(names[1:])})"
        )
    return best


def _results_files(path: Path) -> list[Path]:
    spec = str(path)
    if any(ch in spec for ch in _GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        if not files:
            raise DatasetError(f"{spec}: no results files match this pattern")
        return files
    if path.is_dir():
        files = sorted(p for p in path.glob("*_det_*.txt") if p.is_file())
        if not files:
            raise DatasetError(f"{path}: no per-class results files ('*_det_*_<class>.txt') in this folder")
        return files
    if path.is_file():
        return [path]
    raise DatasetError(f"{path}: no such results file or directory")


def _raise_bad_number(path: Path, rows: list[tuple[int, list[str]]]) -> NoReturn:
    for n, parts in rows:  # slow path, only to name the bad line
        for tok in parts[1:]:
            try:
                float(tok)
            except ValueError:
                line = " ".join(parts)
                raise DatasetError(f"{path}:{n}: {tok!r} is not a number in line {line!r}") from None
    raise DatasetError(f"{path}: cannot parse the numbers of this results file")


def _parse_results_file(path: Path) -> tuple[list[str], np.ndarray]:
    """Parse one per-class file into image ids and a float64 [D, 5] array (score, 1-based box)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read results file ({e})") from e
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for n, parts in rows:
        if len(parts) != 6:
            raise DatasetError(
                f"{path}:{n}: expected 6 fields '<image_id> <score> <x1> <y1> <x2> <y2>', "
                f"got {len(parts)}: {' '.join(parts)!r}"
            )
    ids = [parts[0] for _, parts in rows]
    try:
        values = np.array([parts[1:] for _, parts in rows], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        _raise_bad_number(path, rows)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        n, parts = rows[int(np.argmin(finite))]
        raise DatasetError(f"{path}:{n}: non-finite value in line {' '.join(parts)!r}")
    return ids, values


def read_voc_results(path: str | os.PathLike[str], class_names: Sequence[str]) -> Detections:
    """Read py-faster-rcnn per-class results files: a directory, a glob pattern or one ``.txt`` file.

    The class comes from the file name (``*_{class}.txt``, longest known class wins); coordinates are
    converted back to 0-based (``x - 1``). Each image's detections come grouped by class index, in file
    order within a class. Two files for the same class raise :class:`DatasetError`.
    """
    names = _class_names_tuple(class_names)
    files = _results_files(Path(path))
    seen: dict[int, Path] = {}
    all_ids: list[str] = []
    all_values: list[np.ndarray] = []
    all_classes: list[np.ndarray] = []
    for f in files:
        c = _class_of_results_file(f, names)
        if c in seen:
            raise DatasetError(f"{f}: a second results file for class {names[c]!r} (first: {seen[c]})")
        seen[c] = f
    for c, f in sorted(seen.items()):  # class order, so each image's rows come grouped by class
        ids, values = _parse_results_file(f)
        all_ids.extend(ids)
        all_values.append(values)
        all_classes.append(np.full(len(ids), c, dtype=np.int64))
    values = np.concatenate(all_values) if all_values else np.zeros((0, 5))
    return Detections.from_flat(
        all_ids,
        values[:, 1:5] - 1.0,
        values[:, 0],
        np.concatenate(all_classes) if all_classes else np.zeros(0, dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------------------
# COCO results JSON
# --------------------------------------------------------------------------------------------------------


def _coco_image_id_writer(image_ids: Sequence[str], mode: Literal["auto", "int", "str"]) -> dict[str, int | str]:
    if mode not in ("auto", "int", "str"):
        raise ValueError(f"image_id_mode must be 'auto', 'int' or 'str', got {mode!r}")
    if mode == "str":
        return {i: i for i in image_ids}
    int_like = all(i.isdigit() and i.isascii() for i in image_ids)
    unique = int_like and len({int(i) for i in image_ids}) == len(image_ids)
    if mode == "int" and not unique:
        bad = [i for i in image_ids if not (i.isdigit() and i.isascii())]
        what = f"image id {bad[0]!r} is not a decimal integer" if bad else "two image ids share one int value"
        raise DatasetError(f"cannot write int COCO image ids: {what}")
    if unique:
        return {i: int(i) for i in image_ids}
    return {i: i for i in image_ids}


def write_coco_results(
    detections: Detections,
    path: str | os.PathLike[str],
    *,
    image_id_mode: Literal["auto", "int", "str"] = "auto",
) -> Path:
    """Write a COCO results JSON list (atomically).

    ``category_id`` is our class index (1..K); ``bbox`` is ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``.
    ``image_id``: ``"int"`` writes ``int(image_id)`` (VOC's ``"000005"`` -> 5, what COCO tools expect);
    ``"str"`` writes the id string unchanged; ``"auto"`` (default) writes ints when every id is a decimal
    integer string and no two share a value, strings otherwise. :func:`read_coco_results` reads both back.
    """
    out = Path(path)
    id_map = _coco_image_id_writer(list(detections.image_ids), image_id_mode)
    items: list[dict[str, Any]] = []
    for image_id, d in detections.items():
        xywh = np.concatenate([d.boxes[:, :2], d.boxes[:, 2:] - d.boxes[:, :2] + 1.0], axis=1)
        img = id_map[image_id]
        for k in range(len(d)):
            items.append(
                {
                    "image_id": img,
                    "category_id": int(d.classes[k]),
                    "bbox": [float(v) for v in xywh[k]],
                    "score": float(d.scores[k]),
                }
            )
    _atomic_write_text(out, json.dumps(items, allow_nan=False))
    return out


def _resolve_int_ids(image_ids: Sequence[str] | None, path: Path) -> dict[int, str] | None:
    if image_ids is None:
        return None
    table: dict[int, str] = {}
    for i in image_ids:
        if i.isdigit() and i.isascii():
            v = int(i)
            if v in table and table[v] != i:
                raise DatasetError(f"{path}: int image ids are ambiguous: {table[v]!r} and {i!r} both read as {v}")
            table[v] = i
    return table


def _check_coco_item(item: Any, where: str, num_classes: int) -> tuple[Any, int, list[Any], float]:
    """Validate one COCO result (slow path, for the message); return image_id, category_id, bbox, score."""
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected an object, got {item!r}")
    missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in item]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {missing}")
    img = item["image_id"]
    if type(img) not in (int, str):
        raise DatasetError(f"{where}: image_id must be an int or a string, got {img!r}")
    cat = item["category_id"]
    if type(cat) is not int or not 1 <= cat <= num_classes:
        raise DatasetError(f"{where}: category_id {cat!r} is not a class index in 1..{num_classes}")
    bbox = item["bbox"]
    if not (type(bbox) is list and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise DatasetError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    score = item["score"]
    if not _is_number(score):
        raise DatasetError(f"{where}: score must be a finite number, got {score!r}")
    return img, cat, bbox, score


def _parse_coco_results(
    items: list[Any], path: Path, names: tuple[str, ...], image_ids: Sequence[str] | None
) -> Detections:
    int_table = _resolve_int_ids(image_ids, path)
    known = set(image_ids) if image_ids is not None else None
    num_classes = len(names) - 1
    ids: list[str] = []
    xywh: list[Any] = []
    scores: list[float] = []
    classes: list[int] = []
    for k, item in enumerate(items):
        try:  # fast path for well-formed items; anything else is re-checked for a precise message
            img, cat, bbox, score = item["image_id"], item["category_id"], item["bbox"], item["score"]
            x, y, w, h = bbox
            ok = (
                type(img) in (int, str)
                and type(cat) is int
                and 0 < cat <= num_classes
                and type(bbox) is list
                and _is_number(x)
                and _is_number(y)
                and _is_number(w)
                and _is_number(h)
                and _is_number(score)
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            img, cat, bbox, score = _check_coco_item(item, f"{path}: result {k}", num_classes)
        if type(img) is int:
            if int_table is None:
                image_id = str(img)
            elif img in int_table:
                image_id = int_table[img]
            else:
                raise DatasetError(f"{path}: result {k}: image_id {img} matches no image id of this image set")
        else:
            image_id = img
            if known is not None and image_id not in known:
                raise DatasetError(f"{path}: result {k}: image_id {img!r} is not in this image set")
        ids.append(image_id)
        xywh.append(bbox)
        scores.append(score)
        classes.append(cat)
    b = np.array(xywh, dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:] - 1.0], axis=1)
    return Detections.from_flat(ids, boxes, np.array(scores, dtype=np.float64), np.array(classes, dtype=np.int64))


def read_coco_results(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    image_ids: Sequence[str] | None = None,
) -> Detections:
    """Read a COCO results JSON list (``category_id`` = class index 1..K, +1 ``bbox`` w/h).

    A string ``image_id`` is used as it is; an int one is mapped to the id in ``image_ids`` whose
    ``int(id)`` equals it (``5`` -> ``"000005"``), or to ``str(int)`` when ``image_ids`` is not given.
    With ``image_ids``, an id outside the set raises :class:`DatasetError`.
    """
    p = Path(path)
    data = _load_json(p)
    if not isinstance(data, list):
        raise DatasetError(f"{p}: a COCO results file is a JSON list, got {type(data).__name__}")
    return _parse_coco_results(data, p, _class_names_tuple(class_names), image_ids)


# --------------------------------------------------------------------------------------------------------
# predictions.json
# --------------------------------------------------------------------------------------------------------


def prediction_record(
    image_id: str,
    file: str | os.PathLike[str],
    width: int,
    height: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """One ``predictions.json`` record; values are written as given (float32 -> exact float64 repr)."""
    d = ImageDetections(boxes, scores, classes)
    names = tuple(class_names)
    bad = (d.classes < 1) | (d.classes >= len(names))
    if bad.any():
        raise ValueError(f"image {image_id!r}: class {int(d.classes[bad][0])} outside 1..{len(names) - 1}")
    box_list = d.boxes.tolist()
    score_list = d.scores.tolist()
    class_list = d.classes.tolist()
    return {
        "image_id": str(image_id),
        "file": str(file),
        "width": int(width),
        "height": int(height),
        "detections": [
            {"class_id": c, "label": names[c], "score": s, "box": b}
            for c, s, b in zip(class_list, score_list, box_list, strict=True)
        ],
    }


class PredictionsWriter:
    """Stream ``predictions.json``: ``[``, one record per :meth:`write` (flushed), ``]`` on close.

    Writes go to a temporary file in the target directory, renamed onto ``path`` only by a successful
    :meth:`close`; an exception inside the ``with`` block (or :meth:`abort`) removes the temporary file
    and leaves ``path`` as it was (absent, or its previous content).
    """

    def __init__(self, path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_path(self.path)
        self._file: Any = open(self._tmp, "x", encoding="utf-8")  # noqa: SIM115 (closed by close/abort)
        self._file.write("[")
        self._file.flush()

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one per-image record (a mapping with at least ``image_id`` and ``detections``)."""
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        if not isinstance(record, Mapping) or "image_id" not in record or "detections" not in record:
            raise ValueError(f"a predictions record needs 'image_id' and 'detections', got {record!r}")
        text = json.dumps(dict(record), default=_json_default, allow_nan=False)
        self._file.write(("\n" if self.count == 0 else ",\n") + text)
        self._file.flush()
        self.count += 1

    def write_image(
        self,
        image_id: str,
        file: str | os.PathLike[str],
        width: int,
        height: int,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
    ) -> dict[str, Any]:
        """Build a record with :func:`prediction_record` (needs ``class_names``), write it, return it."""
        if self.class_names is None:
            raise ValueError("write_image needs the writer's class_names")
        record = prediction_record(image_id, file, width, height, boxes, scores, classes, self.class_names)
        self.write(record)
        return record

    def close(self) -> Path:
        """Finish the list, sync it to disk and rename it onto ``path``."""
        if self._file is None:
            return self.path
        try:
            self._file.write("\n]\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left untouched."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> PredictionsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # never closed: drop the temporary file, write nothing
        if getattr(self, "_file", None) is not None:
            with contextlib.suppress(Exception):
                self.abort()


def _check_prediction(
    det: Any, where: str, names: tuple[str, ...] | None, label_to_id: dict[str, int] | None
) -> tuple[int, list[Any], float]:
    """Validate one predictions.json detection (slow path); return class_id, box, score."""
    if not isinstance(det, dict):
        raise DatasetError(f"{where}: expected an object, got {det!r}")
    cid = det.get("class_id")
    label = det.get("label")
    if label_to_id is not None and label is not None:
        if label not in label_to_id or label_to_id[label] == 0:
            raise DatasetError(f"{where}: unknown class label {label!r}")
        if cid is None:
            cid = label_to_id[label]
    if type(cid) is not int or cid < 1:
        raise DatasetError(f"{where}: class_id must be an int >= 1, got {cid!r}")
    if names is not None:
        if cid >= len(names):
            raise DatasetError(f"{where}: class_id {cid} outside 1..{len(names) - 1}")
        if label is not None and label_to_id is not None and label_to_id[label] != cid:
            raise DatasetError(f"{where}: class_id {cid} ({names[cid]!r}) disagrees with label {label!r}")
    box = det.get("box")
    if not (type(box) is list and len(box) == 4 and all(_is_number(v) for v in box)):
        raise DatasetError(f"{where}: box must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
    score: Any = det.get("score")
    if not _is_number(score):
        raise DatasetError(f"{where}: score must be a finite number, got {score!r}")
    return cid, box, float(score)


def _parse_predictions(items: list[Any], path: Path, names: tuple[str, ...] | None) -> Detections:
    label_to_id = {n: i for i, n in enumerate(names)} if names is not None else None
    max_class = len(names) - 1 if names is not None else math.inf
    dets = Detections()
    for r, rec in enumerate(items):
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}: record {r}: expected an object, got {rec!r}")
        image_id = rec.get("image_id")
        if not isinstance(image_id, str) or not image_id:
            raise DatasetError(f"{path}: record {r}: image_id must be a non-empty string, got {image_id!r}")
        det_list = rec.get("detections")
        if not isinstance(det_list, list):
            raise DatasetError(
                f"{path}: record {r} (image {image_id!r}): 'detections' must be a list, got {det_list!r}"
            )
        boxes: list[Any] = []
        scores: list[float] = []
        classes: list[int] = []
        for k, det in enumerate(det_list):
            try:  # fast path for well-formed detections; anything else is re-checked for a precise message
                cid, box, score, label = det["class_id"], det["box"], det["score"], det.get("label")
                x1, y1, x2, y2 = box
                ok = (
                    type(cid) is int
                    and 0 < cid <= max_class
                    and type(box) is list
                    and _is_number(x1)
                    and _is_number(y1)
                    and _is_number(x2)
                    and _is_number(y2)
                    and _is_number(score)
                    and (label is None or label_to_id is None or label_to_id.get(label) == cid)
                )
            except (TypeError, KeyError, ValueError, AttributeError):
                ok = False
            if not ok:
                where = f"{path}: record {r} (image {image_id!r}), detection {k}"
                cid, box, score = _check_prediction(det, where, names, label_to_id)
            boxes.append(box)
            scores.append(score)
            classes.append(cid)
        dets.add(image_id, np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(scores), np.array(classes))
    return dets


def read_predictions(path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> Detections:
    """Read ``predictions.json``; with ``class_names``, labels and class ids are checked against them."""
    p = Path(path)
    data = _load_json(p)
    if not isinstance(data, list):
        raise DatasetError(f"{p}: predictions.json is a JSON list of records, got {type(data).__name__}")
    return _parse_predictions(data, p, _class_names_tuple(class_names) if class_names is not None else None)


# --------------------------------------------------------------------------------------------------------
# Auto-detection
# --------------------------------------------------------------------------------------------------------


def _json_kind(items: Iterable[Any], path: Path) -> Literal["predictions", "coco"]:
    for k, item in enumerate(items):
        if isinstance(item, dict) and "detections" in item:
            return "predictions"
        if isinstance(item, dict) and "bbox" in item and "category_id" in item:
            return "coco"
        raise DatasetError(
            f"{path}: item {k} is neither a predictions.json record (with 'detections') nor a COCO result "
            f"(with 'bbox' and 'category_id'): {str(item)[:200]}"
        )
    return "coco"  # an empty list: no detections either way


def load_detections(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    image_ids: Sequence[str] | None = None,
) -> Detections:
    """Read detections in any of the three formats, told apart by the path and the first JSON item.

    A directory, a glob pattern or a ``.txt`` file -> per-class results files; a JSON list whose items
    have ``detections`` -> ``predictions.json``; items with ``bbox`` and ``category_id`` -> COCO results
    (``image_ids`` resolves their int image ids, see :func:`read_coco_results`).
    """
    p = Path(path)
    names = _class_names_tuple(class_names)
    spec = str(p)
    if any(ch in spec for ch in _GLOB_CHARS) or p.is_dir() or p.suffix.lower() == ".txt":
        return read_voc_results(p, names)
    if not p.exists():
        raise DatasetError(f"{p}: no such detections file")
    data = _load_json(p)
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list (predictions.json or COCO results), got {type(data).__name__}")
    if _json_kind(data, p) == "predictions":
        return _parse_predictions(data, p, names)
    return _parse_coco_results(data, p, names, image_ids)
