"""TensorRT: the runtime module, engine building and caching, refit, the RoIPool plugin, and the backend.

- :mod:`~frcnn_trt.engines.tensorrt.runtime`: which TensorRT module is loaded (flavours), what it can do,
  the lazy ``trt`` module, the logger, the standard plugin library;
- :mod:`~frcnn_trt.engines.tensorrt.settings`: the engines of an export, builder settings, precision;
- :mod:`~frcnn_trt.engines.tensorrt.cache`: engine cache keys, lookup, sidecars, the timing cache;
- :mod:`~frcnn_trt.engines.tensorrt.build`: parse, configure, build (and ``frcnn-trt export``'s hook);
- :mod:`~frcnn_trt.engines.tensorrt.refit`: new weights into a refittable engine;
- :mod:`~frcnn_trt.engines.tensorrt.plugin`: the ``frcnn::RoIPool`` quickly deployable plugin;
- :mod:`~frcnn_trt.engines.tensorrt.kernel` (+ ``roi_pool.cu``): its CUDA kernel and PTX;
  :mod:`~frcnn_trt.engines.tensorrt.cuda_launch` runs that PTX on torch tensors (tests on a GPU);
- :mod:`~frcnn_trt.engines.tensorrt.backend`: the ``tensorrt`` backend and its spec.

Importing any of them never needs TensorRT.
"""

from __future__ import annotations

from frcnn_trt.engines.tensorrt.build import EngineBuildReport, build_engine, build_engines, build_export_engines
from frcnn_trt.engines.tensorrt.cache import EngineResult
from frcnn_trt.engines.tensorrt.refit import refit_engine, refit_from, same_graph
from frcnn_trt.engines.tensorrt.runtime import probe_tensorrt, tensorrt_info
from frcnn_trt.engines.tensorrt.settings import BuildSettings, EngineSpec, engine_specs

__all__ = [
    "BuildSettings",
    "EngineBuildReport",
    "EngineResult",
    "EngineSpec",
    "build_engine",
    "build_engines",
    "build_export_engines",
    "engine_specs",
    "probe_tensorrt",
    "refit_engine",
    "refit_from",
    "same_graph",
    "tensorrt_info",
]
