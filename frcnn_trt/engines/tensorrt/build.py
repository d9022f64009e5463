"""TensorRT engines from an export: parse, configure, build, cache.

Glossary: ``N`` images, ``H × W`` blob size, ``C`` feature channels, ``H' × W'`` feature map, ``R`` RoIs;
a *profile* and a *flavour* as in :mod:`frcnn_trt.engines.tensorrt.settings` and
:mod:`~frcnn_trt.engines.tensorrt.runtime`.

What :func:`build_engine` does, one small step each:

1. **plan** (:func:`plan_build`): the target compute capability, the precision
   (:func:`~frcnn_trt.engines.tensorrt.settings.resolve_precision`) and the cache key
   (:func:`~frcnn_trt.engines.tensorrt.cache.engine_key`);
2. **lookup**: a valid cached engine is returned; a miss says why; ``force`` rebuilds; ``lookup_only``
   raises instead of building;
3. **plugins first**: a detector with the custom ``frcnn::RoIPool`` node gets our plugin registered before
   parsing (a missing creator fails fast naming what was searched and the TensorRT version); one with ONNX
   ``RoiAlign`` gets TensorRT's standard plugin library initialised;
4. **parse**, then **configure** (workspace, builder flags, optimisation level, TensorRT-RTX target,
   profile, timing cache — loaded, then saved atomically after the build; TensorRT-RTX has none);
5. **serialize** (``build_serialized_network``) and **store** (engine + sidecar, atomic writes).

:func:`build_export_engines` is what ``frcnn-trt export`` calls: it builds when TensorRT and a GPU are here
and otherwise returns what it did not build and why.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frcnn_trt.engines.export_format import ExportInfo, load_export
from frcnn_trt.engines.tensorrt import plugin
from frcnn_trt.engines.tensorrt.cache import (
    EngineResult,
    cache_lookup,
    default_cache_dir,
    engine_key,
    load_timing_cache,
    save_timing_cache,
    timing_cache_path,
    write_sidecar,
)
from frcnn_trt.engines.tensorrt.runtime import (
    Shape,
    TensorRTInfo,
    TensorRTLogger,
    dims_tuple,
    gpu_compute_capability,
    init_standard_plugins,
    probe_tensorrt,
    tensorrt_info,
    use_flavour,
)
from frcnn_trt.engines.tensorrt.settings import (
    ENGINE_NAMES,
    BuildSettings,
    EngineSpec,
    PrecisionPlan,
    engine_specs,
    parse_cc,
    resolve_precision,
)
from frcnn_trt.errors import BackendError, ExportError
from frcnn_trt.io import atomic_write_bytes, sha256_bytes

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from frcnn_trt.engines.tensorrt.runtime import trt

__all__ = [
    "BuildPlan",
    "EngineBuildReport",
    "ParseResult",
    "build_engine",
    "build_engines",
    "build_export_engines",
    "int8_plan",
    "parse_onnx",
    "plan_build",
    "target_compute_capability",
]

log = logging.getLogger("frcnn_trt.engines.tensorrt")


# ------------------------------------------------------------------------------------------------ plan


def target_compute_capability(settings: BuildSettings, info: TensorRTInfo) -> str:
    """The compute capability to build for: the GPU's (TensorRT), or the one asked (TensorRT-RTX)."""
    gpu = gpu_compute_capability()
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


@dataclass(frozen=True)
class BuildPlan:
    """One engine's build, decided: TensorRT, target, precision, cache key and where the engine goes."""

    spec: EngineSpec
    settings: BuildSettings
    info: TensorRTInfo
    cc: str
    precision: PrecisionPlan
    key: str
    key_dict: dict[str, Any]
    cache: Path

    @property
    def engine_path(self) -> Path:
        return self.cache / f"{self.spec.name}-{self.key}.engine"

    def result(self, path: Path, built: bool, reason: str, seconds: float = 0.0, size: int = 0,
               notes: Sequence[str] = ()) -> EngineResult:
        return EngineResult(name=self.spec.name, path=path, key=self.key, built=built, reason=reason,
                            precision=self.precision.precision, tensorrt=self.info.label, compute_capability=self.cc,
                            seconds=seconds, size=size, notes=list(notes))


def int8_plan(requested: str, info: TensorRTInfo, what: str = "the ONNX") -> PrecisionPlan:
    """A QDQ INT8 graph is built strongly typed (explicit quantization: TensorRT 10.x with
    ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, TensorRT 11 / TensorRT-RTX always); the scales are the
    graph's, so no calibrator and no INT8 builder flag. Another precision than the graph's is refused."""
    if requested not in ("auto", "int8"):
        raise BackendError(f"{what} is an INT8 (QDQ) export: TensorRT builds the precision the graph holds, so "
                           f"{requested} needs a {requested.upper()} export (without --int8)")
    if not (info.strongly_typed_flag or info.always_strongly_typed):
        raise BackendError(f"{info.label} has no strongly typed networks, which QDQ INT8 graphs need "
                           "(TensorRT ≥ 10): upgrade TensorRT")
    return PrecisionPlan("int8", True, (), f"QDQ INT8 ONNX built strongly typed ({info.label}: explicit "
                         "quantization from the graph's Q/DQ scales)")


def plan_build(spec: EngineSpec, settings: BuildSettings, flavour: str, cache: Path) -> BuildPlan:
    """Decide ``spec``'s build with the TensorRT of ``flavour`` (call inside :func:`use_flavour`)."""
    info = tensorrt_info(flavour)
    cc = target_compute_capability(settings, info)
    precision = (int8_plan(settings.precision, info, what=str(spec.onnx)) if spec.onnx_precision == "int8"
                 else resolve_precision(spec.onnx_precision, settings.precision, info, what=str(spec.onnx)))
    if settings.refit and not info.refit:
        raise BackendError(f"{info.label} cannot build refittable engines (no BuilderFlag.REFIT)")
    key, key_dict = engine_key(spec, settings, precision, info, cc)
    return BuildPlan(spec, settings, info, cc, precision, key, key_dict, cache)


# ------------------------------------------------------------------------------------------------ parse


def _parser_errors(parser: trt.OnnxParser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = ""
        with contextlib.suppress(Exception):  # node_name / node_operator exist from TensorRT 10
            node = f" (node {e.node_name()!r}, op {e.node_operator()!r})"
        out.append(f"{e.desc()}{node}")
    return out


def _parse_hint(errors: list[str], flavour: str) -> str:
    if any("Plugin not found" in e for e in errors):
        return " " + plugin.missing_plugin_message(flavour)
    if any("ROIAlign" in e for e in errors):
        return (" (ONNX RoiAlign becomes TensorRT's standard ROIAlign_TRT plugin, from libnvinfer_plugin; its "
                "creation needs the CUDA driver)")
    return ""


def _prepare_plugins(spec: EngineSpec, settings: BuildSettings, info: TensorRTInfo) -> None:
    if spec.plugin:
        plugin.register_plugin(jit=settings.plugin_impl == "jit", flavour=info.flavour)
        plugin.require_creator(info.flavour)
    if spec.standard_plugins:
        init_standard_plugins(info.flavour)


def _network_flags(job: BuildPlan) -> int:
    flags = 0
    nf = trt.NetworkDefinitionCreationFlag
    info = job.info
    if job.precision.strongly_typed and info.strongly_typed_flag and not info.always_strongly_typed:
        flags |= 1 << int(nf.STRONGLY_TYPED)
    if job.spec.plugin:
        pref = "PREFER_AOT_PYTHON_PLUGINS" if job.settings.plugin_impl == "aot" else "PREFER_JIT_PYTHON_PLUGINS"
        member = getattr(nf, pref, None)
        if member is not None:
            flags |= 1 << int(member)
    return flags


def _parse(job: BuildPlan, logger: Any) -> tuple[trt.Builder, trt.INetworkDefinition, trt.OnnxParser]:
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendError(f"{job.info.label} could not create a builder: {'; '.join(logger.errors()) or '?'}")
    network = builder.create_network(_network_flags(job))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(job.spec.onnx)):
        errs = _parser_errors(parser)
        raise BackendError(f"{job.info.label} cannot parse {job.spec.onnx}: " + "; ".join(errs)
                           + _parse_hint(errs, job.info.flavour))
    return builder, network, parser  # the parser must outlive the build (it owns the weights)


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


def _io(tensors: list[trt.ITensor]) -> dict[str, tuple[Shape, str]]:
    return {t.name: (dims_tuple(t.shape), str(t.dtype).rsplit(".", 1)[-1]) for t in tensors}


def parse_onnx(onnx_path: str | Path, *, flavour: str = "tensorrt", strongly_typed: bool = False,
               standard_plugins: bool = False) -> ParseResult:
    """Parse ``onnx_path`` into a network (no build, no registration of our plugin) and report what happened,
    with the parser's INFO/VERBOSE log (which names the plugin it looks up for a custom node).
    ``standard_plugins``: initialise TensorRT's standard plugin library first (ONNX RoiAlign)."""
    with use_flavour(flavour):
        info = tensorrt_info(flavour)
        if standard_plugins:
            init_standard_plugins(flavour)
        logger = TensorRTLogger.create(verbose=True, forward=False)
        builder = trt.Builder(logger)
        flags = 0
        if strongly_typed and info.strongly_typed_flag and not info.always_strongly_typed:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        ok = bool(parser.parse_from_file(str(onnx_path)))
        return ParseResult(
            ok=ok, errors=_parser_errors(parser), log=list(logger.lines),
            inputs=_io([network.get_input(i) for i in range(network.num_inputs)]),
            outputs=_io([network.get_output(i) for i in range(network.num_outputs)]),
        )


# ------------------------------------------------------------------------------------------------ configure


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


def _uses_timing_cache(job: BuildPlan) -> bool:
    return job.settings.timing_cache and job.info.flavour == "tensorrt"  # TensorRT-RTX: the timing cache is a no-op


def _configure(job: BuildPlan, builder: trt.Builder, network: trt.INetworkDefinition
               ) -> tuple[trt.IBuilderConfig, list[str]]:
    """The builder config of ``job``, and the notes it leads to (precision, timing cache)."""
    settings = job.settings
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    for flag in job.precision.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if settings.optimization_level is not None:
        config.builder_optimization_level = settings.optimization_level
    if job.info.flavour == "tensorrt_rtx":
        major, minor = parse_cc(job.cc)
        cfg_any: Any = config  # ComputeCapability targets are TensorRT-RTX API (absent from the 10.x stubs)
        cfg_any.num_compute_capabilities = 1
        trt_any: Any = trt
        cfg_any.set_compute_capability(trt_any.ComputeCapability.__members__[f"SM{major}{minor}"], 0)
    _apply_profile(builder, network, config, job.spec)
    notes = [job.precision.note]
    if _uses_timing_cache(job):
        tc_path = timing_cache_path(job.cache, job.info, job.cc)
        notes.append(f"timing cache {tc_path.name}: {load_timing_cache(config, tc_path)}")
    return config, notes


# ------------------------------------------------------------------------------------------------ build


def _serialize(job: BuildPlan, builder: trt.Builder, network: trt.INetworkDefinition,
               config: trt.IBuilderConfig, logger: Any) -> bytes:
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{job.info.label} failed to build {job.spec.name} from {job.spec.onnx} for compute "
                           f"capability {job.cc}: " + ("; ".join(logger.errors()) or "no error message"))
    data = bytes(memoryview(serialized))
    if not data:
        raise BackendError(f"{job.info.label} built an empty {job.spec.name} plan from {job.spec.onnx}")
    return data


def _store(job: BuildPlan, data: bytes, config: trt.IBuilderConfig, why: str, seconds: float,
           notes: list[str]) -> None:
    job.cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(job.engine_path, data)
    if _uses_timing_cache(job):
        save_timing_cache(config, timing_cache_path(job.cache, job.info, job.cc))
    write_sidecar(job.engine_path, job.key, job.key_dict, engine_sha256=sha256_bytes(data), size=len(data),
                  onnx=job.spec.onnx, seconds=seconds, reason=why, notes=notes)


def _build(job: BuildPlan, why: str, verbose: bool) -> EngineResult:
    spec = job.spec
    if not spec.onnx.is_file():
        raise ExportError(f"{spec.onnx} is missing: re-export")
    log.info("%s engine: building (%s)", spec.name, why)
    _prepare_plugins(spec, job.settings, job.info)
    t0 = time.perf_counter()
    logger = TensorRTLogger.create(verbose)
    builder, network, _parser = _parse(job, logger)
    config, notes = _configure(job, builder, network)
    data = _serialize(job, builder, network, config, logger)
    seconds = time.perf_counter() - t0
    _store(job, data, config, why, seconds, notes)
    log.info("%s engine: built %s (%.1f s, %d bytes)", spec.name, job.engine_path, seconds, len(data))
    return job.result(job.engine_path, True, why, seconds, len(data), notes)


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
    with use_flavour(flavour):
        job = plan_build(spec, settings or BuildSettings(), flavour, Path(cache_dir))
        hit, why = (None, "force=True") if force else cache_lookup(job.cache, spec.name, job.key, job.key_dict)
        if hit is not None:
            log.info("%s engine: cached %s", spec.name, hit)
            return job.result(hit, False, "cached", size=hit.stat().st_size)
        if lookup_only:
            raise BackendError(f"no usable cached {spec.name} engine for {spec.onnx} ({why}); build it with "
                               "`frcnn-trt export --fp16` on this machine, or let the backend build (build=True)")
        return _build(job, why, verbose)


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
    info = load_export(export_dir, verify=False)
    report = EngineBuildReport()
    trt_info, why = probe_tensorrt("tensorrt")
    if trt_info is None:
        report.not_built = {n: why for n in ENGINE_NAMES}
        return report
    report.tensorrt = trt_info.label
    if gpu_compute_capability() is None:
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
