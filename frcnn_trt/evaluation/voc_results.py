"""py-faster-rcnn's per-class results files (``pascal_voc.py:_write_voc_results_file``): writer and reader.

One file per class, ``{comp_id}_det_{image_set}_{class}.txt``, lines ``"{id} {score:.3f} {x1+1:.1f} {y1+1:.1f}
{x2+1:.1f} {y2+1:.1f}"`` (1-based on disk; in memory boxes are 0-based inclusive, see
:mod:`frcnn_trt.evaluation.detections`). A malformed line is skipped and reported as ``<file>:<line>: <reason>``;
a file that cannot be read raises :class:`~frcnn_trt.errors.DatasetError` naming it (the policy of all three
detection formats: :mod:`frcnn_trt.evaluation.file_checks`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.detections import Detections
from frcnn_trt.evaluation.file_checks import (
    GLOB_CHARS,
    BadRecord,
    SkipLog,
    box_of,
    class_names_tuple,
    image_id_of,
    read_lines,
    score_of,
)
from frcnn_trt.files import short
from frcnn_trt.io import atomic_write_text

__all__ = ["read_voc_results", "voc_results_filename", "write_voc_results"]


def _check_image_id(image_id: str, what: str) -> None:
    if not image_id or any(ch.isspace() for ch in image_id):
        raise DatasetError(f"{what}: image id {image_id!r} is empty or contains whitespace")


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
    names = class_names_tuple(class_names)
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
        atomic_write_text(path, "".join(lines[c]))
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
    """The results files a directory, a glob pattern or one file names (anything but a folder is returned, so a
    FIFO or a device is refused by name when it is read, never silently left out or waited on)."""
    spec = str(path)
    if any(ch in spec for ch in GLOB_CHARS):
        found = sorted(Path(p) for p in glob.glob(spec) if not os.path.isdir(p))
        if not found:
            raise DatasetError(f"{spec[:200]}: no results files match this pattern")
        return found
    if path.is_dir():
        found = sorted(p for p in path.glob("*_det_*.txt") if not p.is_dir())
        if not found:
            raise DatasetError(f"{path}: no per-class results files ('*_det_*_<class>.txt') in this folder")
        return found
    if os.path.lexists(path):
        return [path]
    raise DatasetError(f"{path}: no such results file or directory")


def _parse_line(parts: list[str], known: frozenset[str] | None) -> tuple[str, float, list[float]]:
    """``(image_id, score, 0-based box)`` of one results line split into fields; :class:`BadRecord` if malformed."""
    if len(parts) != 6:
        raise BadRecord(f"expected 6 fields '<image_id> <score> <x1> <y1> <x2> <y2>', got {len(parts)}: "
                        f"{short(' '.join(parts))}")
    image_id = image_id_of(parts[0], known)
    values: list[float] = []
    for tok in parts[1:]:
        try:
            values.append(float(tok))
        except ValueError:
            raise BadRecord(f"{short(tok)} is not a number") from None
    score = score_of(values[0])
    return image_id, score, box_of([v - 1.0 for v in values[1:]])


def _parse_results_file(path: Path, known: frozenset[str] | None, skips: SkipLog) -> tuple[list[str], np.ndarray]:
    """Parse one per-class file into image ids and a float64 [D, 5] array (score, 0-based box); a malformed line
    is skipped and reported in ``skips``."""
    lines, undecodable = read_lines(path)
    skips.extend(undecodable)
    ids: list[str] = []
    rows: list[list[float]] = []
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            image_id, score, box = _parse_line(parts, known)
        except BadRecord as e:
            skips.add(f"{path}:{n}", str(e))
            continue
        ids.append(image_id)
        rows.append([score, *box])
    return ids, np.array(rows, dtype=np.float64).reshape(-1, 5)


def _files_by_class(files: list[Path], names: tuple[str, ...]) -> list[tuple[int, Path]]:
    seen: dict[int, Path] = {}
    for f in files:
        c = _class_of_results_file(f, names)
        if c in seen:
            raise DatasetError(f"{f}: a second results file for class {names[c]!r} (first: {seen[c]})")
        seen[c] = f
    return sorted(seen.items())  # class order, so each image's rows come grouped by class


def read_voc_results(
    path: str | os.PathLike[str], class_names: Sequence[str], *, image_ids: Sequence[str] | None = None
) -> Detections:
    """Read py-faster-rcnn per-class results files: a directory, a glob pattern or one ``.txt`` file.

    The class comes from the file name (``*_{class}.txt``, longest known class wins); coordinates are
    converted back to 0-based (``x - 1``). Each image's detections come grouped by class index, in file
    order within a class. Two files for the same class, or a file of an unknown class, raise
    :class:`DatasetError`; a malformed line (or, with ``image_ids``, a line of another image) is skipped and
    reported (see :mod:`frcnn_trt.evaluation.file_checks`).
    """
    names = class_names_tuple(class_names)
    known = frozenset(image_ids) if image_ids is not None else None
    skips = SkipLog(path)
    all_ids: list[str] = []
    all_values: list[np.ndarray] = []
    all_classes: list[np.ndarray] = []
    for c, f in _files_by_class(_results_files(Path(path)), names):
        ids, values = _parse_results_file(f, known, skips)
        all_ids.extend(ids)
        all_values.append(values)
        all_classes.append(np.full(len(ids), c, dtype=np.int64))
    values = np.concatenate(all_values) if all_values else np.zeros((0, 5))
    dets = Detections.from_flat(
        all_ids,
        values[:, 1:5],
        values[:, 0],
        np.concatenate(all_classes) if all_classes else np.zeros(0, dtype=np.int64),
    )
    return skips.finish(dets)
