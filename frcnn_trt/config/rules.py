"""The value rules of the config table: each rule turns a YAML / ``--set`` value into the key's type and checks its
range, or raises :class:`~frcnn_trt.errors.ConfigError` naming the key and the value.

A rule is applied twice: when a value is read (:func:`frcnn_trt.config.from_dict`) and when a section is built
(``__post_init__`` of every section, so a config made in code or by :func:`dataclasses.replace` is checked the
same way). Rules are idempotent: a value they produced passes them again unchanged.

Numbers go through :func:`frcnn_trt.files.number` (booleans are not numbers, NaN/inf refused, integers beyond
63 bits refused, an integral float accepted for an integer); values are shown in messages through a bounded
``repr`` (:func:`show`), so a hostile value (a YAML alias bomb, a megabyte string) never costs more than its
first few elements.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from frcnn_trt.errors import ConfigError
from frcnn_trt.files import number

__all__ = ["Bool", "Choice", "Float", "Int", "Rule", "Seq", "Text", "show"]

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def show(value: Any) -> str:
    """A bounded ``repr`` of ``value`` for messages (a few elements, a few dozen characters)."""
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):  # an int beyond the digit limit, a self-referencing container
        return f"<{type(value).__name__}>"


class Rule(Protocol):
    """Parse and check one config value; ``describe`` is the range in words (docs, messages)."""

    def parse(self, key: str, value: Any) -> Any: ...

    def describe(self) -> str: ...


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bound(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    left = "" if lo is None else f"{'>' if lo_open else '≥'} {_num(lo)}"
    right = "" if hi is None else f"{'<' if hi_open else '≤'} {_num(hi)}"
    return " and ".join(p for p in (left, right) if p) or "any"


def _in_range(key: str, value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> None:
    """ConfigError naming ``key``, the bound it breaks and ``value`` when it lies outside ``[lo, hi]``."""
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{key} must be {'>' if lo_open else '≥'} {_num(lo)}, got {value!r}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise ConfigError(f"{key} must be {'<' if hi_open else '≤'} {_num(hi)}, got {value!r}")


@dataclass(frozen=True)
class Int:
    """An integer in ``[lo, hi]`` (an integral float such as ``3.0`` is accepted as ``3``)."""

    lo: int | None = None
    hi: int | None = None

    def parse(self, key: str, value: Any) -> int:
        if isinstance(value, str):
            raise ConfigError(f"{key}: expected an integer, got {show(value)}")
        out: int = number(value, key, integer=True, error=ConfigError)
        _in_range(key, out, self.lo, self.hi, False, False)
        return out

    def describe(self) -> str:
        return f"integer {_bound(self.lo, self.hi, False, False)}"


@dataclass(frozen=True)
class Float:
    """A finite number in ``[lo, hi]``; ``lo_open`` / ``hi_open`` exclude the end. With ``below_zero_means`` any
    negative value is accepted too (a sentinel such as py-faster-rcnn's ``RPN_POSITIVE_WEIGHT: -1``)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    below_zero_means: str = ""  # non-empty: any negative value is accepted and means this (a sentinel)

    def parse(self, key: str, value: Any) -> float:
        if isinstance(value, str):
            raise ConfigError(f"{key}: expected a number, got {show(value)}")
        out = float(number(value, key, error=ConfigError))
        if not (self.below_zero_means and out < 0):
            _in_range(key, out, self.lo, self.hi, self.lo_open, self.hi_open)
        return out

    def describe(self) -> str:
        text = f"finite number {_bound(self.lo, self.hi, self.lo_open, self.hi_open)}"
        return text + (f" (< 0: {self.below_zero_means})" if self.below_zero_means else "")


@dataclass(frozen=True)
class Bool:
    """``true`` / ``false`` (YAML booleans, or the words in any case from ``--set``)."""

    def parse(self, key: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        raise ConfigError(f"{key}: expected true/false, got {show(value)}")

    def describe(self) -> str:
        return "true/false"


def _text(key: str, value: Any, max_len: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key}: expected a string, got {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    text = value if isinstance(value, str) else str(value)
    if len(text) > max_len:
        raise ConfigError(f"{key}: {show(text)} is longer than {max_len} characters")
    if "\x00" in text:
        raise ConfigError(f"{key}: {show(text)} holds a NUL byte")
    return text


@dataclass(frozen=True)
class Text:
    """A string of at most ``max_len`` characters without NUL bytes; ``pattern`` (a full match) when given,
    ``relative_path``: a relative path that stays inside its folder (no ``..``, not absolute)."""

    max_len: int = 4096
    pattern: str = ""
    relative_path: bool = False
    meaning: str = ""

    def parse(self, key: str, value: Any) -> str:
        text = _text(key, value, self.max_len)
        if self.pattern and not re.fullmatch(self.pattern, text):
            raise ConfigError(f"{key}: {show(text)} is not {self.meaning or 'of the form ' + self.pattern}")
        if self.relative_path and (text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":")
                                   or ".." in re.split(r"[\\/]", text)):
            raise ConfigError(f"{key}: {show(text)} must be a relative folder name inside the output folder "
                              "(no absolute path, no '..')")
        return text

    def describe(self) -> str:
        return self.meaning or ("string" + (f" matching {self.pattern}" if self.pattern else ""))


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (case-insensitive when ``any_case``: the value is kept as written)."""

    choices: tuple[str, ...]
    any_case: bool = False
    what: str = "value"

    def parse(self, key: str, value: Any) -> str:
        text = _text(key, value, 256)
        known = {c.lower() for c in self.choices} if self.any_case else set(self.choices)
        if (text.lower() if self.any_case else text) in known:
            return text
        close = difflib.get_close_matches(text, self.choices, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{key}: unknown {self.what} {show(text)}{hint}; choose one of {', '.join(self.choices)}")

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Seq:
    """A tuple of values, each checked by ``item``: exactly ``length`` of them, or ``min_len``..``max_len``.
    A lone value is a one-element list, and any nesting of one list is flattened (py-faster-rcnn writes
    ``PIXEL_MEANS: [[[b, g, r]]]``)."""

    item: Int | Float | Text
    length: int | None = None
    min_len: int = 1
    max_len: int = 1024

    def parse(self, key: str, value: Any) -> tuple[Any, ...]:
        flat = value
        for _ in range(16):  # a bounded unwrap: a YAML alias chain cannot loop here
            if isinstance(flat, (list, tuple)) and len(flat) == 1 and isinstance(flat[0], (list, tuple)):
                flat = flat[0]
        if isinstance(flat, (int, float, str)) and not isinstance(flat, bool):
            flat = [flat]
        if not isinstance(flat, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {self.item.describe()}, got {show(value)}")
        if self.length is not None and len(flat) != self.length:
            raise ConfigError(f"{key}: expected {self.length} values, got {len(flat)} ({show(value)})")
        if not self.min_len <= len(flat) <= self.max_len:
            raise ConfigError(f"{key}: expected {self.min_len} to {self.max_len} values, got {len(flat)} "
                              f"({show(value)})")
        return tuple(self.item.parse(f"{key}[{i}]", v) for i, v in enumerate(flat))

    def describe(self) -> str:
        count = f"{self.length}" if self.length is not None else f"{self.min_len}..{self.max_len}"
        return f"{count} × {self.item.describe()}"


def check_section(section: Any, rules: dict[str, Rule], prefix: str, names: Sequence[str]) -> None:
    """Apply ``rules[prefix + name]`` to each field ``name`` of a (frozen) section, storing the parsed value."""
    for name in names:
        rule = rules.get(prefix + name)
        if rule is None:  # a nested section: checked by its own __post_init__
            continue
        value = getattr(section, name)
        parsed = rule.parse(prefix + name, value)
        if parsed is not value and (type(parsed) is not type(value) or parsed != value):
            object.__setattr__(section, name, parsed)
