"""What to build and how: the engines of an export (:class:`EngineSpec`), builder settings, precision.

Glossary: a *profile* is ``{input name: (min, opt, max)}`` shapes (``export.json`` → ``shape_profiles``).

Precision (:func:`resolve_precision`) is decided by feature detection on the loaded TensorRT, not by version
string: a TensorRT with ``BuilderFlag.FP16`` (10.x) builds an FP16 ONNX as a strongly typed network, or an
FP32 ONNX with the FP16 builder flag; one without it (TensorRT 11, TensorRT-RTX: networks are always
strongly typed) takes FP16 only from an FP16 ONNX (``frcnn-trt export --fp16``) and refuses to pretend
otherwise.

The detector's RoI op decides its plugins: the custom ``frcnn::RoIPool`` node needs our plugin
(:mod:`frcnn_trt.engines.tensorrt.plugin`); ONNX ``RoiAlign`` (``MODEL.ROI_OP: RoIAlign``) goes through
TensorRT's standard plugin library (``ROIAlign_TRT``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frcnn_trt.engines.export_format import DETECTOR_FILE, RPN_FILE, ExportInfo
from frcnn_trt.engines.tensorrt.runtime import Shape, TensorRTInfo
from frcnn_trt.errors import BackendError, ExportError

__all__ = [
    "ENGINE_NAMES",
    "PRECISIONS",
    "BuildSettings",
    "EngineSpec",
    "PrecisionPlan",
    "Profile",
    "engine_specs",
    "parse_cc",
    "resolve_precision",
]

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16")
ENGINE_NAMES: tuple[str, ...] = ("rpn", "detector")
ONNX_FILES: dict[str, str] = {"rpn": RPN_FILE, "detector": DETECTOR_FILE}

Profile = dict[str, tuple[Shape, Shape, Shape]]


# ------------------------------------------------------------------------------------------------ specs


@dataclass(frozen=True)
class EngineSpec:
    """One engine to build: its ONNX file, the optimisation profile of each dynamic input, its plugins."""

    name: str
    onnx: Path
    onnx_sha256: str
    onnx_precision: str
    profile: Profile
    #: needs our ``frcnn::RoIPool`` plugin (a detector graph with the custom RoIPool node)
    plugin: bool = False
    #: needs TensorRT's standard plugin library (a detector graph with ONNX ``RoiAlign``)
    standard_plugins: bool = False
    #: ``export.json``'s RoI op (type, pooled_shape, spatial_scale, ...) for the detector
    roi_op: Mapping[str, Any] = field(default_factory=dict)


def _shape(value: Any, where: str) -> Shape:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ExportError(f"{where}: expected a list of non-negative ints, got {value!r}")
    return tuple(int(v) for v in value)


def _profile(raw: Any, where: str) -> Profile:
    if not isinstance(raw, Mapping) or not raw:
        raise ExportError(f"{where}: no shape profile")
    out: Profile = {}
    for name, mm in raw.items():
        if not isinstance(mm, Mapping) or not {"min", "opt", "max"} <= set(mm):
            raise ExportError(f"{where}[{name!r}]: needs min, opt and max shapes, got {mm!r}")
        lo, opt, hi = (_shape(mm[k], f"{where}[{name!r}].{k}") for k in ("min", "opt", "max"))
        if not len(lo) == len(opt) == len(hi) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ExportError(f"{where}[{name!r}]: need min ≤ opt ≤ max of one rank, got {lo}, {opt}, {hi}")
        out[str(name)] = (lo, opt, hi)
    return out


def _engine_spec(info: ExportInfo, name: str, profiles: Mapping[str, Any], where: str) -> EngineSpec:
    if name not in ONNX_FILES:
        raise BackendError(f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}")
    onnx_name = ONNX_FILES[name]
    entry = info.data["files"].get(onnx_name)
    if entry is None:
        raise ExportError(f"{where}: files lacks {onnx_name}")
    detector = name == "detector"
    return EngineSpec(
        name=name,
        onnx=info.directory / onnx_name,
        onnx_sha256=str(entry["sha256"]),
        onnx_precision=str(info.data["precision"].get(onnx_name, "fp32")),
        profile=_profile(profiles.get(onnx_name), f"{where} shape_profiles[{onnx_name!r}]"),
        plugin=detector and info.needs_roi_pool_plugin,
        standard_plugins=detector and not info.needs_roi_pool_plugin,
        roi_op=info.roi_op if detector else {},
    )


def engine_specs(info: ExportInfo, names: Sequence[str] = ENGINE_NAMES) -> list[EngineSpec]:
    """The engines of an export, with profiles from ``export.json`` (ExportError when they are missing)."""
    where = f"{info.directory / 'export.json'}"
    profiles = info.data.get("shape_profiles")
    if not isinstance(profiles, Mapping):
        raise ExportError(f"{where} has no shape_profiles: re-export with this frcnn-trt")
    return [_engine_spec(info, name, profiles, where) for name in names]


# ------------------------------------------------------------------------------------------------ settings


def parse_cc(cc: str) -> tuple[int, int]:
    """``"8.6"`` → ``(8, 6)``; BackendError for anything else."""
    parts = str(cc).split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise BackendError(f"compute capability must look like '8.6', got {cc!r}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class BuildSettings:
    """Builder settings that change the plan (all part of the cache key).

    ``precision``: ``"auto"`` (what the ONNX holds), ``"fp32"``, ``"fp16"``. ``compute_capability``:
    ``"8.6"``-style target; ``None`` = the GPU's (required for TensorRT-RTX on a machine without one).
    ``plugin_impl``: ``"aot"`` (kernel in the engine; runs without Python) or ``"jit"`` (torchvision
    through Python; debugging)."""

    precision: str = "auto"
    workspace_mib: int = 4096
    optimization_level: int | None = None
    refit: bool = False
    compute_capability: str | None = None
    plugin_impl: str = "aot"
    timing_cache: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mib < 1:
            raise BackendError(f"workspace_mib must be ≥ 1, got {self.workspace_mib}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise BackendError(f"optimization_level must be 0..5, got {self.optimization_level}")
        if self.plugin_impl not in ("aot", "jit"):
            raise BackendError(f"plugin_impl must be 'aot' or 'jit', got {self.plugin_impl!r}")
        if self.compute_capability is not None:
            parse_cc(self.compute_capability)


# ------------------------------------------------------------------------------------------------ precision


@dataclass(frozen=True)
class PrecisionPlan:
    """How one engine gets its precision: the effective precision and how it was asked of TensorRT."""

    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    note: str


def _fp16_onnx_plan(want: str, info: TensorRTInfo, what: str) -> PrecisionPlan:
    if want != "fp16":
        raise BackendError(f"{what} is an FP16 export: TensorRT builds the types the graph holds, so FP32 "
                           "needs an FP32 export (`frcnn-trt export` without --fp16), or ask for fp16/auto")
    if info.always_strongly_typed:
        return PrecisionPlan("fp16", True, (), f"FP16 from the FP16 ONNX ({info.label}: strongly typed)")
    typed = info.strongly_typed_flag
    return PrecisionPlan("fp16", typed, (), "FP16 from the FP16 ONNX" + (" (strongly typed network)" if typed else ""))


def resolve_precision(onnx_precision: str, requested: str, info: TensorRTInfo, what: str = "the ONNX"
                      ) -> PrecisionPlan:
    """Decide precision by what TensorRT offers. Never silently changes the request: a precision that this
    TensorRT cannot give raises :class:`BackendError` naming what to do instead."""
    want = onnx_precision if requested == "auto" else requested
    if onnx_precision not in ("fp32", "fp16"):
        raise BackendError(f"{what}: unknown precision {onnx_precision!r} in export.json")
    if onnx_precision == "fp16":
        return _fp16_onnx_plan(want, info, what)
    if want == "fp32":
        typed = info.strongly_typed_flag and not info.always_strongly_typed
        return PrecisionPlan("fp32", typed or info.always_strongly_typed, (), "FP32 ONNX built as FP32")
    # fp16 from an fp32 ONNX: only a weakly typed TensorRT (the FP16 builder flag) can do that
    if info.fp16_flag:
        return PrecisionPlan("fp16", False, ("FP16",),
                             "FP32 ONNX with BuilderFlag.FP16 (TensorRT picks FP16 kernels where faster)")
    raise BackendError(f"{info.label} has no FP16 builder flag (networks are strongly typed), so FP16 must come "
                       f"from the graph and {what} is FP32: export with `frcnn-trt export --fp16`")
