"""INT8 calibration: which images, read one at a time through detect's preprocessing, and cached statistics.

Glossary: ``N`` calibration images, ``T`` calibrated tensors of one graph.

- **Images** (:func:`calibration_paths`): an imdb name as :func:`frcnn_trt.data.factory.get_imdb` takes it
  (``synth:FOLDER:trainval``, ``voc_2007_trainval``, ...), a folder (its image files, sorted), one image file or
  a glob pattern. The first ``count`` are used; fewer than ``min_images`` is an error, and so is a source that
  matches nothing.
- **Streaming** (:class:`ImageStream`): each image is decoded, scaled and mean-subtracted exactly as ``detect``
  does (:func:`frcnn_trt.data.blob.preprocess_images` with the export's settings), one image at a time; an
  unreadable image is skipped and reported, and when too few readable images remain the stream raises.
- **Statistics** (:func:`calibrate`): ONNX Runtime's calibrator (MinMax, Entropy or Percentile) is fed one image
  per ``collect_data`` call: MinMax merges ranges, the histogram methods merge histograms, so only one image's
  activations are alive at a time (VGG16 at 600 × 1000: a few GB, not N times that). A non-finite range is
  refused naming the tensor.
- **Cache** (:class:`CalibrationCache`): ONNX Runtime's own JSON form of the ranges (no pickle), one file per key;
  the key hashes the float graph (SHA-256 of its bytes), every image (path and SHA-256 of its content), the
  method, the preprocessing settings and the ONNX Runtime version. A re-export with the same key reuses the
  file; any change of a key part misses (and says which key it looked for).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn_trt.data.blob import preprocess_images
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.data.images import read_image
from frcnn_trt.errors import DatasetError, ExportError, ImageError
from frcnn_trt.io import atomic_write_json, sha256_file

__all__ = [
    "CALIB_METHODS",
    "CalibrationCache",
    "ImageStream",
    "Preprocess",
    "calibrate",
    "calibration_paths",
    "check_ranges",
    "images_fingerprint",
]

log = logging.getLogger("frcnn_trt.export.calibration")

#: the calibration methods offered (ONNX Runtime's CalibrationMethod names)
CALIB_METHODS = ("minmax", "entropy", "percentile")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
#: a graph's feeds for one calibration image
Feeds = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------ image sources


def _looks_like_imdb(source: str) -> bool:
    head = source.split(":", 1)[0]
    return head in ("voc", "synth", "coco") or source.startswith(("voc_", "coco_"))


def _files_of(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file():
        return [path]
    if any(c in source for c in "*?["):
        return sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    raise ExportError(f"calibration source {source!r} is not an imdb name, a folder, an image file or a glob "
                      "pattern that matches")


def calibration_paths(source: str, count: int, *, min_images: int = 1, data_root: str | Path = "data"
                      ) -> list[Path]:
    """The first ``count`` images of ``source`` (imdb name, folder, file or glob); see the module doc."""
    if count < 1:
        raise ExportError(f"--calib-images must be ≥ 1, got {count}")
    if min_images > count:
        raise ExportError(f"--calib-images {count} is below the minimum of {min_images} calibration images")
    if _looks_like_imdb(source):
        try:
            paths = [a.path for a in get_imdb(source, data_root).annotations()]
        except DatasetError as exc:
            raise ExportError(f"calibration imdb {source!r}: {exc}") from None
    else:
        paths = _files_of(source)
    if not paths:
        raise ExportError(f"calibration source {source!r} holds no image")
    if len(paths) < min_images:
        raise ExportError(f"calibration source {source!r} holds {len(paths)} image(s); at least {min_images} "
                          "are needed")
    return [Path(p) for p in paths[:count]]


def images_fingerprint(paths: Sequence[Path]) -> list[list[str]]:
    """``[[path, sha256 of the content], ...]``: what the cache key knows of the images (a missing file is
    hashed as ``"unreadable"``, as the stream will skip it)."""
    out = []
    for p in paths:
        try:
            digest = sha256_file(p)
        except OSError:
            digest = "unreadable"
        out.append([str(Path(p).resolve()), digest])
    return out


# ------------------------------------------------------------------------------------------------ streaming


@dataclass(frozen=True)
class Preprocess:
    """detect's preprocessing (the export's settings): BGR means, scale rule."""

    pixel_means: tuple[float, float, float]
    target_size: int
    max_size: int

    def blob(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return preprocess_images([image], self.pixel_means, self.target_size, self.max_size, device="cpu")

    def to_dict(self) -> dict[str, Any]:
        return {"pixel_means": list(self.pixel_means), "target_size": self.target_size, "max_size": self.max_size}


@dataclass
class ImageStream:
    """Calibration images read one at a time; unreadable ones are skipped and listed in :attr:`skipped`."""

    paths: Sequence[Path]
    preprocess: Preprocess
    min_images: int = 1
    skipped: list[dict[str, str]] = field(default_factory=list)
    used: int = 0

    def images(self) -> Iterator[tuple[Path, np.ndarray]]:
        self.skipped.clear()
        self.used = 0
        for p in self.paths:
            try:
                image = read_image(p)
            except ImageError as exc:
                log.warning("calibration: skipping %s (%s)", p, exc)
                self.skipped.append({"path": str(p), "reason": str(exc)})
                continue
            self.used += 1
            yield p, image
        if self.used < self.min_images:
            example = self.skipped[0]["reason"] if self.skipped else "-"
            raise ExportError(f"only {self.used} of {len(self.paths)} calibration image(s) could be read "
                              f"({len(self.skipped)} skipped, e.g. {example}); at least {self.min_images} are needed")

    def blobs(self) -> Iterator[tuple[Path, torch.Tensor, torch.Tensor]]:
        """``(path, blob [1, 3, H, W], im_info [1, 3])`` per readable image."""
        for p, image in self.images():
            blob, im_info = self.preprocess.blob(image)
            yield p, blob, im_info


# ------------------------------------------------------------------------------------------------ statistics


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise ExportError(f"calibration method {name!r} unknown: use one of {', '.join(CALIB_METHODS)}")
    return table[name]


class _OneShot:
    """A CalibrationDataReader of one feed (ONNX Runtime's calibrators accept any object with get_next)."""

    def __init__(self, feeds: Feeds) -> None:
        self._feeds: Feeds | None = feeds

    def get_next(self) -> Feeds | None:
        out, self._feeds = self._feeds, None
        return out


def check_ranges(ranges: Any, what: str) -> None:
    """Refuse a calibration whose range of some tensor is not finite (or empty), naming the tensor."""
    for name, data in ranges.data.items():
        lo, hi = (np.asarray(v, dtype=np.float64) for v in data.range_value)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ExportError(f"{what}: calibration gives tensor {name!r} a non-finite range "
                              f"[{lo.tolist()}, {hi.tolist()}] (inf/NaN activations on the calibration images); "
                              "check the model and the images")


def calibrate(model: bytes, feeds: Iterator[Feeds], method: str, op_types: Sequence[str], what: str) -> Any:
    """ONNX Runtime calibration of the float graph ``model`` on ``feeds`` (streamed, one per collect);
    returns its ``TensorsData``, checked finite."""
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="frcnn_calib_") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model)
        calibrator = create_calibrator(path, list(op_types), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_method(method), providers=["CPUExecutionProvider"],
                                       extra_options={"symmetric": method == "percentile"})
        seen = 0
        for feed in feeds:
            calibrator.collect_data(_OneShot(feed))
            seen += 1
        if seen == 0:
            raise ExportError(f"{what}: no calibration data")
        ranges = calibrator.compute_data()
        del calibrator
    check_ranges(ranges, what)
    return ranges


# ------------------------------------------------------------------------------------------------ cache


@dataclass(frozen=True)
class CalibrationCache:
    """Calibration ranges on disk, keyed by everything that makes them (see the module doc)."""

    directory: Path

    @staticmethod
    def key(graph_sha256: str, images: Sequence[Sequence[str]], method: str, preprocess: Mapping[str, Any],
            extra: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        import onnxruntime

        parts = {"graph_sha256": graph_sha256, "images": [list(i) for i in images], "method": method,
                 "preprocess": dict(preprocess), "onnxruntime": onnxruntime.__version__, **dict(extra or {})}
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        return digest[:24], parts

    def path(self, what: str, key: str) -> Path:
        return self.directory / f"{what}-{key}.json"

    def load(self, what: str, key: str) -> Any | None:
        """The cached ranges, or None (absent, or unreadable: then recalibrated and rewritten)."""
        from onnxruntime.quantization.calibrate import load_tensors_data

        path = self.path(what, key)
        if not path.is_file():
            return None
        try:
            ranges = load_tensors_data(path)
            check_ranges(ranges, str(path))
        except (OSError, ValueError, KeyError, TypeError, ExportError) as exc:
            log.warning("calibration cache %s unreadable (%s): recalibrating", path, exc)
            return None
        return ranges

    def store(self, what: str, key: str, ranges: Any, parts: Mapping[str, Any]) -> Path:
        from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

        path = self.path(what, key)
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = json.loads(json.dumps(ranges.to_dict(), cls=CalibrationCacheEncoder))
        payload["smooth_quant"] = False
        atomic_write_json(path, payload)
        atomic_write_json(path.with_suffix(".key.json"), dict(parts))
        return path

    def get_or_compute(self, what: str, key: str, parts: Mapping[str, Any], compute: Callable[[], Any]
                       ) -> tuple[Any, bool]:
        """``(ranges, reused)``."""
        ranges = self.load(what, key)
        if ranges is not None:
            return ranges, True
        ranges = compute()
        self.store(what, key, ranges, parts)
        return ranges, False
