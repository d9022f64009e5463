"""Refit: swap the weights of a refittable engine instead of a full build.

:func:`refit_engine` swaps the weights of an engine built with ``BuildSettings(refit=True)`` for those of
another ONNX of the same graph; :func:`refit_from` does it through the engine cache (alt-opt: the stage-2
RPN from the stage-1 engine); :func:`same_graph` checks the "same graph" part on the ONNX files (note: the
exporter drops all-zero biases, so "same architecture" is not always "same graph").
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frcnn_trt.engines.tensorrt.build import BuildPlan, plan_build
from frcnn_trt.engines.tensorrt.cache import EngineResult, cache_lookup, diff_keys, write_sidecar
from frcnn_trt.engines.tensorrt.runtime import TensorRTLogger, tensorrt_info, use_flavour
from frcnn_trt.engines.tensorrt.settings import BuildSettings, EngineSpec
from frcnn_trt.errors import BackendError, ExportError
from frcnn_trt.io import atomic_write_bytes, sha256_file

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from frcnn_trt.engines.tensorrt.runtime import trt

__all__ = ["refit_engine", "refit_from", "same_graph"]


def _graph_signature(path: Path) -> dict[str, Any]:
    try:
        import onnx  # heavy (~1.5 s): imported when a refit compares graphs, not by every engines import

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


def _refit_weights(engine: trt.ICudaEngine, engine_path: str | Path, onnx_path: str | Path, logger: Any) -> None:
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
        logger = TensorRTLogger.create()
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if engine is None:
            raise BackendError(f"{info.label} cannot deserialize {engine_path}: {'; '.join(logger.errors())}")
        if not engine.refittable:
            raise BackendError(f"{engine_path} was not built refittable (BuildSettings(refit=True))")
        _refit_weights(engine, engine_path, onnx_path, logger)
        out = Path(output_path)
        atomic_write_bytes(out, bytes(memoryview(engine.serialize())))
        return out


def _reference_key(ref_path: Path) -> tuple[dict[str, Any], Path]:
    """The cache key and source ONNX of a cached reference engine, from its sidecar; it must be refittable."""
    try:
        meta = json.loads(ref_path.with_suffix(".json").read_text(encoding="utf-8"))
        ref_key, ref_onnx = dict(meta["key"]), Path(meta["onnx"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BackendError(f"cannot refit {ref_path}: its sidecar {ref_path.with_suffix('.json')} is missing or "
                           f"unreadable ({exc})") from None
    if not ref_key.get("refit"):
        raise BackendError(f"cannot refit {ref_path}: it was not built refittable (BuildSettings(refit=True))")
    return ref_key, ref_onnx


def _refit_into_cache(job: BuildPlan, ref_path: Path, ref_onnx: Path, why: str, flavour: str) -> EngineResult:
    t0 = time.perf_counter()
    refit_engine(ref_path, job.spec.onnx, job.engine_path, flavour=flavour, reference_onnx=ref_onnx)
    seconds = time.perf_counter() - t0
    size = job.engine_path.stat().st_size
    reason = f"refitted from {ref_path.name} ({why})"
    write_sidecar(job.engine_path, job.key, job.key_dict, engine_sha256=sha256_file(job.engine_path), size=size,
                  onnx=job.spec.onnx, seconds=seconds, reason=reason, notes=[job.precision.note],
                  refitted_from=str(ref_path))
    return job.result(job.engine_path, True, reason, seconds, size,
                      [job.precision.note, f"refitted from {ref_path}"])


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
    ref_key, ref_onnx = _reference_key(ref_path)
    settings = dataclasses.replace(settings or BuildSettings(), refit=True)
    with use_flavour(flavour):
        job = plan_build(spec, settings, flavour, Path(cache_dir))
        other = [d for d in diff_keys(ref_key, job.key_dict) if not d.startswith("onnx_sha256")]
        if other:
            raise BackendError(f"cannot refit {ref_path}: it was built with other settings ({'; '.join(other)})")
        hit, why = cache_lookup(job.cache, spec.name, job.key, job.key_dict)
        if hit is not None:
            return job.result(hit, False, "cached", size=hit.stat().st_size)
        return _refit_into_cache(job, ref_path, ref_onnx, why, flavour)
