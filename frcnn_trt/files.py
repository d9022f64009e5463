"""Reading the files a user hands us without trusting them.

Every reader of a user file (annotations, image sets, class lists, COCO JSON, configs, detections files, sidecars,
export.json, proposals, weights) opens it through here, so the same faults end the same way everywhere:

- only regular files are read (a FIFO, a device or a folder is refused *before* it is opened for reading, and the
  open itself is non-blocking, so nothing waits forever on a pipe), and never more than a size limit;
- text is UTF-8 with an optional byte-order mark removed; an undecodable byte is an error naming the file and line
  (:func:`read_text`) or that line skipped and reported (:func:`read_lines`);
- JSON and YAML are refused when nested deeper than a limit, when they hold integers beyond Python's digit limit,
  or (JSON) the non-standard constants ``NaN`` / ``Infinity``;
- numbers are checked for type, finiteness and range by :func:`number`, paths confined to their folder by
  :func:`confined`.

Every refusal is the caller's :class:`~frcnn_trt.errors.FrcnnError` subclass with the file and the value in a
one-line message.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from frcnn_trt.errors import DatasetError, FrcnnError

__all__ = [
    "MAX_NESTING",
    "MAX_TEXT_BYTES",
    "check_regular_file",
    "confined",
    "decode_text",
    "is_finite_number",
    "load_json",
    "load_yaml",
    "number",
    "parse_json",
    "read_bytes",
    "read_lines",
    "read_prefix",
    "read_text",
    "short",
]

#: the default size limit of a text file (configs, sidecars, image sets, class lists)
MAX_TEXT_BYTES = 64 << 20
#: the deepest nesting of lists/objects accepted in JSON or YAML
MAX_NESTING = 64

_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def short(value: Any, limit: int = 60) -> str:
    """A bounded ``repr(value)`` of at most ``limit`` characters: messages name a value without building the
    repr of a megabyte string, a 5000-digit integer or a YAML alias bomb first."""
    bounded = reprlib.Repr()  # attributes, not keywords: Python 3.10 and 3.11 take none
    bounded.maxstring = bounded.maxother = bounded.maxlong = limit
    bounded.maxlist = bounded.maxtuple = bounded.maxdict = bounded.maxset = 4
    bounded.maxlevel = 2
    try:
        text = bounded.repr(value)
    except (ValueError, RecursionError):  # an int beyond the digit limit, a self-referencing container
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_regular_file(path: str | Path, what: str, error: type[FrcnnError] = DatasetError) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed); ``error`` when it is missing or not a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise error(f"{path}: {what} not found") from e
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise error(f"{short(str(path), 200)}: cannot read {what} ({getattr(e, 'strerror', None) or e})") from e
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or special file")
        raise error(f"{path}: {what} must be a regular file, this is {kind}")
    return st


def read_bytes(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES,
               error: type[FrcnnError] = DatasetError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ``error`` naming the file otherwise."""
    check_regular_file(path, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from e
    try:
        st = os.fstat(fd)  # the file opened may not be the file checked (a swap in between): check again
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {what} must be a regular file")
        if st.st_size > max_bytes:
            raise error(f"{path}: {what} is {st.st_size} bytes, over the limit of {max_bytes}")
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            data = fh.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from e
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{path}: {what} is over the limit of {max_bytes} bytes")
    return data


def read_prefix(path: str | Path, what: str, size: int,
                error: type[FrcnnError] = DatasetError) -> tuple[bytes, int]:
    """``(the first size bytes, the file's size)`` of a regular file (a binary header: safetensors, zip, npy);
    opened non-blocking like :func:`read_bytes`, ``error`` naming the file otherwise."""
    check_regular_file(path, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {what} must be a regular file")
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            return fh.read(size), st.st_size
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from e
    finally:
        if fd >= 0:
            os.close(fd)


def decode_text(data: bytes, path: str | Path, what: str, error: type[FrcnnError] = DatasetError) -> str:
    """UTF-8 text (a UTF-8 or UTF-16 byte-order mark removed); ``error`` naming the line of an undecodable byte."""
    encoding = "utf-8"
    for bom, enc in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom):], enc
            break
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{path}: {what} is not valid {encoding.upper()} text (line {line}, byte "
                    f"{data[e.start:e.start + 1]!r})") from e


def read_text(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES,
              error: type[FrcnnError] = DatasetError) -> str:
    """A regular file's text: size-limited, BOM removed, UTF-8 (or UTF-16 with its BOM); ``error`` otherwise."""
    return decode_text(read_bytes(path, what, max_bytes, error), path, what, error)


def read_lines(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES,
               error: type[FrcnnError] = DatasetError) -> tuple[list[str], list[str]]:
    """``(lines, problems)``: the file's lines (BOM removed, line ends stripped); an undecodable line is left out
    and named in ``problems`` (``"<file>:<line>: not UTF-8 text"``) so one bad line never costs the others."""
    data = read_bytes(path, what, max_bytes, error)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return decode_text(data, path, what, error).splitlines(), []
    lines: list[str] = []
    problems: list[str] = []
    for number_, raw in enumerate(data.splitlines(), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problems.append(f"{path}:{number_}: not UTF-8 text, line skipped")
    return lines, problems


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/dicts deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen: set[int] = set()
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= limit:
                return True
            if id(item) in seen:  # YAML aliases share objects: visit each once
                continue
            seen.add(id(item))
            children: Iterator[Any] = iter(item.values()) if isinstance(item, dict) else iter(item)
            stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(text: str, source: str | Path, what: str, max_nesting: int = MAX_NESTING,
               error: type[FrcnnError] = DatasetError, *, allow_nan: bool = False) -> Any:
    """``json.loads`` of ``text`` with every failure (syntax, NaN/Infinity, huge integers, nesting) as ``error``.
    ``allow_nan``: ``NaN``/``Infinity`` parse as floats instead, for a reader that checks each record's numbers
    itself and skips the bad record rather than the whole file."""
    try:
        value = json.loads(text, parse_constant=None if allow_nan else _refuse_constant)
    except json.JSONDecodeError as e:
        raise error(f"{source}: {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except ValueError as e:  # NaN/Infinity, an integer beyond Python's digit limit
        raise error(f"{source}: {what}: {e}") from e
    except RecursionError as e:
        raise error(f"{source}: {what} nests deeper than {max_nesting} levels") from e
    if _too_deep(value, max_nesting):
        raise error(f"{source}: {what} nests deeper than {max_nesting} levels")
    return value


def load_json(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES, max_nesting: int = MAX_NESTING,
              error: type[FrcnnError] = DatasetError, *, allow_nan: bool = False) -> Any:
    """The JSON value of a regular file, read and checked as :func:`read_text` and :func:`parse_json` do."""
    return parse_json(read_text(path, what, max_bytes, error), path, what, max_nesting, error, allow_nan=allow_nan)


def load_yaml(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES, max_nesting: int = MAX_NESTING,
              error: type[FrcnnError] = DatasetError) -> Any:
    """``yaml.safe_load`` of a regular file: size-limited, BOM removed, nesting-limited; ``error`` otherwise."""
    text = read_text(path, what, max_bytes, error)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        detail = " ".join(str(getattr(e, "problem", None) or e).split())  # one line: a ReaderError spans two
        raise error(f"{path}: {what} is not valid YAML{where}: {short(detail, 200)}") from e
    except (RecursionError, ValueError) as e:
        raise error(f"{path}: {what} cannot be read as YAML ({short(str(e), 120)})") from e
    if _too_deep(value, max_nesting):
        raise error(f"{path}: {what} nests deeper than {max_nesting} levels")
    return value


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (not a bool) with a finite float value: ``math.isfinite`` raises
    OverflowError on an integer beyond float range, this says False."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def number(value: Any, where: str, *, integer: bool = False, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, error: type[FrcnnError] = DatasetError) -> Any:
    """``value`` as a finite int (``integer``) or float within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``);
    ``error`` naming ``where`` and the value otherwise. Booleans are not numbers; an integral float is accepted
    where an integer is expected (``3.0`` → ``3``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where}: expected {'an integer' if integer else 'a number'}, got {short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{where}: expected a finite number, got {value}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise error(f"{where}: expected an integer, got {value}")
        value = int(value)
        if abs(value) >= 1 << 63:
            raise error(f"{where}: {short(value)} is out of range")
    else:
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            raise error(f"{where}: {short(value)} is out of range") from None
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise error(f"{where}: {short(value)} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise error(f"{where}: {short(value)} must be <= {hi}")
    return value


def confined(root: str | Path, name: str, where: str, error: type[FrcnnError] = DatasetError) -> Path:
    """``root / name``, refused when ``name`` is absolute, holds a NUL byte, or climbs out of ``root`` with
    ``..``. The check is on the name (a dataset may keep its images behind symlinks on purpose)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{where}: invalid file name {short(name)}")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise error(f"{where}: file name {short(name)} is an absolute path (it must stay inside {root})")
    norm = os.path.normpath(name.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise error(f"{where}: file name {short(name)} leads outside {root}")
    return Path(root) / norm
