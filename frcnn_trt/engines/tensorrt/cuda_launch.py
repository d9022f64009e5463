"""Launch the RoIPool plugin's PTX on torch CUDA tensors through the CUDA driver API (tests on a GPU).

The kernel proof against ``torchvision.ops.roi_pool``: :func:`run_roi_pool_cuda` compiles the entry of
:mod:`frcnn_trt.engines.tensorrt.kernel` for the tensors' dtypes and launches it on torch's current stream
with the argument order TensorRT's AOT plugin uses — ``(features, rois, int N, int C, int H, int W, int R,
output)``. Needs ``cuda-bindings`` (driver API) and NVRTC or nvcc, not CuPy.

Glossary: N images, C channels, H x W feature map, R RoIs, PH x PW pooled shape.
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from typing import TYPE_CHECKING, Any

from frcnn_trt.engines.tensorrt.kernel import (
    DEFAULT_ARCH,
    check_pooled_shape,
    compile_ptx,
    kernel_name,
    launch_config,
    ptx_isa_version,
)
from frcnn_trt.errors import BackendError, ModelError

if TYPE_CHECKING:
    import torch

__all__ = ["run_roi_pool_cuda"]

_INT32_MAX = 2**31 - 1

_DRIVER_LOCK = threading.Lock()
_PRIMARY_CONTEXTS: dict[int, Any] = {}
_FUNCTIONS: dict[tuple[int, str, str], Any] = {}


def _driver() -> Any:
    try:
        return importlib.import_module("cuda.bindings.driver")
    except ImportError:
        pass
    try:  # cuda-python < 12.6 named the module cuda.cuda
        return importlib.import_module("cuda.cuda")
    except ImportError as exc:
        raise BackendError(
            "the CUDA driver API bindings are not available: import of 'cuda.bindings.driver' and "
            "'cuda.cuda' failed; `pip install cuda-bindings`"
        ) from exc


def _drv_check(drv: Any, result: Any, what: str) -> tuple[Any, ...]:
    if not isinstance(result, tuple):
        result = (result,)
    err = result[0]
    if err != drv.CUresult.CUDA_SUCCESS:
        _, msg = drv.cuGetErrorString(err)
        text = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
        raise BackendError(f"CUDA driver call {what} failed: {getattr(err, 'name', err)}: {text}")
    return result[1:]


def _primary_context(drv: Any, device: int) -> Any:
    ctx = _PRIMARY_CONTEXTS.get(device)
    if ctx is None:
        try:
            result = drv.cuInit(0)
        except Exception as exc:  # cuda-bindings raises when libcuda (the NVIDIA driver) cannot be loaded
            raise BackendError(f"the CUDA driver library could not be loaded: {exc}") from exc
        _drv_check(drv, result, "cuInit")
        (dev,) = _drv_check(drv, drv.cuDeviceGet(device), "cuDeviceGet")
        (ctx,) = _drv_check(drv, drv.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        _PRIMARY_CONTEXTS[device] = ctx
    return ctx


def _load_function(drv: Any, device: int, ptx: str, entry: str) -> Any:
    key = (device, entry, ptx)
    func = _FUNCTIONS.get(key)
    if func is not None:
        return func
    image = ctypes.create_string_buffer(ptx.encode())  # NUL-terminated PTX text
    err, module = drv.cuModuleLoadData(ctypes.addressof(image))
    if err == drv.CUresult.CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
        (driver_version,) = _drv_check(drv, drv.cuDriverGetVersion(), "cuDriverGetVersion")
        major, minor = ptx_isa_version(ptx)
        raise BackendError(
            f"the CUDA driver (CUDA {driver_version // 1000}.{driver_version % 1000 // 10}) cannot load "
            f"PTX ISA {major}.{minor} of {entry}: pass ptx_isa=(7, 0) to compile_ptx, or compile with an "
            "NVRTC/nvcc no newer than the driver"
        )
    (module,) = _drv_check(drv, (err, module), f"cuModuleLoadData({entry})")
    result = drv.cuModuleGetFunction(module, entry.encode())
    (func,) = _drv_check(drv, result, f"cuModuleGetFunction({entry})")
    _FUNCTIONS[key] = func
    return func


def run_roi_pool_cuda(
    features: torch.Tensor,
    rois: torch.Tensor,
    pooled_shape: tuple[int, int] | list[int],
    spatial_scale: float,
    *,
    arch: str = DEFAULT_ARCH,
    ptx_isa: tuple[int, int] | None = None,
    max_blocks: int | None = None,
) -> torch.Tensor:
    """Run the plugin kernel on CUDA tensors: ``[N, C, H, W]``, ``[R, 5]`` -> ``[R, C, PH, PW]``.

    For tests on a GPU (the kernel proof against ``torchvision.ops.roi_pool``); needs
    ``cuda-bindings`` and NVRTC or nvcc, not CuPy. Launches on torch's current stream of the
    features' device. ``arch`` and ``ptx_isa`` go to :func:`compile_ptx`; ``max_blocks`` caps the
    grid (exercises the grid-stride loop).
    """
    import torch

    ph, pw = check_pooled_shape(pooled_shape)
    if not (features.is_cuda and rois.is_cuda) or features.device != rois.device:
        raise ModelError(
            f"features and rois must be CUDA tensors on one device, got {features.device} and {rois.device}"
        )
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ModelError(
            f"need features [N, C, H, W] and rois [R, 5], got {tuple(features.shape)} and {tuple(rois.shape)}"
        )
    names = {torch.float32: "float32", torch.float16: "float16"}
    if features.dtype not in names or rois.dtype not in names:
        raise ModelError(
            f"features and rois must be float32 or float16, got {features.dtype} and {rois.dtype}"
        )
    dtype, rois_dtype = names[features.dtype], names[rois.dtype]
    entry = kernel_name(dtype, rois_dtype)
    n, c, h, w = features.shape
    r = rois.shape[0]
    if max(n, c, h, w, r) > _INT32_MAX:
        raise ModelError(f"sizes must fit int32, got features {tuple(features.shape)}, {r} rois")
    output = features.new_empty((r, c, ph, pw))
    if output.numel() == 0:
        return output
    features = features.contiguous()
    rois = rois.contiguous()
    ptx = compile_ptx((ph, pw), spatial_scale, dtype, rois_dtype, arch=arch, ptx_isa=ptx_isa)

    drv = _driver()
    device = features.device.index if features.device.index is not None else torch.cuda.current_device()
    grid, block = launch_config(output.numel())
    if max_blocks is not None:
        grid = max(1, min(grid, max_blocks))
    stream = drv.CUstream(torch.cuda.current_stream(device).cuda_stream)
    args = [
        ctypes.c_void_p(features.data_ptr()),
        ctypes.c_void_p(rois.data_ptr()),
        *(ctypes.c_int(int(v)) for v in (n, c, h, w, r)),
        ctypes.c_void_p(output.data_ptr()),
    ]
    params = (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))
    with _DRIVER_LOCK, torch.cuda.device(device):
        ctx = _primary_context(drv, device)
        _drv_check(drv, drv.cuCtxPushCurrent(ctx), "cuCtxPushCurrent")
        try:
            func = _load_function(drv, device, ptx, entry)
            _drv_check(
                drv,
                drv.cuLaunchKernel(func, grid, 1, 1, block, 1, 1, 0, stream, ctypes.addressof(params), 0),
                f"cuLaunchKernel({entry})",
            )
        finally:
            _drv_check(drv, drv.cuCtxPopCurrent(), "cuCtxPopCurrent")
    return output
