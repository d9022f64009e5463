"""The ``frcnn::RoIPool`` TensorRT plugin: a ``tensorrt.plugin`` quickly deployable plugin (QDP).

Glossary: N images, C channels, H x W feature map, R RoIs, PH x PW pooled shape.
  inputs ``features [N, C, H, W]`` (FP32 or FP16), ``rois [R, 5]`` FP32 (batch index, x1, y1, x2, y2);
  output ``[R, C, PH, PW]`` of the features' dtype.

The ONNX node ``frcnn.RoIPool`` (attributes ``pooled_shape`` INTS, ``spatial_scale`` FLOAT,
``plugin_namespace="frcnn"``, ``plugin_version="1"``) reaches this plugin through TensorRT's ONNX parser,
which looks up ``("RoIPool", "1", "frcnn")`` in the plugin registry and passes the two attributes as plugin
fields (``pooled_shape`` INT32 ``[PH, PW]``, ``spatial_scale`` FLOAT32 — observed with TensorRT-RTX's
parser, the same parser code as TensorRT's). :func:`register_plugin` registers, before any parse:

- ``@trtp.register``: the shape/dtype descriptor above;
- ``@trtp.autotune``: (FP32 features, FP32 rois, FP32 out) or (FP16, FP32, FP16), linear layout;
- ``@trtp.aot_impl`` (TensorRT ≥ 10.9): the PTX of :mod:`frcnn_trt.engines.tensorrt.kernel` with the pooled
  shape and the float32 spatial scale baked in (AOT plugin attributes are not serialized and AOT extra
  arguments are integers only), declared PTX ISA 7.0 so that older drivers load it; extra arguments
  ``N, C, H, W, R``. The kernel is stored in the engine, which then runs without Python;
- ``@trtp.impl`` (JIT, for debugging): ``torchvision.ops.roi_pool`` on the plugin's stream; an engine
  built with it needs this registration (and Python) to run.

Only a detector graph with the custom node needs it (``ExportInfo.needs_roi_pool_plugin``); ONNX ``RoiAlign``
goes through TensorRT's standard plugin library instead
(:func:`frcnn_trt.engines.tensorrt.runtime.init_standard_plugins`).

Importing this module needs no TensorRT; :func:`register_plugin` raises :class:`BackendError` naming the
TensorRT version needed when ``tensorrt.plugin`` or its ahead-of-time API is missing.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from types import GenericAlias
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from frcnn_trt.engines.tensorrt.kernel import BLOCK_SIZE, DEFAULT_ARCH, compile_ptx, kernel_name
from frcnn_trt.engines.tensorrt.runtime import load_tensorrt
from frcnn_trt.errors import BackendError, ModelError

__all__ = [
    "MIN_AOT_TENSORRT",
    "PLUGIN_ID",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "PTX_ISA",
    "aot_kernel",
    "find_creator",
    "missing_plugin_message",
    "plugin_module_status",
    "pooled_shape_of",
    "register_plugin",
    "registered_impls",
    "require_creator",
]

PLUGIN_NAMESPACE = "frcnn"
PLUGIN_NAME = "RoIPool"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
#: TensorRT release that introduced ahead-of-time (``aot_impl``) quickly deployable plugins
MIN_AOT_TENSORRT = (10, 9)
#: the PTX ISA the plugin's PTX declares (NVRTC 13.2 writes 9.2, which only CUDA 13.2 drivers load)
PTX_ISA = (7, 0)
#: the autotune combinations: features, rois, output
TYPE_COMBINATIONS = "FP32|FP16, FP32, FP32|FP16"

_LOCK = threading.Lock()
_REGISTERED: set[str] = set()  # "aot", "jit"


def _fmt_version(v: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in v)


# ------------------------------------------------------------------------------------------------ pure helpers


def pooled_shape_of(pooled_shape: Sequence[int] | Any) -> tuple[int, int]:
    """``(PH, PW)`` from the plugin field (a numpy int array) or a sequence; ModelError if malformed."""
    values = [int(v) for v in list(pooled_shape)]
    if len(values) != 2 or min(values) < 1:
        raise ModelError(f"RoIPool pooled_shape must be two positive ints, got {values}")
    return values[0], values[1]


def aot_kernel(pooled_shape: Sequence[int] | Any, spatial_scale: float, dtype: str = "float32",
               *, arch: str | None = None) -> tuple[bytes, bytes]:
    """``(kernel name, PTX)`` for the AOT implementation: FP32 RoIs, features/output of ``dtype``,
    pooled shape and float32 spatial scale baked in, PTX ISA :data:`PTX_ISA`."""
    shape = pooled_shape_of(pooled_shape)
    ptx = compile_ptx(shape, float(spatial_scale), dtype, "float32", arch=arch or DEFAULT_ARCH, ptx_isa=PTX_ISA)
    return kernel_name(dtype, "float32").encode(), ptx.encode()


# ------------------------------------------------------------------------------------------------ TensorRT side


def _tensorrt(flavour: str) -> Any:
    return load_tensorrt(flavour)


def plugin_module_status(flavour: str = "tensorrt") -> tuple[bool, bool, str]:
    """``(tensorrt.plugin importable, ahead-of-time API present, one line)``; never raises."""
    if flavour != "tensorrt":
        return False, False, "TensorRT-RTX has no Python plugins (no tensorrt.plugin module)"
    try:
        trt = _tensorrt(flavour)
    except BackendError as exc:
        return False, False, str(exc)
    version = str(trt.__version__)
    try:
        trtp = importlib.import_module("tensorrt.plugin")
    except Exception as exc:  # ImportError, or an error raised while it initialises
        return False, False, (f"TensorRT {version} has no tensorrt.plugin module ({exc}); quickly deployable "
                              f"plugins with an ahead-of-time kernel need TensorRT ≥ {_fmt_version(MIN_AOT_TENSORRT)}")
    if not hasattr(trtp, "aot_impl"):
        return True, False, (f"TensorRT {version}: tensorrt.plugin has no aot_impl (ahead-of-time plugins need "
                             f"TensorRT ≥ {_fmt_version(MIN_AOT_TENSORRT)}); only the JIT (Python) plugin can run")
    return True, True, f"TensorRT {version}: tensorrt.plugin with ahead-of-time kernels"


def _annotate(fn: Any, annotations: dict[str, Any]) -> Any:
    # tensorrt.plugin validates signatures with inspect.signature and issubclass on the annotations, so they
    # must be objects, not the strings that `from __future__ import annotations` leaves
    fn.__annotations__ = annotations
    return fn


def _define(trt: Any, trtp: Any, aot: bool) -> None:
    """Register descriptor, autotune, JIT impl and (``aot``) the AOT impl with ``tensorrt.plugin``."""
    int_array = npt.NDArray[np.int32]
    tdesc = trtp.TensorDesc

    def roi_pool_desc(features: Any, rois: Any, pooled_shape: Any, spatial_scale: Any) -> Any:
        ph, pw = pooled_shape_of(pooled_shape)
        return trtp.from_shape_expr((rois.shape_expr[0], features.shape_expr[1], ph, pw), dtype=features.dtype)

    trtp.register(PLUGIN_ID)(_annotate(roi_pool_desc, {
        "features": tdesc, "rois": tdesc, "pooled_shape": int_array, "spatial_scale": float, "return": tdesc}))

    def roi_pool_autotune(features: Any, rois: Any, outputs: Any) -> Any:
        return [trtp.AutoTuneCombination(TYPE_COMBINATIONS, "LINEAR")]

    trtp.autotune(PLUGIN_ID)(_annotate(roi_pool_autotune, {
        "features": tdesc, "rois": tdesc, "outputs": GenericAlias(tuple, (tdesc,)),
        "return": GenericAlias(list, (trtp.AutoTuneCombination,))}))

    def roi_pool_impl(features: Any, rois: Any, pooled_shape: Any, spatial_scale: Any, outputs: Any,
                      stream: Any) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            f = torch.as_tensor(features, device="cuda")
            r = torch.as_tensor(rois, device="cuda")
            out = torch.as_tensor(outputs[0], device="cuda")
            import torchvision  # only the JIT plugin needs it: importing it costs a one-image detect ~3 s

            pooled = torchvision.ops.roi_pool(f.float(), r.float(), pooled_shape_of(pooled_shape),
                                              float(np.float32(spatial_scale)))
            out.copy_(pooled.to(out.dtype))

    trtp.impl(PLUGIN_ID)(_annotate(roi_pool_impl, {
        "features": trtp.Tensor, "rois": trtp.Tensor, "pooled_shape": int_array, "spatial_scale": float,
        "outputs": GenericAlias(tuple, (trtp.Tensor,)), "stream": int, "return": None}))
    _REGISTERED.add("jit")

    if not aot:
        return

    def roi_pool_aot(features: Any, rois: Any, pooled_shape: Any, spatial_scale: Any, outputs: Any,
                     tactic: Any) -> Any:
        dtype = "float16" if features.dtype == trt.float16 else "float32"
        name, ptx = aot_kernel(pooled_shape, spatial_scale, dtype)
        f = features.shape_expr
        params = trtp.KernelLaunchParams()
        params.grid_x = trtp.cdiv(outputs[0].shape_expr.numel(), BLOCK_SIZE)
        params.block_x = BLOCK_SIZE
        params.shared_mem = 0
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (f[0], f[1], f[2], f[3], rois.shape_expr[0])])
        return name, ptx, params, extra

    trtp.aot_impl(PLUGIN_ID)(_annotate(roi_pool_aot, {
        "features": tdesc, "rois": tdesc, "pooled_shape": int_array, "spatial_scale": float,
        "outputs": GenericAlias(tuple, (tdesc,)), "tactic": int,
        "return": GenericAlias(tuple, (str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs))}))
    _REGISTERED.add("aot")


def register_plugin(*, jit: bool = False, flavour: str = "tensorrt") -> None:
    """Register ``frcnn::RoIPool`` with ``tensorrt.plugin`` (idempotent; call before parsing an ONNX).

    Defines the AOT implementation when the TensorRT has one, and always the JIT (torchvision) one.
    ``jit=False`` requires the AOT API: a TensorRT without it raises :class:`BackendError` naming the
    version needed (:data:`MIN_AOT_TENSORRT`)."""
    with _LOCK:
        if "aot" in _REGISTERED or (jit and "jit" in _REGISTERED):
            return
        has_module, has_aot, status = plugin_module_status(flavour)
        if not has_module or (not has_aot and not jit):
            raise BackendError(f"cannot register the {PLUGIN_ID} plugin: {status}. Install: "
                               f"pip install 'tensorrt-cu13>={_fmt_version(MIN_AOT_TENSORRT)}'")
        _define(_tensorrt(flavour), importlib.import_module("tensorrt.plugin"), aot=has_aot)


def registered_impls() -> frozenset[str]:
    """Which implementations this process registered: ``{"jit"}``, ``{"jit", "aot"}`` or empty."""
    return frozenset(_REGISTERED)


def find_creator(flavour: str = "tensorrt") -> Any | None:
    """The registry's creator for ``("RoIPool", "1", "frcnn")``, or ``None``."""
    trt = _tensorrt(flavour)
    try:
        return trt.get_plugin_registry().get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    except Exception:  # some versions raise instead of returning None
        return None


def missing_plugin_message(flavour: str = "tensorrt") -> str:
    """What was searched for the plugin, and with which TensorRT (for errors)."""
    try:
        trt = _tensorrt(flavour)
        label = f"{'TensorRT' if flavour == 'tensorrt' else 'TensorRT-RTX'} {trt.__version__}"
        creators = [f"{c.plugin_namespace or '-'}::{c.name} v{c.plugin_version}"
                    for c in trt.get_plugin_registry().all_creators]
    except Exception as exc:  # TensorRT absent or its registry unusable
        return f"the {PLUGIN_ID} plugin cannot be looked up: {exc}"
    _, _, status = plugin_module_status(flavour)
    return (f"plugin {PLUGIN_ID} version {PLUGIN_VERSION} not found in the plugin registry of {label}: searched "
            f"get_plugin_registry().get_creator({PLUGIN_NAME!r}, {PLUGIN_VERSION!r}, {PLUGIN_NAMESPACE!r}) "
            f"after frcnn_trt.engines.tensorrt.plugin.register_plugin(); tensorrt.plugin: {status}; "
            f"registered creators: {', '.join(creators) or 'none'}")


def require_creator(flavour: str = "tensorrt") -> Any:
    """The creator of ``frcnn::RoIPool``; :class:`BackendError` (what was searched, TensorRT version) if none."""
    creator = find_creator(flavour)
    if creator is None:
        raise BackendError(missing_plugin_message(flavour))
    return creator
