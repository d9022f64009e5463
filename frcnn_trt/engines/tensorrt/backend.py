"""The TensorRT backend: ``rpn.onnx`` and ``detector.onnx`` as TensorRT engines, run on torch CUDA tensors.

Glossary: ``N`` images, ``H × W`` blob size, ``C`` feature channels, ``H' × W'`` feature map, ``R`` RoIs,
``K`` classes including background (see :mod:`frcnn_trt.engines.protocol`).

- Engines come from :mod:`frcnn_trt.engines.tensorrt.build` (built on first use, or reused from the cache
  ``<export>/engines`` under a key of ONNX hash, settings, TensorRT version and GPU compute capability).
- The detector's RoI op decides its plugin (``ExportInfo.needs_roi_pool_plugin``): the ``frcnn::RoIPool``
  plugin (:mod:`frcnn_trt.engines.tensorrt.plugin`) is registered before any parse or deserialisation (an
  AOT-built detector engine carries its kernel and needs no Python to run); a RoIAlign export's engine uses
  TensorRT's standard ``ROIAlign_TRT`` plugin, whose library is initialised instead.
- Execution: one execution context per engine, input shapes set per call, inputs and outputs are torch CUDA
  tensors whose addresses go to ``set_tensor_address``; ``execute_async_v3`` runs on torch's current stream
  of the device, so nothing waits on the host and later torch work is ordered after it (no host round trip).
- An input outside the engine's optimisation profile raises :class:`BackendError` naming the profile and
  where it came from (``export.json`` → ``shape_profiles``). Not thread-safe: one backend per thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.precision import int8_target
from frcnn_trt.engines.protocol import Backend, BackendSpec
from frcnn_trt.engines.tensorrt import plugin
from frcnn_trt.engines.tensorrt.build import build_engines
from frcnn_trt.engines.tensorrt.cache import EngineResult
from frcnn_trt.engines.tensorrt.runtime import (
    INSTALL_HINTS,
    Shape,
    TensorRTLogger,
    dims_tuple,
    init_standard_plugins,
    probe_tensorrt,
    use_flavour,
)
from frcnn_trt.engines.tensorrt.settings import BuildSettings
from frcnn_trt.errors import BackendError

if TYPE_CHECKING:
    import tensorrt as trt

    from frcnn_trt.model.faster_rcnn import FasterRCNN
else:
    from frcnn_trt.engines.tensorrt.runtime import trt

__all__ = ["SPEC", "TensorRTBackend", "availability", "check_profile"]

log = logging.getLogger("frcnn_trt.engines.tensorrt")

#: the BuildSettings fields the backend takes as options (the other options are from_export's own arguments)
_SETTINGS_OPTIONS = frozenset({"precision", "workspace_mib", "optimization_level", "plugin_impl", "timing_cache"})
#: every option of the tensorrt backend (``Detector.from_export(backend_options=...)``)
OPTIONS = _SETTINGS_OPTIONS | {"cache_dir", "build", "force", "verbose"}


def availability(device: torch.device, info: ExportInfo | None = None) -> tuple[bool, str]:
    """``(can run here, why)``: TensorRT (not only its type stubs), a CUDA device and, unless ``info`` is an
    export without the custom RoIPool node (RoIAlign: TensorRT's own plugin), ``tensorrt.plugin``. An INT8 export
    quantized for ONNX Runtime on a CPU (UINT8 activations) never runs here."""
    if info is not None and int8_target(info) == "cpu":
        return False, ("this INT8 export was quantized for ONNX Runtime on a CPU (UINT8 activations, which TensorRT "
                       "refuses): re-export with --int8-target tensorrt")
    if device.type != "cuda":
        return False, f"TensorRT runs on a CUDA GPU, and the device is {device}"
    trt_info, why = probe_tensorrt("tensorrt")
    if trt_info is None:
        return False, why
    if info is not None and not info.needs_roi_pool_plugin:
        roi = f"{info.roi_op.get('type', 'RoI op')} through TensorRT's standard plugin library"
    else:
        has_module, has_aot, status = plugin.plugin_module_status("tensorrt")
        if not has_module:
            return False, f"{trt_info.label} cannot run the RoIPool plugin: {status}"
        roi = "AOT plugin" if has_aot else "JIT (Python) plugin only"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return True, f"{trt_info.label}, {torch.cuda.get_device_name(index)} (sm {major}.{minor}), {roi}"


def check_profile(input_name: str, shape: Sequence[int], profile: tuple[Shape, Shape, Shape], where: str) -> None:
    """:class:`BackendError` unless ``min ≤ shape ≤ max`` per dimension (same rank)."""
    lo, _, hi = profile
    got = tuple(int(v) for v in shape)
    if len(got) != len(lo) or any(not a <= g <= b for a, g, b in zip(lo, got, hi, strict=True)):
        raise BackendError(
            f"{input_name} of shape {list(got)} is outside the optimisation profile of {where}: min {list(lo)}, "
            f"max {list(hi)} (export.json shape_profiles; images are scaled by target_size/max_size, RoIs are "
            "capped by the post-NMS top-N × max batch: re-export with a larger --max-batch / max_size to widen it)")


def _torch_dtype(dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
    if dtype not in table:
        raise BackendError(f"engine tensor of TensorRT type {dtype} has no torch counterpart here")
    return table[dtype]


class _EngineRunner:
    """One deserialised engine, its execution context and the profile of each input."""

    def __init__(self, runtime: trt.Runtime, logger: Any, data: bytes, where: str, device: torch.device,
                 io_order: Mapping[str, Sequence[str]] | None = None) -> None:
        self.where = where
        self.device = device
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"TensorRT cannot deserialize {where}: " + ("; ".join(logger.errors()) or
                               "no message (built by another TensorRT version or for another GPU?)"))
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"TensorRT cannot create an execution context for {where}: "
                               + "; ".join(logger.errors()))
        self.engine, self.context, self.logger = engine, context, logger
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        for key, current in (("inputs", self.inputs), ("outputs", self.outputs)):
            wanted = list((io_order or {}).get(key, []))
            if wanted and sorted(wanted) == sorted(current):
                current[:] = wanted  # the ONNX signature's order (export.json)
        self.dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in names}
        self.profiles: dict[str, tuple[Shape, Shape, Shape]] = {}
        for n in self.inputs:
            lo, opt, hi = (dims_tuple(d) for d in engine.get_tensor_profile_shape(n, 0))
            self.profiles[n] = (lo, opt, hi)

    def run(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        if sorted(feeds) != sorted(self.inputs):
            raise BackendError(f"{self.where} takes inputs {self.inputs}, got {sorted(feeds)}")
        ctx = self.context
        keep = []
        for name in self.inputs:
            t = feeds[name]
            check_profile(name, t.shape, self.profiles[name], self.where)
            t = t.to(device=self.device, dtype=self.dtypes[name]).contiguous()
            keep.append(t)
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise BackendError(f"{self.where}: TensorRT rejected shape {list(t.shape)} for {name}: "
                                   + "; ".join(self.logger.errors()[-3:]))
            ctx.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            shape = dims_tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.where}: output {name} has unresolved shape {list(shape)}")
            out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"{self.where}: execute_async_v3 failed: " + "; ".join(self.logger.errors()[-3:]))
        # the inputs may be freed now: the caching allocator reuses their memory only for work queued later on
        # this same stream, which runs after the engine
        del keep
        return outs


class TensorRTBackend(Backend):
    """Run the TensorRT engines of an export on a CUDA ``device``. Build with :meth:`from_export`."""

    name = "tensorrt"

    def __init__(
        self,
        rpn_engine: str | Path | bytes,
        detector_engine: str | Path | bytes,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        io_names: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        label: str = "",
        roi_pool_plugin: bool = True,
    ) -> None:
        dev = resolve_device(device)
        if dev.type != "cuda":
            raise BackendError(f"the tensorrt backend runs on a CUDA GPU, not {dev}")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        self.precision = precision
        with use_flavour("tensorrt") as module:
            self.tensorrt_version = str(module.__version__)
            _plugins_before_deserialising(roi_pool_plugin)
            self._logger = TensorRTLogger.create()
            self._runtime = trt.Runtime(self._logger)
            names = io_names or {}
            with torch.cuda.device(self.device):
                self._rpn = _EngineRunner(self._runtime, self._logger, _read(rpn_engine), _where(rpn_engine, "rpn"),
                                          self.device, names.get("rpn"))
                self._det = _EngineRunner(self._runtime, self._logger, _read(detector_engine),
                                          _where(detector_engine, "detector"), self.device, names.get("detector"))
        if len(self._rpn.inputs) != 1 or len(self._rpn.outputs) != 3:
            raise BackendError(f"{self._rpn.where}: expected 1 input and 3 outputs, got {self._rpn.inputs} → "
                               f"{self._rpn.outputs}")
        if len(self._det.inputs) != 2 or len(self._det.outputs) != 2:
            raise BackendError(f"{self._det.where}: expected 2 inputs and 2 outputs, got {self._det.inputs} → "
                               f"{self._det.outputs}")
        major, minor = torch.cuda.get_device_capability(self.device)
        self.label = label or f"TensorRT {self.tensorrt_version}, sm {major}.{minor}"
        self.engines: dict[str, EngineResult] = {}

    @classmethod
    def from_export(
        cls,
        info: ExportInfo,
        device: str | torch.device | None = None,
        *,
        cache_dir: str | Path | None = None,
        build: bool = True,
        force: bool = False,
        verbose: bool = False,
        **options: Any,
    ) -> TensorRTBackend:
        """Engines of ``info`` from the cache (``<export>/engines`` unless ``cache_dir``), built when missing
        (``build=False``: BackendError instead). ``options``:
        :class:`~frcnn_trt.engines.tensorrt.settings.BuildSettings` fields (``precision``, ``workspace_mib``,
        ``optimization_level``, ``plugin_impl``, ``timing_cache``)."""
        unknown = set(options) - _SETTINGS_OPTIONS
        if unknown:
            raise BackendError(f"unknown tensorrt backend option(s) {sorted(unknown)}; known: "
                               f"cache_dir, build, force, verbose, {', '.join(sorted(_SETTINGS_OPTIONS))}")
        settings = BuildSettings(**{k: v for k, v in options.items() if k in _SETTINGS_OPTIONS})
        dev = resolve_device(device)
        if dev.type != "cuda":
            raise BackendError(f"the tensorrt backend runs on a CUDA GPU, not {dev}")
        with torch.cuda.device(dev):
            engines = build_engines(info, settings, cache_dir=cache_dir, flavour="tensorrt", force=force,
                                    verbose=verbose, lookup_only=not build)
        files = info.data.get("files", {})
        io_names = {name: {"inputs": [v["name"] for v in files.get(onnx, {}).get("inputs", [])],
                           "outputs": [v["name"] for v in files.get(onnx, {}).get("outputs", [])]}
                    for name, onnx in (("rpn", "rpn.onnx"), ("detector", "detector.onnx"))}
        rpn, det = engines["rpn"], engines["detector"]
        backend = cls(rpn.path, det.path, device=dev, precision=det.precision, io_names=io_names,
                      label=f"{rpn.tensorrt}, sm {rpn.compute_capability}",
                      roi_pool_plugin=info.needs_roi_pool_plugin)
        backend.engines = dict(engines)
        return backend

    # ------------------------------------------------------------------------------------------ running

    def run_rpn(self, blob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f, p, d = self._rpn.run({self._rpn.inputs[0]: blob})
        return f, p, d

    def run_detector(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        feats_name, rois_name = self._det.inputs
        c, b = self._det.run({feats_name: features, rois_name: rois})
        return c, b

    @property
    def profiles(self) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
        """The optimisation profile of every engine input (as the engines report them)."""
        return {"rpn": dict(self._rpn.profiles), "detector": dict(self._det.profiles)}

    def describe(self) -> str:
        return f"tensorrt ({self.label}, {self.precision})"


def _read(engine: str | Path | bytes) -> bytes:
    if isinstance(engine, bytes):
        return engine
    try:
        return Path(engine).read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read TensorRT engine {engine}: {exc}") from None


def _where(engine: str | Path | bytes, name: str) -> str:
    return f"the {name} engine" if isinstance(engine, bytes) else f"the {name} engine {engine}"


def _plugins_before_deserialising(roi_pool_plugin: bool) -> None:
    """A detector engine finds its RoI op's plugin creator in the registry when it is deserialised: ours
    (``jit=True``: a JIT-built engine needs the Python implementation too), or TensorRT's standard library."""
    if roi_pool_plugin:
        plugin.register_plugin(jit=True)
    else:
        init_standard_plugins("tensorrt")


def version() -> str | None:
    """The installed TensorRT's version, or ``None`` when it is absent (type stubs alone do not count)."""
    info, _ = probe_tensorrt("tensorrt")
    return info.version if info is not None else None


def load(info: ExportInfo, device: torch.device, options: Mapping[str, Any], model: FasterRCNN | None = None
         ) -> TensorRTBackend:
    """The spec's loader: engines of ``info`` (from the cache, or built), on ``device`` (``model`` unused)."""
    return TensorRTBackend.from_export(info, device, **options)


SPEC = BackendSpec(
    name="tensorrt",
    summary="TensorRT engines on a CUDA GPU (built from the export, cached)",
    availability=availability,
    options=OPTIONS,
    loader=load,
    version=version,
    install=INSTALL_HINTS["tensorrt"],
)
