"""py-faster-rcnn's per-class results files (``pascal_voc.py:_write_voc_results_file``): writer and reader.

One file per class, ``{comp_id}_det_{image_set}_{class}.txt``, lines ``"{id} {score:.3f} {x1+1:.1f} {y1+1:.1f}
{x2+1:.1f} {y2+1:.1f}"`` (1-based on disk; in memory boxes are 0-based inclusive, see
:mod:`frcnn_trt.evaluation.detections`). Malformed input raises :class:`~frcnn_trt.errors.DatasetError` naming
the file and the line.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation.detections import Detections
from frcnn_trt.evaluation.file_checks import GLOB_CHARS, class_names_tuple
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
    spec = str(path)
    if any(ch in spec for ch in GLOB_CHARS):
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
    names = class_names_tuple(class_names)
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
