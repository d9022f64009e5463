"""Checks shared by the detection file readers: JSON with the line of a syntax error, finite numbers, class lists."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frcnn_trt.errors import DatasetError

__all__ = ["GLOB_CHARS", "class_names_tuple", "is_number", "load_json"]

#: a detections path holding one of these is a glob pattern
GLOB_CHARS = frozenset("*?[")


def load_json(path: Path) -> Any:
    """The JSON value in ``path``; :class:`DatasetError` naming the file (and the line of a syntax error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read detections file ({e.strerror or e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def class_names_tuple(class_names: Sequence[str]) -> tuple[str, ...]:
    """``class_names`` as a tuple, checked to hold ``__background__`` and at least one class."""
    names = tuple(class_names)
    if len(names) < 2:
        raise ValueError(f"class_names must hold __background__ and at least one class, got {names!r}")
    return names


def is_number(v: Any) -> bool:
    """A finite JSON number (``bool`` is not one)."""
    return type(v) in (int, float) and math.isfinite(v)
