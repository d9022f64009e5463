"""Typed, frozen configuration with py-faster-rcnn's key names and defaults.

py-faster-rcnn kept one global mutable ``cfg`` (``lib/fast_rcnn/config.py``) and mutated it inside each
training stage. Here a :class:`Config` is an immutable tree of dataclasses; a stage derives its own
config with :func:`dataclasses.replace` (see :func:`override`). Key names are py-faster-rcnn's
(``TRAIN.RPN_POSITIVE_OVERLAP``, ...), so its ``experiments/cfgs/*.yml`` files load as they are.

Sections added by frcnn-trt (not in py-faster-rcnn): ``MODEL`` (network and anchors), ``SOLVER`` (the
Caffe solver prototxt settings) and a few keys marked "frcnn-trt" in :mod:`frcnn_trt.config.sections`. Keys
py-faster-rcnn has but that mean nothing here (``ROOT_DIR``, ``MODELS_DIR``, ``MATLAB``, ``GPU_ID``,
``TRAIN.USE_PREFETCH``, ``TRAIN.SNAPSHOT_INFIX``, ``TEST.SVM``, ``TEST.PROPOSAL_METHOD``, ``DEDUP_BOXES``) are
accepted so that the original YAML files load, and are recorded, but have no effect.

Every key has a type and a range (:data:`frcnn_trt.config.sections.RULES`), checked wherever a config is
built; a YAML file is read through :func:`frcnn_trt.files.load_yaml` (regular files only, size and nesting
limits, byte-order mark removed) and ``--set`` values are parsed with limits of their own, so any bad input
ends in a :class:`~frcnn_trt.errors.ConfigError` naming the file, the key and the value.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from frcnn_trt.config.rules import show
from frcnn_trt.config.sections import (
    LR_POLICIES,
    NETS,
    ROI_OPS,
    RULES,
    AltOptConfig,
    Config,
    ModelConfig,
    SolverConfig,
    TestConfig,
    TrainConfig,
)
from frcnn_trt.errors import ConfigError
from frcnn_trt.files import MAX_NESTING, load_yaml
from frcnn_trt.io import atomic_write_text

#: the longest ``--set`` value read (a config value is never more than a few lines of text)
MAX_SET_VALUE = 1 << 16
#: the largest config file read
MAX_CONFIG_BYTES = 1 << 20


def _sections(cls: type) -> dict[str, type]:
    """The nested sections of a dataclass (``Config.TRAIN`` → TrainConfig, ...)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])}


def _unknown(key: str, candidates: Iterable[str]) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    return ConfigError(f"unknown config key {key if len(key) <= 200 else show(key)}{hint}")


def _build(cls: type, data: Any, base: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {show(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    sections = _sections(cls)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _unknown(full, names)
        if key in sections:
            changes[key] = _build(sections[key], value, getattr(base, key), f"{full}.")
        else:
            changes[key] = RULES[full].parse(full, value)
    return dataclasses.replace(base, **changes)


def from_dict(data: Mapping[str, Any], base: Config | None = None) -> Config:
    """Merge a nested mapping (YAML contents) into ``base`` (default: the defaults)."""
    return _build(Config, {} if data is None else data, base or Config(), "")


def load(path: str | Path, base: Config | None = None) -> Config:
    """Load a YAML config file (py-faster-rcnn's ``cfg_from_file``) on top of ``base``."""
    path = Path(path)
    data = load_yaml(path, "config file", max_bytes=MAX_CONFIG_BYTES, error=ConfigError)
    try:
        return from_dict(data, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _parse_value(key: str, text: str) -> Any:
    """Parse a ``--set`` value like py-faster-rcnn's ``literal_eval``, YAML-style as a fallback, plain text last."""
    if len(text) > MAX_SET_VALUE:
        raise ConfigError(f"--set {key}: the value is {len(text)} characters long (at most {MAX_SET_VALUE})")
    depth = max(text.count("["), text.count("("), text.count("{"))
    if depth > MAX_NESTING:
        raise ConfigError(f"--set {key}: the value nests deeper than {MAX_NESTING} levels")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass  # not a Python literal (a bare word, YAML syntax) or an integer beyond the digit limit
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        return text


def from_list(pairs: list[str] | tuple[str, ...], base: Config | None = None) -> Config:
    """Apply py-faster-rcnn's ``--set KEY VALUE KEY VALUE ...`` overrides (``cfg_from_list``)."""
    if len(pairs) % 2:
        raise ConfigError(f"--set takes KEY VALUE pairs; got an odd number of words: {show(' '.join(pairs))}")
    cfg = base or Config()
    for key, text in zip(pairs[0::2], pairs[1::2], strict=True):
        nested: dict[str, Any] = {}
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(key, text)
        try:
            cfg = from_dict(nested, cfg)
        except ConfigError as exc:
            if key in str(exc):
                raise
            raise ConfigError(f"--set {show(key)}: {exc}") from None
    return cfg


def override(cfg: Config, **sections: Mapping[str, Any] | Any) -> Config:
    """Return ``cfg`` with some keys changed, e.g. ``override(cfg, TRAIN={"HAS_RPN": True}, RNG_SEED=4)``."""
    return from_dict(sections, cfg)


_Section = Config | TrainConfig | TestConfig | ModelConfig | SolverConfig | AltOptConfig


def _section_dict(section: _Section) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, _Section):
            out[f.name] = _section_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def to_dict(cfg: Config) -> dict[str, Any]:
    """A plain nested dict (lists for tuples) suitable for YAML/JSON."""
    return _section_dict(cfg)


def dump(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def write_resolved(cfg: Config, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to a run's outputs (atomically)."""
    path = Path(directory) / name
    atomic_write_text(path, dump(cfg))
    return path


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def builtin(name: str) -> Path:
    """A config shipped in ``configs/`` (e.g. ``VGG16_end2end``); ConfigError listing them if absent."""
    path = CONFIG_DIR / (name if name.endswith((".yml", ".yaml")) else f"{name}.yml")
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yml"))
        close = difflib.get_close_matches(path.stem, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; shipped configs: {', '.join(names)}"
        raise ConfigError(f"no shipped config {name!r}{hint}")
    return path


def default_for(net: str, mode: str) -> Path:
    """The shipped config of ``net`` for ``mode`` ("end2end" | "alt_opt"), else py-faster-rcnn's yml."""
    path = CONFIG_DIR / f"{net}_{mode}.yml"
    return path if path.is_file() else CONFIG_DIR / f"faster_rcnn_{mode}.yml"


def resolve(cfg_files: Iterable[str | Path] = (), set_pairs: list[str] | tuple[str, ...] = (),
            base: Config | None = None) -> Config:
    """Defaults ← each YAML file in order ← ``--set`` pairs."""
    cfg = base or Config()
    for f in cfg_files:
        cfg = load(f, cfg)
    return from_list(list(set_pairs), cfg)


__all__ = [
    "LR_POLICIES",
    "NETS",
    "ROI_OPS",
    "RULES",
    "AltOptConfig",
    "Config",
    "ModelConfig",
    "SolverConfig",
    "TestConfig",
    "TrainConfig",
    "builtin",
    "default_for",
    "dump",
    "from_dict",
    "from_list",
    "load",
    "override",
    "resolve",
    "to_dict",
    "write_resolved",
]
