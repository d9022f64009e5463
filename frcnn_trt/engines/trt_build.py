"""TensorRT engines from an export: optimisation profiles, precision, engine cache, timing cache, refit.

Glossary: ``N`` images, ``H × W`` blob size, ``C`` feature channels, ``H' × W'`` feature map, ``R`` RoIs;
a *profile* is ``{input name: (min, opt, max)}`` shapes (``export.json`` → ``shape_profiles``); a *flavour*
is which TensorRT Python module builds: ``"tensorrt"`` (TensorRT 10 / 11, needs a CUDA GPU) or
``"tensorrt_rtx"`` (TensorRT for RTX: builds on a CPU-only machine for a named compute capability, no
Python plugins; used here to prove parsing and building in CI).

What a build does (:func:`build_engine`):

1. **precision** (:func:`resolve_precision`), by feature detection on the loaded module, not by version
   string: a TensorRT with ``BuilderFlag.FP16`` (10.x) builds an FP16 ONNX as a strongly typed network, or an
   FP32 ONNX with the FP16 builder flag; one without it (TensorRT 11, TensorRT-RTX: networks are always
   strongly typed) takes FP16 only from an FP16 ONNX (``frcnn-trt export --fp16``) and refuses to pretend
   otherwise;
2. **cache key** (:func:`engine_key`): ONNX SHA-256, profile, precision and builder settings, TensorRT
   flavour + version, GPU compute capability and, for ``detector``, the RoIPool plugin and its kernel
   source. ``<cache>/<engine>-<key>.engine`` + a JSON sidecar; a hit is checked against the sidecar's
   SHA-256; a miss says why (what differs from the newest other engine of that name); ``force`` rebuilds;
3. **plugin first**: for ``detector.onnx`` the ``frcnn::RoIPool`` plugin is registered before parsing, and a
   missing creator fails fast naming what was searched and the TensorRT version;
4. parse, workspace limit, profile, timing cache (loaded, then saved atomically after the build; TensorRT-RTX
   has none), ``build_serialized_network``, atomic write.

:func:`refit_engine` swaps the weights of a refittable engine (``BuildSettings(refit=True)``) for those of
another ONNX of the same graph; :func:`refit_from` does it through the cache (alt-opt: the stage-2 RPN from
the stage-1 engine); :func:`same_graph` checks the "same graph" part on the ONNX files (note: the exporter
drops all-zero biases, so "same architecture" is not always "same graph"). :func:`build_export_engines` is
what ``frcnn-trt export`` calls: it builds when TensorRT and a GPU are here and otherwise returns what it did
not build and why.

The module-level ``trt`` is the TensorRT module, type-checked against ``tensorrt-stubs`` and resolved on
first use (to ``tensorrt`` or, inside :func:`use_flavour`, ``tensorrt_rtx``): importing this file never
needs TensorRT.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from frcnn_trt.errors import BackendError, ExportError
from frcnn_trt.io import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file

if TYPE_CHECKING:
    import tensorrt as trt

    from frcnn_trt.engines.export_format import ExportInfo

__all__ = [
    "ENGINE_NAMES",
    "FLAVOURS",
    "INSTALL_HINTS",
    "PRECISIONS",
    "BuildSettings",
    "EngineBuildReport",
    "EngineResult",
    "EngineSpec",
    "ParseResult",
    "PrecisionPlan",
    "TensorRTInfo",
    "build_engine",
    "build_engines",
    "build_export_engines",
    "dims_tuple",
    "engine_key",
    "engine_specs",
    "load_tensorrt",
    "parse_onnx",
    "probe_tensorrt",
    "refit_engine",
    "refit_from",
    "resolve_precision",
    "same_graph",
    "tensorrt_info",
    "use_flavour",
]

log = logging.getLogger("frcnn_trt.engines.tensorrt")

FLAVOURS: tuple[str, ...] = ("tensorrt", "tensorrt_rtx")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16")
ENGINE_NAMES: tuple[str, ...] = ("rpn", "detector")
#: import names tried per flavour (the RTX metapackage provides ``tensorrt_rtx``; its bindings wheel alone
#: provides ``tensorrt_rtx_bindings``)
_IMPORTS: dict[str, tuple[str, ...]] = {"tensorrt": ("tensorrt",),
                                        "tensorrt_rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}
INSTALL_HINTS: dict[str, str] = {
    "tensorrt": "pip install 'tensorrt-cu13>=10.9'  (or tensorrt-cu12 for a CUDA 12 driver; "
                "needs an NVIDIA GPU and NVIDIA's package index)",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
}
CACHE_FORMAT = 1
_ONNX_FILES = {"rpn": "rpn.onnx", "detector": "detector.onnx"}
DEFAULT_CACHE_DIRNAME = "engines"


# ------------------------------------------------------------------------------------------------ the module


_FLAVOUR: contextvars.ContextVar[str] = contextvars.ContextVar("frcnn_trt_tensorrt_flavour", default="tensorrt")
_LOADED: dict[str, ModuleType] = {}


def load_tensorrt(flavour: str = "tensorrt") -> ModuleType:
    """The TensorRT Python module of ``flavour``; :class:`BackendError` with the install command if absent.

    ``tensorrt-stubs`` alone leaves an importable but empty ``tensorrt`` namespace package: that counts as
    absent (the error says so)."""
    if flavour not in FLAVOURS:
        raise BackendError(f"unknown TensorRT flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    if flavour in _LOADED:
        return _LOADED[flavour]
    problems: list[str] = []
    for name in _IMPORTS[flavour]:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"import {name}: {exc}")
            continue
        except Exception as exc:  # a broken install (missing libnvinfer, CUDA mismatch) raises other types
            problems.append(f"import {name}: {type(exc).__name__}: {exc}")
            continue
        if not hasattr(module, "Builder") or not hasattr(module, "__version__"):
            paths = [str(p) for p in getattr(module, "__path__", None) or []]
            where = str(paths) if paths else str(getattr(module, "__file__", "?"))
            problems.append(f"import {name}: found {where}, which holds no TensorRT library (only type stubs "
                            "such as tensorrt-stubs, or a metapackage whose libraries failed to install)")
            continue
        _LOADED[flavour] = module
        return module
    raise BackendError(f"{'TensorRT' if flavour == 'tensorrt' else 'TensorRT-RTX'} is not available: "
                       + "; ".join(problems) + f". Install: {INSTALL_HINTS[flavour]}")


class _LazyTensorRT:
    """Stands for the TensorRT module of the current flavour (see :func:`use_flavour`) until first use."""

    def __getattr__(self, name: str) -> Any:
        return getattr(load_tensorrt(_FLAVOUR.get()), name)

    def __repr__(self) -> str:
        return f"<lazy TensorRT module, flavour {_FLAVOUR.get()}>"


if not TYPE_CHECKING:
    trt = _LazyTensorRT()


@contextlib.contextmanager
def use_flavour(flavour: str) -> Iterator[ModuleType]:
    """Within the block, this package's ``trt`` is ``flavour``'s module (loaded, or BackendError)."""
    module = load_tensorrt(flavour)
    token = _FLAVOUR.set(flavour)
    try:
        yield module
    finally:
        _FLAVOUR.reset(token)


@dataclass(frozen=True)
class TensorRTInfo:
    """What the loaded TensorRT can do, found by feature detection (attributes), not version parsing."""

    flavour: str
    module: str
    version: str
    #: ``BuilderFlag.FP16`` exists (TensorRT ≤ 10): FP32 ONNX may be built with FP16 kernels
    fp16_flag: bool
    #: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists
    strongly_typed_flag: bool
    #: ``BuilderFlag.REFIT`` and ``Refitter`` exist
    refit: bool
    #: the ONNX parser can refit weights (``OnnxParserRefitter``)
    onnx_refitter: bool
    #: ``ComputeCapability`` targets the builder accepts (TensorRT-RTX), e.g. ``("7.5", "8.6")``
    compute_capabilities: tuple[str, ...] = ()

    @property
    def always_strongly_typed(self) -> bool:
        """No weak typing (TensorRT 11, TensorRT-RTX): precision comes from the ONNX alone."""
        return not self.fp16_flag

    @property
    def label(self) -> str:
        return f"{'TensorRT' if self.flavour == 'tensorrt' else 'TensorRT-RTX'} {self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["always_strongly_typed"] = self.always_strongly_typed
        return d


def tensorrt_info(flavour: str = "tensorrt") -> TensorRTInfo:
    """Feature-detect the TensorRT module of ``flavour`` (BackendError when it is absent)."""
    module = load_tensorrt(flavour)
    bf = getattr(module, "BuilderFlag", None)
    nf = getattr(module, "NetworkDefinitionCreationFlag", None)
    cc_enum = getattr(module, "ComputeCapability", None)
    ccs: list[str] = []
    if cc_enum is not None:
        for name in dir(cc_enum):
            if name.startswith("SM") and name[2:].isdigit():
                digits = name[2:]
                ccs.append(f"{digits[:-1]}.{digits[-1]}")
    return TensorRTInfo(
        flavour=flavour,
        module=module.__name__,
        version=str(module.__version__),
        fp16_flag=hasattr(bf, "FP16"),
        strongly_typed_flag=hasattr(nf, "STRONGLY_TYPED"),
        refit=hasattr(bf, "REFIT") and hasattr(module, "Refitter"),
        onnx_refitter=hasattr(module, "OnnxParserRefitter"),
        compute_capabilities=tuple(sorted(ccs, key=lambda s: tuple(int(p) for p in s.split(".")))),
    )


def probe_tensorrt(flavour: str = "tensorrt") -> tuple[TensorRTInfo | None, str]:
    """``(info or None, one line)``: never raises (for ``doctor`` and backend availability)."""
    try:
        info = tensorrt_info(flavour)
    except BackendError as exc:
        return None, str(exc)
    return info, info.label


# ------------------------------------------------------------------------------------------------ logging


class _Logger:
    """A TensorRT ``ILogger`` forwarding to :mod:`logging` and keeping the lines of one build (for errors).

    Built lazily (the base class lives in the TensorRT module)."""

    @staticmethod
    def create(verbose: bool = False, forward: bool = True) -> Any:
        base = trt.ILogger

        class CapturingLogger(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)
                self.lines: list[tuple[str, str]] = []
                self.verbose = verbose

            def log(self, severity: Any, msg: str) -> None:
                level = getattr(severity, "name", str(severity))
                self.lines.append((level, msg))
                if not forward:
                    return
                if level in ("INTERNAL_ERROR", "ERROR"):
                    log.error("TensorRT: %s", msg)
                elif level == "WARNING":
                    log.warning("TensorRT: %s", msg)
                elif self.verbose:
                    log.debug("TensorRT %s: %s", level.lower(), msg)

            def errors(self) -> list[str]:
                return [m for lvl, m in self.lines if lvl in ("INTERNAL_ERROR", "ERROR")]

        return CapturingLogger()


# ------------------------------------------------------------------------------------------------ specs


Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


def dims_tuple(dims: trt.Dims) -> Shape:
    """A TensorRT ``Dims`` as a tuple of ints (``-1`` = dynamic)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclass(frozen=True)
class EngineSpec:
    """One engine to build: its ONNX file and the optimisation profile of each dynamic input."""

    name: str
    onnx: Path
    onnx_sha256: str
    onnx_precision: str
    profile: Profile
    #: needs the ``frcnn::RoIPool`` plugin (``detector``)
    plugin: bool = False
    #: ``export.json``'s ``roi_pool`` section (pooled_shape, spatial_scale) for the detector
    roi_pool: Mapping[str, Any] = field(default_factory=dict)


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


def engine_specs(info: ExportInfo, names: Sequence[str] = ENGINE_NAMES) -> list[EngineSpec]:
    """The engines of an export, with profiles from ``export.json`` (ExportError when they are missing)."""
    d = info.data
    where = f"{info.directory / 'export.json'}"
    profiles = d.get("shape_profiles")
    if not isinstance(profiles, Mapping):
        raise ExportError(f"{where} has no shape_profiles: re-export with this frcnn-trt")
    specs = []
    for name in names:
        if name not in _ONNX_FILES:
            raise BackendError(f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}")
        onnx_name = _ONNX_FILES[name]
        entry = d["files"].get(onnx_name)
        if entry is None:
            raise ExportError(f"{where}: files lacks {onnx_name}")
        specs.append(EngineSpec(
            name=name,
            onnx=info.directory / onnx_name,
            onnx_sha256=str(entry["sha256"]),
            onnx_precision=str(d["precision"].get(onnx_name, "fp32")),
            profile=_profile(profiles.get(onnx_name), f"{where} shape_profiles[{onnx_name!r}]"),
            plugin=name == "detector",
            roi_pool=dict(d.get("roi_pool") or {}) if name == "detector" else {},
        ))
    return specs


# ------------------------------------------------------------------------------------------------ settings


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
            _parse_cc(self.compute_capability)


def _parse_cc(cc: str) -> tuple[int, int]:
    parts = str(cc).split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise BackendError(f"compute capability must look like '8.6', got {cc!r}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class PrecisionPlan:
    """How one engine gets its precision: the effective precision and how it was asked of TensorRT."""

    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    note: str


def resolve_precision(onnx_precision: str, requested: str, info: TensorRTInfo, what: str = "the ONNX"
                      ) -> PrecisionPlan:
    """Decide precision by what TensorRT offers. Never silently changes the request: a precision that this
    TensorRT cannot give raises :class:`BackendError` naming what to do instead."""
    want = onnx_precision if requested == "auto" else requested
    if onnx_precision not in ("fp32", "fp16"):
        raise BackendError(f"{what}: unknown precision {onnx_precision!r} in export.json")
    if onnx_precision == "fp16":
        if want != "fp16":
            raise BackendError(f"{what} is an FP16 export: TensorRT builds the types the graph holds, so FP32 "
                               "needs an FP32 export (`frcnn-trt export` without --fp16), or ask for fp16/auto")
        if info.always_strongly_typed:
            return PrecisionPlan("fp16", True, (), f"FP16 from the FP16 ONNX ({info.label}: strongly typed)")
        typed = info.strongly_typed_flag
        return PrecisionPlan("fp16", typed, (),
                             "FP16 from the FP16 ONNX" + (" (strongly typed network)" if typed else ""))
    if want == "fp32":
        typed = info.strongly_typed_flag and not info.always_strongly_typed
        return PrecisionPlan("fp32", typed or info.always_strongly_typed, (), "FP32 ONNX built as FP32")
    # fp16 from an fp32 ONNX: only a weakly typed TensorRT (the FP16 builder flag) can do that
    if info.fp16_flag:
        return PrecisionPlan("fp16", False, ("FP16",),
                             "FP32 ONNX with BuilderFlag.FP16 (TensorRT picks FP16 kernels where faster)")
    raise BackendError(f"{info.label} has no FP16 builder flag (networks are strongly typed), so FP16 must come "
                       f"from the graph and {what} is FP32: export with `frcnn-trt export --fp16`")


# ------------------------------------------------------------------------------------------------ cache


def _kernel_sha256() -> str:
    from frcnn_trt.engines.plugin.kernel import _raw_source

    return sha256_bytes(_raw_source().encode())


def engine_key(spec: EngineSpec, settings: BuildSettings, plan: PrecisionPlan, info: TensorRTInfo,
               compute_capability: str) -> tuple[str, dict[str, Any]]:
    """``(16-hex key, the dict it hashes)``: everything that invalidates a plan."""
    d: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "engine": spec.name,
        "onnx_sha256": spec.onnx_sha256,
        "profile": {k: [list(s) for s in v] for k, v in sorted(spec.profile.items())},
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.builder_flags),
        "workspace_mib": settings.workspace_mib,
        "optimization_level": settings.optimization_level,
        "refit": settings.refit,
        "tensorrt": f"{info.flavour} {info.version}",
        "compute_capability": compute_capability,
    }
    if spec.plugin:
        from frcnn_trt.engines.plugin.trt_plugin import PLUGIN_ID, PLUGIN_VERSION

        d["plugin"] = {"id": PLUGIN_ID, "version": PLUGIN_VERSION, "impl": settings.plugin_impl,
                       "kernel_sha256": _kernel_sha256()}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16], d


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a != b:
            if isinstance(a, str) and isinstance(b, str) and len(a) == 64 and len(b) == 64:
                a, b = a[:12] + "…", b[:12] + "…"
            out.append(f"{k}: {json.dumps(a, sort_keys=True)} → {json.dumps(b, sort_keys=True)}")
    return out


def _cache_lookup(cache_dir: Path, name: str, key: str, key_dict: Mapping[str, Any]
                  ) -> tuple[Path | None, str]:
    """``(engine path if a valid cached engine exists, why not / "cached")``."""
    engine = cache_dir / f"{name}-{key}.engine"
    sidecar = engine.with_suffix(".json")
    if engine.is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            return None, f"{sidecar} is unreadable ({exc})"
        if meta.get("engine_sha256") != sha256_file(engine):
            return None, f"cached {engine.name} fails its SHA-256 check (corrupt or replaced)"
        return engine, "cached"
    others = []
    for p in cache_dir.glob(f"{name}-*.json"):
        try:
            others.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    if not others:
        return None, f"no cached {name} engine in {cache_dir}"
    newest = max(others, key=lambda m: str(m.get("created", "")))
    diff = _diff(newest.get("key", {}), key_dict)
    return None, "settings changed since the cached engine: " + ("; ".join(diff) if diff else "(unknown)")


def _timing_cache_path(cache_dir: Path, info: TensorRTInfo, cc: str) -> Path:
    return cache_dir / f"timing-{info.flavour}-{info.version}-sm{cc.replace('.', '')}.cache"


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> str:
    data = b""
    if path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        if data:
            log.warning("timing cache %s does not fit this TensorRT/GPU: starting a new one", path)
            cache = config.create_timing_cache(b"")
            if cache is not None:
                config.set_timing_cache(cache, False)
        return "new"
    return f"loaded ({len(data)} bytes)" if data else "new"


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    blob = bytes(memoryview(cache.serialize()))
    if blob:
        atomic_write_bytes(path, blob)


# ------------------------------------------------------------------------------------------------ build


@dataclass
class EngineResult:
    """One engine: where it is, its cache key and whether this call built it (and why)."""

    name: str
    path: Path
    key: str
    built: bool
    reason: str
    precision: str
    tensorrt: str
    compute_capability: str
    seconds: float = 0.0
    size: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def _gpu_compute_capability() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except Exception:  # torch without CUDA support, a broken driver
        return None
    return None


def _target_cc(settings: BuildSettings, info: TensorRTInfo) -> str:
    gpu = _gpu_compute_capability()
    if info.flavour == "tensorrt":
        if gpu is None:
            raise BackendError(f"{info.label} builds engines on a CUDA GPU and none is visible here "
                               "(torch.cuda.is_available() is False)")
        if settings.compute_capability is not None and settings.compute_capability != gpu:
            raise BackendError(f"{info.label} builds for the GPU it runs on (compute capability {gpu}); "
                               f"compute_capability={settings.compute_capability!r} was asked")
        return gpu
    cc = settings.compute_capability or gpu
    if cc is None:
        raise BackendError(f"{info.label} on a machine without a GPU needs a target compute capability "
                           f"(one of {', '.join(info.compute_capabilities) or '?'}), e.g. compute_capability='8.6'")
    if info.compute_capabilities and cc not in info.compute_capabilities:
        raise BackendError(f"{info.label} cannot target compute capability {cc}; it supports "
                           f"{', '.join(info.compute_capabilities)}")
    return cc


def _network_flags(plan: PrecisionPlan, info: TensorRTInfo, spec: EngineSpec, settings: BuildSettings) -> int:
    flags = 0
    nf = trt.NetworkDefinitionCreationFlag
    if plan.strongly_typed and info.strongly_typed_flag and not info.always_strongly_typed:
        flags |= 1 << int(nf.STRONGLY_TYPED)
    if spec.plugin:
        pref = "PREFER_AOT_PYTHON_PLUGINS" if settings.plugin_impl == "aot" else "PREFER_JIT_PYTHON_PLUGINS"
        member = getattr(nf, pref, None)
        if member is not None:
            flags |= 1 << int(member)
    return flags


def _parser_errors(parser: trt.OnnxParser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = ""
        with contextlib.suppress(Exception):  # node_name / node_operator exist from TensorRT 10
            node = f" (node {e.node_name()!r}, op {e.node_operator()!r})"
        out.append(f"{e.desc()}{node}")
    return out


def _check_plugin(spec: EngineSpec, settings: BuildSettings, info: TensorRTInfo) -> None:
    from frcnn_trt.engines.plugin import trt_plugin

    trt_plugin.register_plugin(jit=settings.plugin_impl == "jit", flavour=info.flavour)
    trt_plugin.require_creator(info.flavour)


def _apply_profile(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                   spec: EngineSpec) -> None:
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    missing = [n for n in spec.profile if n not in inputs]
    if missing:
        raise BackendError(f"{spec.onnx}: export.json profiles input(s) {missing} that the graph lacks "
                           f"(graph inputs: {sorted(inputs)})")
    unprofiled = [n for n, t in inputs.items() if min(dims_tuple(t.shape), default=0) < 0 and n not in spec.profile]
    if unprofiled:
        raise BackendError(f"{spec.onnx}: dynamic input(s) {unprofiled} have no shape profile in export.json")
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.profile.items():
        rank = len(inputs[name].shape)
        if len(lo) != rank:
            raise BackendError(f"{spec.onnx}: profile of {name!r} has rank {len(lo)}, the input has rank {rank}")
        profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    if config.add_optimization_profile(profile) < 0:
        raise BackendError(f"{spec.onnx}: TensorRT rejected the optimisation profile {spec.profile}")


@dataclass
class ParseResult:
    """What TensorRT's ONNX parser made of a file: success, its errors, the log, the network's I/O."""

    ok: bool
    errors: list[str]
    log: list[tuple[str, str]]
    inputs: dict[str, tuple[Shape, str]]
    outputs: dict[str, tuple[Shape, str]]

    def log_lines(self, contains: str = "") -> list[str]:
        return [m for _, m in self.log if contains in m]


def parse_onnx(onnx_path: str | Path, *, flavour: str = "tensorrt", strongly_typed: bool = False) -> ParseResult:
    """Parse ``onnx_path`` into a network (no build, no plugin registration) and report what happened, with
    the parser's INFO/VERBOSE log (which names the plugin it looks up for a custom node)."""
    with use_flavour(flavour):
        info = tensorrt_info(flavour)
        logger = _Logger.create(verbose=True, forward=False)
        builder = trt.Builder(logger)
        flags = 0
        if strongly_typed and info.strongly_typed_flag and not info.always_strongly_typed:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        ok = bool(parser.parse_from_file(str(onnx_path)))

        def io(tensors: list[trt.ITensor]) -> dict[str, tuple[Shape, str]]:
            return {t.name: (dims_tuple(t.shape), str(t.dtype).rsplit(".", 1)[-1]) for t in tensors}

        return ParseResult(
            ok=ok, errors=_parser_errors(parser), log=list(logger.lines),
            inputs=io([network.get_input(i) for i in range(network.num_inputs)]),
            outputs=io([network.get_output(i) for i in range(network.num_outputs)]),
        )


def build_engine(
    spec: EngineSpec,
    settings: BuildSettings | None = None,
    *,
    cache_dir: str | Path,
    flavour: str = "tensorrt",
    force: bool = False,
    verbose: bool = False,
    lookup_only: bool = False,
) -> EngineResult:
    """Build (or reuse from ``cache_dir``) the engine of ``spec``; see the module docstring.

    ``lookup_only``: return a cached engine or raise :class:`BackendError` saying why there is none."""
    settings = settings or BuildSettings()
    cache = Path(cache_dir)
    with use_flavour(flavour):
        info = tensorrt_info(flavour)
        cc = _target_cc(settings, info)
        plan = resolve_precision(spec.onnx_precision, settings.precision, info, what=str(spec.onnx))
        if settings.refit and not info.refit:
            raise BackendError(f"{info.label} cannot build refittable engines (no BuilderFlag.REFIT)")
        key, key_dict = engine_key(spec, settings, plan, info, cc)
        engine_path = cache / f"{spec.name}-{key}.engine"

        def result(built: bool, reason: str, seconds: float, size: int, notes: list[str]) -> EngineResult:
            return EngineResult(name=spec.name, path=engine_path, key=key, built=built, reason=reason,
                                precision=plan.precision, tensorrt=info.label, compute_capability=cc,
                                seconds=seconds, size=size, notes=notes)
        if not force:
            hit, why = _cache_lookup(cache, spec.name, key, key_dict) if cache.is_dir() else (
                None, f"no engine cache at {cache}")
            if hit is not None:
                log.info("%s engine: cached %s", spec.name, hit)
                return result(False, "cached", 0.0, hit.stat().st_size, [])
        else:
            why = "force=True"
        if lookup_only:
            raise BackendError(f"no usable cached {spec.name} engine for {spec.onnx} ({why}); build it with "
                               "`frcnn-trt export --fp16` on this machine, or let the backend build (build=True)")
        if not spec.onnx.is_file():
            raise ExportError(f"{spec.onnx} is missing: re-export")
        log.info("%s engine: building (%s)", spec.name, why)
        if spec.plugin:
            _check_plugin(spec, settings, info)
        t0 = time.perf_counter()
        logger = _Logger.create(verbose)
        builder = trt.Builder(logger)
        if builder is None:
            raise BackendError(f"{info.label} could not create a builder: {'; '.join(logger.errors()) or '?'}")
        network = builder.create_network(_network_flags(plan, info, spec, settings))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(spec.onnx)):
            errs = _parser_errors(parser)
            plugin_hint = ""
            if any("Plugin not found" in e for e in errs):
                from frcnn_trt.engines.plugin.trt_plugin import missing_plugin_message

                plugin_hint = " " + missing_plugin_message(info.flavour)
            raise BackendError(f"{info.label} cannot parse {spec.onnx}: " + "; ".join(errs) + plugin_hint)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
        for flag in plan.builder_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if settings.refit:
            config.set_flag(trt.BuilderFlag.REFIT)
        if settings.optimization_level is not None:
            config.builder_optimization_level = settings.optimization_level
        if info.flavour == "tensorrt_rtx":
            major, minor = _parse_cc(cc)
            cfg_any: Any = config  # ComputeCapability targets are TensorRT-RTX API (absent from the 10.x stubs)
            cfg_any.num_compute_capabilities = 1
            trt_any: Any = trt
            cfg_any.set_compute_capability(trt_any.ComputeCapability.__members__[f"SM{major}{minor}"], 0)
        _apply_profile(builder, network, config, spec)
        notes = [plan.note]
        tc_path = _timing_cache_path(cache, info, cc)
        use_tc = settings.timing_cache and info.flavour == "tensorrt"  # TensorRT-RTX: timing cache is a no-op
        if use_tc:
            notes.append(f"timing cache {tc_path.name}: {_load_timing_cache(config, tc_path)}")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"{info.label} failed to build {spec.name} from {spec.onnx} for compute capability "
                               f"{cc}: " + ("; ".join(logger.errors()) or "no error message"))
        data = bytes(memoryview(serialized))
        if not data:
            raise BackendError(f"{info.label} built an empty {spec.name} plan from {spec.onnx}")
        seconds = time.perf_counter() - t0
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(engine_path, data)
        if use_tc:
            _save_timing_cache(config, tc_path)
        atomic_write_json(engine_path.with_suffix(".json"), {
            "key": key_dict, "key_hash": key, "engine_sha256": sha256_bytes(data), "size": len(data),
            "onnx": str(spec.onnx), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3), "reason": why, "notes": notes,
        })
        log.info("%s engine: built %s (%.1f s, %d bytes)", spec.name, engine_path, seconds, len(data))
        return result(True, why, seconds, len(data), notes)


def default_cache_dir(info: ExportInfo) -> Path:
    return info.directory / DEFAULT_CACHE_DIRNAME


def build_engines(
    info: ExportInfo,
    settings: BuildSettings | None = None,
    *,
    cache_dir: str | Path | None = None,
    flavour: str = "tensorrt",
    force: bool = False,
    names: Sequence[str] = ENGINE_NAMES,
    verbose: bool = False,
    lookup_only: bool = False,
) -> dict[str, EngineResult]:
    """Build or reuse every engine of an export (default cache: ``<export>/engines``)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(info)
    return {spec.name: build_engine(spec, settings, cache_dir=cache, flavour=flavour, force=force, verbose=verbose,
                                    lookup_only=lookup_only)
            for spec in engine_specs(info, names)}


# ------------------------------------------------------------------------------------------------ export hook


@dataclass
class EngineBuildReport:
    """What :func:`build_export_engines` built and, for the rest, why not. ``ok``: everything built/cached."""

    built: dict[str, EngineResult] = field(default_factory=dict)
    not_built: dict[str, str] = field(default_factory=dict)
    tensorrt: str | None = None

    @property
    def ok(self) -> bool:
        return not self.not_built

    def to_dict(self) -> dict[str, Any]:
        return {"tensorrt": self.tensorrt, "built": {k: v.to_dict() for k, v in self.built.items()},
                "not_built": dict(self.not_built)}

    def lines(self) -> list[str]:
        out = []
        for name, r in self.built.items():
            how = f"built in {r.seconds:.1f} s ({r.reason})" if r.built else "cached"
            out.append(f"{name} engine: {r.path} — {how}, {r.precision}, {r.tensorrt}, sm {r.compute_capability}")
        out += [f"{name} engine: NOT built — {why}" for name, why in self.not_built.items()]
        return out


def build_export_engines(
    export_dir: str | Path,
    settings: BuildSettings | None = None,
    *,
    cache_dir: str | Path | None = None,
    force: bool = False,
    verbose: bool = False,
) -> EngineBuildReport:
    """For ``frcnn-trt export``: build the TensorRT engines when TensorRT and a GPU are here; otherwise (and
    on a failed build) return, per engine, exactly what was not built and why. Never pretends and never
    raises for an unavailable TensorRT (a bad export directory still raises ExportError)."""
    from frcnn_trt.engines.export_format import load_export

    info = load_export(export_dir, verify=False)
    report = EngineBuildReport()
    trt_info, why = probe_tensorrt("tensorrt")
    if trt_info is None:
        report.not_built = {n: why for n in ENGINE_NAMES}
        return report
    report.tensorrt = trt_info.label
    if _gpu_compute_capability() is None:
        report.not_built = {n: f"{trt_info.label} is installed but no CUDA GPU is visible "
                               "(torch.cuda.is_available() is False)" for n in ENGINE_NAMES}
        return report
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(info)
    for spec in engine_specs(info):
        try:
            report.built[spec.name] = build_engine(spec, settings, cache_dir=cache, flavour="tensorrt", force=force,
                                                   verbose=verbose)
        except (BackendError, ExportError) as exc:
            report.not_built[spec.name] = str(exc)
    return report


# ------------------------------------------------------------------------------------------------ refit


def _graph_signature(path: Path) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read ONNX model {path}: {exc}") from None
    g = model.graph
    return {
        "nodes": [(n.op_type, n.domain, list(n.input), list(n.output),
                   sorted((a.name, onnx.helper.get_attribute_value(a).__repr__()) for a in n.attribute))
                  for n in g.node],
        "initializers": sorted((i.name, i.data_type, list(i.dims)) for i in g.initializer),
        "inputs": [(v.name, v.type.SerializeToString()) for v in g.input],
        "outputs": [(v.name, v.type.SerializeToString()) for v in g.output],
        "opset": sorted((o.domain, o.version) for o in model.opset_import),
    }


def same_graph(a: str | Path, b: str | Path) -> tuple[bool, str]:
    """Do two ONNX files hold the same graph up to initializer *values* (what a refit can swap)?"""
    sa, sb = _graph_signature(Path(a)), _graph_signature(Path(b))
    for part in ("opset", "inputs", "outputs", "initializers", "nodes"):
        if sa[part] != sb[part]:
            return False, f"{part} differ between {a} and {b}"
    return True, "same graph, different weights" if sha256_file(a) != sha256_file(b) else "identical files"


def refit_engine(
    engine_path: str | Path,
    onnx_path: str | Path,
    output_path: str | Path,
    *,
    flavour: str = "tensorrt",
    reference_onnx: str | Path | None = None,
) -> Path:
    """Write to ``output_path`` the engine at ``engine_path`` refitted with the weights of ``onnx_path``.

    The engine must have been built with ``BuildSettings(refit=True)`` from a graph identical to
    ``onnx_path`` up to weight values (checked with :func:`same_graph` against ``reference_onnx`` when
    given). Needs the TensorRT runtime (a GPU); raises :class:`BackendError` on any mismatch."""
    if reference_onnx is not None:
        same, why = same_graph(reference_onnx, onnx_path)
        if not same:
            raise BackendError(f"cannot refit {engine_path} with {onnx_path}: {why}; build a new engine instead")
    with use_flavour(flavour):
        info = tensorrt_info(flavour)
        if not (info.refit and info.onnx_refitter):
            raise BackendError(f"{info.label} has no Refitter / OnnxParserRefitter")
        logger = _Logger.create()
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if engine is None:
            raise BackendError(f"{info.label} cannot deserialize {engine_path}: {'; '.join(logger.errors())}")
        if not engine.refittable:
            raise BackendError(f"{engine_path} was not built refittable (BuildSettings(refit=True))")
        refitter = trt.Refitter(engine, logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, logger)
        if not parser_refitter.refit_from_file(str(onnx_path)):
            errs = [parser_refitter.get_error(i).desc() for i in range(parser_refitter.num_errors)]
            raise BackendError(f"refitting {engine_path} from {onnx_path} failed: {'; '.join(errs)}")
        missing = refitter.get_missing_weights()
        if missing:
            raise BackendError(f"refitting {engine_path} from {onnx_path}: weights missing: {missing[:10]}")
        if not refitter.refit_cuda_engine():
            raise BackendError(f"refit_cuda_engine failed for {engine_path}: {'; '.join(logger.errors())}")
        out = Path(output_path)
        atomic_write_bytes(out, bytes(memoryview(engine.serialize())))
        return out


def refit_from(
    spec: EngineSpec,
    reference: EngineResult | str | Path,
    settings: BuildSettings | None = None,
    *,
    cache_dir: str | Path,
    flavour: str = "tensorrt",
) -> EngineResult:
    """alt-opt: the engine of ``spec`` (e.g. the stage-2 RPN) by refitting ``reference`` (the stage-1 engine,
    built with ``BuildSettings(refit=True)`` and otherwise the same settings) instead of a full build.

    Cached under ``spec``'s own key like a built engine (the sidecar records ``refitted_from``). Raises
    :class:`BackendError` when the reference is not refittable, was built with other settings, or its ONNX
    is not the same graph (then build normally)."""
    ref_path = Path(reference.path if isinstance(reference, EngineResult) else reference)
    try:
        meta = json.loads(ref_path.with_suffix(".json").read_text(encoding="utf-8"))
        ref_key, ref_onnx = dict(meta["key"]), Path(meta["onnx"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BackendError(f"cannot refit {ref_path}: its sidecar {ref_path.with_suffix('.json')} is missing or "
                           f"unreadable ({exc})") from None
    if not ref_key.get("refit"):
        raise BackendError(f"cannot refit {ref_path}: it was not built refittable (BuildSettings(refit=True))")
    settings = dataclasses.replace(settings or BuildSettings(), refit=True)
    cache = Path(cache_dir)
    with use_flavour(flavour):
        info = tensorrt_info(flavour)
        cc = _target_cc(settings, info)
        plan = resolve_precision(spec.onnx_precision, settings.precision, info, what=str(spec.onnx))
        key, key_dict = engine_key(spec, settings, plan, info, cc)
        other = [d for d in _diff(ref_key, key_dict) if not d.startswith("onnx_sha256")]
        if other:
            raise BackendError(f"cannot refit {ref_path}: it was built with other settings ({'; '.join(other)})")
        engine_path = cache / f"{spec.name}-{key}.engine"
        hit, why = _cache_lookup(cache, spec.name, key, key_dict) if cache.is_dir() else (None, "no cache")
        if hit is not None:
            return EngineResult(name=spec.name, path=hit, key=key, built=False, reason="cached",
                                precision=plan.precision, tensorrt=info.label, compute_capability=cc,
                                size=hit.stat().st_size)
        t0 = time.perf_counter()
        refit_engine(ref_path, spec.onnx, engine_path, flavour=flavour, reference_onnx=ref_onnx)
        seconds = time.perf_counter() - t0
        data_sha, size = sha256_file(engine_path), engine_path.stat().st_size
        reason = f"refitted from {ref_path.name} ({why})"
        atomic_write_json(engine_path.with_suffix(".json"), {
            "key": key_dict, "key_hash": key, "engine_sha256": data_sha, "size": size, "onnx": str(spec.onnx),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 3),
            "reason": reason, "refitted_from": str(ref_path), "notes": [plan.note],
        })
        return EngineResult(name=spec.name, path=engine_path, key=key, built=True, reason=reason,
                            precision=plan.precision, tensorrt=info.label, compute_capability=cc, seconds=seconds,
                            size=size, notes=[plan.note, f"refitted from {ref_path}"])
