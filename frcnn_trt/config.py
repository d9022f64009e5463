"""Typed, frozen configuration with py-faster-rcnn's key names and defaults.

py-faster-rcnn kept one global mutable ``cfg`` (``lib/fast_rcnn/config.py``) and mutated it inside each
training stage. Here a :class:`Config` is an immutable tree of dataclasses; a stage derives its own
config with :func:`dataclasses.replace` (see :func:`override`). Key names are py-faster-rcnn's
(``TRAIN.RPN_POSITIVE_OVERLAP``, ...), so its ``experiments/cfgs/*.yml`` files load as they are.

Sections added by frcnn-trt (not in py-faster-rcnn): ``MODEL`` (network and anchors), ``SOLVER`` (the
Caffe solver prototxt settings) and a few keys marked "frcnn-trt" below. Keys py-faster-rcnn has but
that mean nothing here (``ROOT_DIR``, ``MODELS_DIR``, ``MATLAB``, ``GPU_ID``, ``TRAIN.USE_PREFETCH``,
``TRAIN.SNAPSHOT_INFIX``, ``TEST.SVM``, ``TEST.PROPOSAL_METHOD``, ``DEDUP_BOXES``) are accepted so that
the original YAML files load, and are recorded, but have no effect.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from frcnn_trt.errors import ConfigError
from frcnn_trt.io import atomic_write_text

Floats4 = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrainConfig:
    """``cfg.TRAIN`` (``lib/fast_rcnn/config.py`` lines 33-124)."""

    SCALES: tuple[int, ...] = (600,)
    MAX_SIZE: int = 1000
    IMS_PER_BATCH: int = 2
    BATCH_SIZE: int = 128
    FG_FRACTION: float = 0.25
    FG_THRESH: float = 0.5
    BG_THRESH_HI: float = 0.5
    BG_THRESH_LO: float = 0.1
    USE_FLIPPED: bool = True
    BBOX_REG: bool = True
    BBOX_THRESH: float = 0.5
    SNAPSHOT_ITERS: int = 10000
    SNAPSHOT_INFIX: str = ""
    USE_PREFETCH: bool = False
    BBOX_NORMALIZE_TARGETS: bool = True
    BBOX_INSIDE_WEIGHTS: Floats4 = (1.0, 1.0, 1.0, 1.0)
    BBOX_NORMALIZE_TARGETS_PRECOMPUTED: bool = False
    BBOX_NORMALIZE_MEANS: Floats4 = (0.0, 0.0, 0.0, 0.0)
    BBOX_NORMALIZE_STDS: Floats4 = (0.1, 0.1, 0.2, 0.2)
    PROPOSAL_METHOD: str = "selective_search"
    ASPECT_GROUPING: bool = True
    HAS_RPN: bool = False
    RPN_POSITIVE_OVERLAP: float = 0.7
    RPN_NEGATIVE_OVERLAP: float = 0.3
    RPN_CLOBBER_POSITIVES: bool = False
    RPN_FG_FRACTION: float = 0.5
    RPN_BATCHSIZE: int = 256
    RPN_NMS_THRESH: float = 0.7
    RPN_PRE_NMS_TOP_N: int = 12000
    RPN_POST_NMS_TOP_N: int = 2000
    RPN_MIN_SIZE: int = 16
    RPN_BBOX_INSIDE_WEIGHTS: Floats4 = (1.0, 1.0, 1.0, 1.0)
    RPN_POSITIVE_WEIGHT: float = -1.0
    # frcnn-trt: difficult objects in training (py-faster-rcnn's pascal_voc ``use_diff``).
    USE_DIFF: bool = False
    # frcnn-trt: DataLoader worker processes for background prefetch.
    NUM_WORKERS: int = 2
    # frcnn-trt: host memory (MiB) for the conv features of training images while the shared conv is frozen
    # (alt-opt stage 2), reused each time an image comes round again; 0 = off (frcnn_trt.train.feature_cache).
    FEATURE_CACHE_MB: int = 2048
    # frcnn-trt: with the cache, images of mixed-size (zero-padded) batches use their own unpadded features, as at
    # test time, instead of their padded blob's: not py-faster-rcnn's numbers, but the cache serves those batches.
    FEATURE_CACHE_UNPADDED: bool = False


@dataclass(frozen=True)
class TestConfig:
    """``cfg.TEST`` (``lib/fast_rcnn/config.py`` lines 131-164) plus test_net's arguments."""

    __test__ = False  # not a pytest class

    SCALES: tuple[int, ...] = (600,)
    MAX_SIZE: int = 1000
    NMS: float = 0.3
    SVM: bool = False
    BBOX_REG: bool = True
    HAS_RPN: bool = False
    PROPOSAL_METHOD: str = "selective_search"
    RPN_NMS_THRESH: float = 0.7
    RPN_PRE_NMS_TOP_N: int = 6000
    RPN_POST_NMS_TOP_N: int = 300
    RPN_MIN_SIZE: int = 16
    # frcnn-trt: test_net.py's ``thresh`` (scores > this are kept) and ``max_per_image``.
    SCORE_THRESH: float = 0.05
    MAX_PER_IMAGE: int = 100


@dataclass(frozen=True)
class ModelConfig:
    """frcnn-trt: the network and its anchors (prototxt ``param_str`` values in py-faster-rcnn)."""

    NET: str = "VGG16"
    ANCHOR_SCALES: tuple[float, ...] = (8.0, 16.0, 32.0)
    ANCHOR_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
    FEAT_STRIDE: int = 16
    #: frcnn-trt: the RoI feature op of the Fast R-CNN head: ``RoIPool`` (py-faster-rcnn's Caffe max pooling,
    #: the default) or ``RoIAlign`` (torchvision's bilinear op, exported as the standard ONNX ``RoiAlign``)
    ROI_OP: str = "RoIPool"
    #: frcnn-trt: RoIAlign's bilinear samples per bin side (torchvision's Faster R-CNN uses 2); 0 = adaptive,
    #: ``ceil(RoI side / pooled side)`` as in torchvision (``-1``) and ONNX (``0``). Unused by RoIPool.
    ROI_ALIGN_SAMPLING_RATIO: int = 2

    def __post_init__(self) -> None:
        if self.ROI_OP not in ROI_OPS:
            close = difflib.get_close_matches(self.ROI_OP, ROI_OPS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"MODEL.ROI_OP: unknown RoI op {self.ROI_OP!r}{hint}; choose one of "
                              f"{', '.join(ROI_OPS)}")
        if self.ROI_ALIGN_SAMPLING_RATIO < 0:
            raise ConfigError(f"MODEL.ROI_ALIGN_SAMPLING_RATIO must be ≥ 0 (0 = adaptive), got "
                              f"{self.ROI_ALIGN_SAMPLING_RATIO}")


#: the values of ``MODEL.ROI_OP`` (frcnn_trt.model.faster_rcnn builds the op)
ROI_OPS = ("RoIPool", "RoIAlign")


@dataclass(frozen=True)
class SolverConfig:
    """frcnn-trt: the Caffe solver prototxt (docs/REFERENCE.md §8; ``stage*_solver*.pt`` / ``solver.prototxt``)."""

    BASE_LR: float = 0.001
    LR_POLICY: str = "step"
    GAMMA: float = 0.1
    STEPSIZE: int = 50000
    MAX_ITERS: int = 70000
    MOMENTUM: float = 0.9
    WEIGHT_DECAY: float = 0.0005
    ITER_SIZE: int = 1
    BIAS_LR_MULT: float = 2.0
    BIAS_DECAY: bool = True
    # Caffe's update v = m*v + lr*(g + wd*w); w -= v. Off: torch.optim.SGD (v = m*v + g; w -= lr*v).
    CAFFE_MOMENTUM: bool = False
    DISPLAY: int = 20
    # Under torchrun: multiply BASE_LR (and the alt-opt BASE_LRS) by the number of processes (linear scaling
    # for the W-times larger global batch). Off: the configured rate is used as it is (both are logged).
    SCALE_LR_WITH_WORLD_SIZE: bool = False


@dataclass(frozen=True)
class AltOptConfig:
    """frcnn-trt: the four-stage schedule of ``tools/train_faster_rcnn_alt_opt.py`` (docs/REFERENCE.md §9).

    Order of the 4-tuples: stage-1 RPN, stage-1 Fast R-CNN, stage-2 RPN, stage-2 Fast R-CNN.
    """

    ITERS: tuple[int, int, int, int] = (80000, 40000, 80000, 40000)
    STEPSIZES: tuple[int, int, int, int] = (60000, 30000, 60000, 30000)
    BASE_LRS: Floats4 = (0.001, 0.001, 0.001, 0.001)
    RPN_IMS_PER_BATCH: int = 1
    FAST_RCNN_IMS_PER_BATCH: int = 2


@dataclass(frozen=True)
class Config:
    """The whole configuration tree (py-faster-rcnn's ``cfg``)."""

    TRAIN: TrainConfig = field(default_factory=TrainConfig)
    TEST: TestConfig = field(default_factory=TestConfig)
    MODEL: ModelConfig = field(default_factory=ModelConfig)
    SOLVER: SolverConfig = field(default_factory=SolverConfig)
    ALT_OPT: AltOptConfig = field(default_factory=AltOptConfig)
    DEDUP_BOXES: float = 1.0 / 16.0
    PIXEL_MEANS: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)
    RNG_SEED: int = 3
    EPS: float = 1e-14
    ROOT_DIR: str = ""
    DATA_DIR: str = "data"
    MODELS_DIR: str = ""
    MATLAB: str = "matlab"
    EXP_DIR: str = "default"
    USE_GPU_NMS: bool = True
    GPU_ID: int = 0
    # frcnn-trt: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    DEVICE: str = "auto"
    # frcnn-trt: mixed precision (autocast) for training on a GPU.
    AMP: bool = False


# --------------------------------------------------------------------------------------------------
# Coercion of YAML / command-line values into the declared field types.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_tuple(key: str, value: Any, tp: Any) -> tuple[Any, ...]:
    """``value`` as the tuple type ``tp`` (``tuple[T, ...]`` or a fixed length); a lone number is one value."""
    args = typing.get_args(tp)
    flat = value
    # PIXEL_MEANS is written [[[b, g, r]]] in py-faster-rcnn: accept any nesting of one element.
    while isinstance(flat, (list, tuple)) and len(flat) == 1 and isinstance(flat[0], (list, tuple)):
        flat = flat[0]
    if isinstance(flat, (int, float)) and not isinstance(flat, bool):
        flat = [flat]
    if not isinstance(flat, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        if not flat:
            raise ConfigError(f"{key}: expected at least one value, got {value!r}")
        return tuple(_coerce(key, v, args[0]) for v in flat)
    if len(flat) != len(args):
        raise ConfigError(f"{key}: expected {len(args)} values, got {len(flat)} ({value!r})")
    return tuple(_coerce(key, v, a) for v, a in zip(flat, args, strict=True))


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise ConfigError(f"{key}: expected true/false, got {value!r}")


def _coerce_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return int(value)


def _coerce_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _coerce_str(key: str, value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return str(value)


_SCALARS: dict[type, Callable[[str, Any], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ConfigError naming ``key``."""
    if typing.get_origin(tp) is tuple:
        return _coerce_tuple(key, value, tp)
    scalar = _SCALARS.get(tp)
    if scalar is None:  # pragma: no cover - schema bug
        raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")
    return scalar(key, value)


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, candidates: Iterable[str]) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    return ConfigError(f"unknown config key {key}{hint}")


def _build(cls: type, data: Mapping[str, Any], base: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    types_ = _fields(cls)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types_:
            raise _unknown(full, types_)
        tp = types_[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            changes[key] = _build(tp, value, getattr(base, key), f"{full}.")
        else:
            changes[key] = _coerce(full, value, tp)
    return dataclasses.replace(base, **changes)


def from_dict(data: Mapping[str, Any], base: Config | None = None) -> Config:
    """Merge a nested mapping (YAML contents) into ``base`` (default: the defaults)."""
    return _build(Config, data or {}, base or Config(), "")


def load(path: str | Path, base: Config | None = None) -> Config:
    """Load a YAML config file (py-faster-rcnn's ``cfg_from_file``) on top of ``base``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    try:
        return from_dict(data or {}, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _parse_value(text: str) -> Any:
    """Parse a ``--set`` value like py-faster-rcnn's ``literal_eval``, YAML-style as a fallback."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


def from_list(pairs: list[str] | tuple[str, ...], base: Config | None = None) -> Config:
    """Apply py-faster-rcnn's ``--set KEY VALUE KEY VALUE ...`` overrides (``cfg_from_list``)."""
    if len(pairs) % 2:
        raise ConfigError(f"--set takes KEY VALUE pairs; got an odd number of words: {' '.join(pairs)}")
    cfg = base or Config()
    for key, text in zip(pairs[0::2], pairs[1::2], strict=True):
        nested: dict[str, Any] = {}
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(text)
        cfg = from_dict(nested, cfg)
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


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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
    "ROI_OPS",
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
