"""Checking a dataset's images when its training roidb is built, so a bad file is a reported skip, not a crash
hours into training.

Every image's header is opened (:func:`~frcnn_trt.data.images.read_header`: regular file, not empty, a format PIL
knows, its size, its EXIF orientation) and its size compared with the annotation's; mode ``full`` also decodes
every image exactly as training will (:func:`~frcnn_trt.data.images.read_image`: truncated data, NaN/inf float
pixels). What each file turned out to be (:class:`ImageFacts`) is cached in a JSON file keyed by the file's
``(size, mtime_ns, inode)``, so a second check opens nothing and a changed file is checked again.

The verdict for one record (:func:`verdict`):

* unreadable (missing, FIFO, empty, truncated header, not an image, corrupt, NaN pixels) -> skipped;
* over the decoded-pixel budget -> skipped (nothing is decoded);
* the annotation gives no size -> the stored size is used;
* the annotation's size is the stored size -> used (py-faster-rcnn trusts the annotation; here it is checked);
* the annotation's size is the *displayed* size of an image whose EXIF orientation (5-8) swaps width and height
  -> used: its boxes were drawn on the displayed image, and :func:`~frcnn_trt.data.images.read_image` with
  ``expect_size`` returns it transposed the same way;
* any other mismatch -> skipped: the boxes may be in another image's coordinates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frcnn_trt.data.images import DEFAULT_MAX_PIXELS, ImageHeader, display_matches, read_header, read_image
from frcnn_trt.data.imdb import DatasetIssue
from frcnn_trt.errors import ConfigError, FrcnnError, ImageError
from frcnn_trt.files import load_json
from frcnn_trt.io import atomic_write_json
from frcnn_trt.log import IterationProgress

__all__ = [
    "VERIFY_MODES",
    "ImageCheckReport",
    "ImageFacts",
    "ImageRecord",
    "ImageSkip",
    "check_images",
    "image_cache_file",
    "log_skips",
    "probe_image",
    "verdict",
]

logger = logging.getLogger(__name__)

#: ``header``: open every header (cheap); ``full``: decode every image as training will
VERIFY_MODES = ("header", "full")
_CACHE_FORMAT = "frcnn_trt.image_check"
_CACHE_VERSION = 1
_PROGRESS_FROM = 256  # files to open before a progress bar is worth showing


@dataclass(frozen=True)
class ImageRecord:
    """An image a roidb entry needs, with the size its annotation gives (0 = unknown)."""

    image_id: str
    path: Path
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class ImageFacts:
    """What checking one file found: its header, the problem (``""`` when none), whether it decoded fully."""

    header: ImageHeader | None
    error: str = ""
    full: bool = False

    def satisfies(self, mode: str, max_pixels: int) -> bool:
        """Whether these facts answer a check in ``mode`` (a full check needs a decode, unless over budget)."""
        if mode == "header" or self.error or self.full or self.header is None:
            return True
        return self.header.pixels > max_pixels


@dataclass(frozen=True)
class ImageSkip:
    """An image left out of training, and why."""

    image_id: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"skipped: {self.file}: {self.reason}"

    def issue(self) -> DatasetIssue:
        """The skip as a dataset issue (``data inspect`` and training's start list them with the annotation's)."""
        return DatasetIssue(self.file, f"image skipped: {self.reason}", "bad_image")


@dataclass
class ImageCheckReport:
    """The outcome for each record, in order: the ``(width, height)`` its entry uses, or None when skipped."""

    sizes: list[tuple[int, int] | None]
    skipped: list[ImageSkip]
    opened: int  # files opened (not answered by the cache)

    def signature(self) -> str:
        """SHA-256 of every outcome: equal signatures mean the same roidb."""
        reasons = {s.image_id: s.reason for s in self.skipped}
        rows = [[i, list(size) if size else None] for i, size in enumerate(self.sizes)]
        payload = json.dumps({"sizes": rows, "skipped": sorted(reasons.items())}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def image_cache_file(cache_dir: str | Path, name: str) -> Path:
    """Where the image checks of imdb ``name`` are cached in ``cache_dir``."""
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)[:80] or "imdb"
    return Path(cache_dir) / f"images_{safe}.json"


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def probe_image(path: Path, mode: str, max_pixels: int) -> ImageFacts:
    """Open ``path``'s header (and in ``full`` mode decode it, when within budget); never raises for a bad file."""
    try:
        header = read_header(path)
    except ImageError as exc:
        return ImageFacts(None, _strip_path(str(exc), path))
    if mode != "full" or header.pixels > max_pixels:
        return ImageFacts(header)
    try:
        read_image(path, max_pixels=None)
    except ImageError as exc:
        return ImageFacts(header, _strip_path(str(exc), path))
    return ImageFacts(header, full=True)


def verdict(facts: ImageFacts, record: ImageRecord, max_pixels: int) -> tuple[int, int] | str:
    """The ``(width, height)`` the record's entry uses, or the reason it is skipped (see the module docstring)."""
    if facts.error or facts.header is None:
        return facts.error or "unreadable image"
    header = facts.header
    if header.pixels > max_pixels:
        return (f"image is {header.width}x{header.height} = {header.pixels / 1e6:.1f} megapixels, over the "
                f"decoded-pixel budget of {max_pixels / 1e6:.1f} megapixels")
    stored = (header.width, header.height)
    annotated = (int(record.width), int(record.height))
    if annotated[0] <= 0 or annotated[1] <= 0 or annotated == stored:
        return stored
    if display_matches(header, annotated):
        return annotated
    return (f"image is {stored[0]}x{stored[1]} but its annotation says {annotated[0]}x{annotated[1]}: its boxes "
            f"may be in other coordinates")


# --------------------------------------------------------------------------------------------------
# The cache: path -> [size, mtime_ns, inode, format, width, height, orientation, full, error]


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """``(size, mtime_ns, inode)`` of a regular file; None otherwise (such a path is never cached)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _facts_from_row(row: Any) -> tuple[tuple[int, int, int], ImageFacts] | None:
    """One cache row, or None when it is malformed (a cache is a file anyone can hand us)."""
    if not isinstance(row, list) or len(row) != 9:
        return None
    size, mtime, ino, fmt, width, height, orient, full, error = row
    ints = (size, mtime, ino, width, height, orient)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or not isinstance(full, bool):
        return None
    if not isinstance(fmt, str) or not isinstance(error, str) or not 1 <= orient <= 8:
        return None
    header = ImageHeader(fmt, width, height, orient) if width > 0 and height > 0 else None
    if header is None and not error:
        return None
    return (size, mtime, ino), ImageFacts(header, error, full)


def _row(key: tuple[int, int, int], facts: ImageFacts) -> list[Any]:
    h = facts.header
    return [*key, h.format if h else "", h.width if h else 0, h.height if h else 0, h.orientation if h else 1,
            facts.full, facts.error]


def _load_cache(cache_file: Path | None) -> dict[str, tuple[tuple[int, int, int], ImageFacts]]:
    if cache_file is None or not cache_file.exists():
        return {}
    try:
        data = load_json(cache_file, "image check cache")
    except FrcnnError as exc:
        logger.warning("image check cache unreadable (%s); checking every image again", exc)
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("format") != _CACHE_FORMAT or data.get("version") != _CACHE_VERSION or not isinstance(files, dict):
        return {}
    out = {}
    for path, row in files.items():
        parsed = _facts_from_row(row)
        if parsed is not None:
            out[str(path)] = parsed
    return out


def _save_cache(cache_file: Path, known: dict[str, tuple[tuple[int, int, int], ImageFacts]]) -> None:
    files = {path: _row(key, facts) for path, (key, facts) in sorted(known.items())}
    try:
        atomic_write_json(cache_file, {"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "files": files})
    except OSError as exc:
        logger.warning("could not write the image check cache %s (%s)", cache_file, exc)


# --------------------------------------------------------------------------------------------------
# The check.


def _probe_all(paths: list[Path], mode: str, max_pixels: int, workers: int | None) -> list[ImageFacts]:
    """Probe ``paths`` on a thread pool (PIL releases the GIL while it reads and decodes), with progress."""
    if not paths:
        return []
    n_threads = workers or min(8 if mode == "header" else 4, os.cpu_count() or 1)
    out: list[ImageFacts] = []
    with IterationProgress(f"checking images ({mode})", len(paths), enabled=len(paths) >= _PROGRESS_FROM) as bar, \
            ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        for facts in pool.map(lambda p: probe_image(p, mode, max_pixels), paths):
            out.append(facts)
            if len(out) % 64 == 0:
                bar.update(len(out))
    return out


def check_images(
    records: Sequence[ImageRecord],
    *,
    mode: str = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_file: Path | None = None,
    write_cache: bool = True,
    workers: int | None = None,
) -> ImageCheckReport:
    """Check the image of every record (see the module docstring); the file cache answers unchanged files."""
    if mode not in VERIFY_MODES:
        raise ConfigError(f"verify-images must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    if max_pixels < 1:
        raise ConfigError(f"the decoded-pixel budget must be >= 1, got {max_pixels}")
    cached = _load_cache(cache_file)
    known: dict[str, tuple[tuple[int, int, int], ImageFacts]] = {}
    facts_of: dict[str, ImageFacts] = {}
    todo: list[Path] = []
    for path in dict.fromkeys(Path(r.path) for r in records):
        key, hit = _stat_key(path), cached.get(str(path))
        if key is not None and hit is not None and hit[0] == key and hit[1].satisfies(mode, max_pixels):
            known[str(path)] = hit
            facts_of[str(path)] = hit[1]
        else:
            todo.append(path)
    for path, facts in zip(todo, _probe_all(todo, mode, max_pixels, workers), strict=True):
        facts_of[str(path)] = facts
        key = _stat_key(path)
        if key is not None:
            known[str(path)] = (key, facts)
    if cache_file is not None and write_cache and (todo or len(known) != len(cached)):
        _save_cache(cache_file, known)
    sizes: list[tuple[int, int] | None] = []
    skipped: list[ImageSkip] = []
    for r in records:
        v = verdict(facts_of[str(Path(r.path))], r, max_pixels)
        sizes.append(v if isinstance(v, tuple) else None)
        if isinstance(v, str):
            skipped.append(ImageSkip(str(r.image_id), str(r.path), v))
    return ImageCheckReport(sizes, skipped, opened=len(todo))


def log_skips(skipped: Sequence[ImageSkip], name: str) -> None:
    """One warning line for the images skipped (the full list goes into the roidb's ``removed``)."""
    if skipped:
        logger.warning("%s: %d image(s) failed the image check and are skipped; first: %s — `data inspect` lists "
                       "every one", name, len(skipped), skipped[0])
