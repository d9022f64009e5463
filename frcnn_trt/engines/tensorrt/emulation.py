"""The RoI-pool plugin kernel run on the CPU: ``roi_pool.cu`` compiled as host C++ and called through ctypes.

The translation unit is ``host_shim.h`` (package data) + :func:`frcnn_trt.engines.tensorrt.kernel.kernel_source`
(the shipped ``roi_pool.cu`` after exactly the constants the NVRTC path bakes: pooled shape, float32 spatial
scale, the entry for the dtypes) + one launcher line; :func:`host_source` returns it. The kernel text is not
edited: the shim supplies ``__global__``/``__device__``, ``blockIdx``/``threadIdx``/``blockDim``/``gridDim``
(the launcher loops over the grid and the block), CUDA's ``max`` and a software IEEE half conversion for the
kernel's two PTX ``cvt`` statements. The system ``g++`` compiles it (``-O2 -ffp-contract=off``, as NVRTC runs
with ``--fmad=false``); the shared library is cached per source + compiler hash (:func:`cache_dir`) and loaded
once per process and configuration.

Results: float32 features give exactly ``torchvision.ops.roi_pool``; float16 features give exactly
``torchvision.ops.roi_pool(features.float(), rois).half()`` (every output is a maximum of half inputs or 0; an
all-NaN/-inf bin's -FLT_MAX becomes -inf in both). A batch index outside [0, N) gives 0 (torchvision reads
out of bounds there).

Glossary: N images, C channels, H x W feature map, R RoIs, PH x PW pooled shape.
  features ``[N, C, H, W]``; rois ``[R, 5]`` (batch_index, x1, y1, x2, y2), image pixels;
  output ``[R, C, PH, PW]``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import torch

from frcnn_trt.engines.tensorrt import kernel
from frcnn_trt.errors import BackendError, ModelError
from frcnn_trt.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "CACHE_ENV",
    "COMPILER_FLAGS",
    "cache_dir",
    "emulation_available",
    "float_to_half_emulated",
    "half_to_float_emulated",
    "host_compiler",
    "host_source",
    "launch_emulated",
    "roi_pool_emulated",
]

SHIM_NAME = "host_shim.h"
_PACKAGE = "frcnn_trt.engines.tensorrt"
CACHE_ENV = "FRCNN_TRT_HOST_KERNEL_CACHE"
COMPILER_FLAGS = ("-std=c++17", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-Wall")
_CXX = "g++"
_INT32_MAX = 2**31 - 1
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------
# Source, compiler, cache


@functools.lru_cache(maxsize=1)
def _shim_text() -> str:
    try:
        return importlib.resources.files(_PACKAGE).joinpath(SHIM_NAME).read_text(encoding="utf-8")
    except OSError as exc:
        raise BackendError(f"{SHIM_NAME} is missing from the {_PACKAGE} package data: {exc}") from exc


def host_source(
    pooled_shape: tuple[int, int] | list[int],
    spatial_scale: float,
    dtype: object = "float32",
    rois_dtype: object = "float32",
) -> str:
    """The host translation unit: shim + ``kernel.kernel_source(...)`` unchanged + the launcher for its entry."""
    source = kernel.kernel_source(pooled_shape, spatial_scale, dtype, rois_dtype)
    entry = kernel.kernel_name(dtype, rois_dtype)
    return (
        f'#line 1 "{SHIM_NAME}"\n{_shim_text()}{source}\n#line 1 "frcnn_host_launcher"\nFRCNN_HOST_LAUNCHER({entry})\n'
    )


@functools.lru_cache(maxsize=1)
def host_compiler() -> tuple[str, str]:
    """(path, first line of ``--version``) of the host C++ compiler; BackendError when there is none."""
    path = shutil.which(_CXX)
    if path is None:
        raise BackendError(f"{_CXX!r} was not found on PATH; install a C++ compiler (Debian: apt-get install g++)")
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"{path} --version failed: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    return path, (lines[0] if lines else "unknown version")


def _private_dir(path: Path) -> Path:
    """``path`` created if needed; BackendError unless this user owns it and no one else may write to it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise BackendError(f"cannot create the host-kernel cache folder {path}: {exc}") from exc
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BackendError(
            f"host-kernel cache folder {path} is not private to this user (owner uid {info.st_uid}, "
            f"mode {stat.filemode(info.st_mode)}): set {CACHE_ENV} to a folder of your own"
        )
    return path


def cache_dir() -> Path:
    """Where compiled host kernels are kept: ``$FRCNN_TRT_HOST_KERNEL_CACHE``, else
    ``$XDG_CACHE_HOME/frcnn-trt/host-kernels`` (``~/.cache`` by default), else a per-user temp folder."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return _private_dir(Path(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    try:
        return _private_dir(Path(base) / "frcnn-trt" / "host-kernels")
    except BackendError:
        return _private_dir(Path(tempfile.gettempdir()) / f"frcnn-trt-host-kernels-{os.getuid()}")


def _compile(source: str) -> Path:
    """The shared library of ``source`` from the cache, compiled (and stored atomically) when missing."""
    cxx, version = host_compiler()
    key = hashlib.sha256("\0".join([source, version, *COMPILER_FLAGS]).encode()).hexdigest()[:32]
    target = cache_dir() / f"roi_pool_host_{key}.so"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="frcnn_roi_pool_host_") as tmp:
        src, lib = Path(tmp) / "roi_pool_host.cpp", Path(tmp) / "roi_pool_host.so"
        src.write_text(source, encoding="utf-8")
        kernel.run_compiler([cxx, *COMPILER_FLAGS, "-o", str(lib), str(src)], "the RoI-pool kernel for the host")
        atomic_write_text(target.with_suffix(".cpp"), source)
        atomic_write_bytes(target, lib.read_bytes())
    return target


@functools.lru_cache(maxsize=64)
def _library(ph: int, pw: int, scale: float, dtype: str, rois_dtype: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_compile(host_source((ph, pw), scale, dtype, rois_dtype))))
    ptr, i32, u32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_longlong
    lib.frcnn_host_launch.argtypes = [ptr, ptr, i32, i32, i32, i32, i32, ptr, u32, u32]
    lib.frcnn_host_launch.restype = i32
    for name in ("frcnn_host_half_to_float_n", "frcnn_host_float_to_half_n"):
        getattr(lib, name).argtypes = [ptr, ptr, i64]
        getattr(lib, name).restype = None
    return lib


def _load(pooled_shape: tuple[int, int] | list[int], spatial_scale: float, dtype: str, rois_dtype: str) -> ctypes.CDLL:
    ph, pw = kernel.check_pooled_shape(pooled_shape)
    kernel.kernel_name(dtype, rois_dtype)  # validates the pair
    try:  # the cache key: float32(spatial_scale), as kernel_source bakes it (and validates it)
        scale: float = struct.unpack("<f", struct.pack("<f", float(spatial_scale)))[0]
    except (OverflowError, TypeError, ValueError):
        raise ModelError(f"spatial_scale must be a positive finite float32, got {spatial_scale!r}") from None
    return _library(ph, pw, scale, dtype, rois_dtype)


# ----------------------------------------------------------------------------------------------
# Running it


def _check_inputs(features: torch.Tensor, rois: torch.Tensor) -> tuple[str, str]:
    if not isinstance(features, torch.Tensor) or not isinstance(rois, torch.Tensor):
        raise ModelError(f"features and rois must be torch tensors, got {type(features)} and {type(rois)}")
    if features.device.type != "cpu" or rois.device.type != "cpu":
        raise ModelError(f"the host kernel runs on CPU tensors, got {features.device} and {rois.device}")
    if features.dim() != 4:
        raise ModelError(f"features must be [N, C, H, W], got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ModelError(f"rois must be [R, 5] (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}")
    if max(*features.shape, rois.shape[0]) > _INT32_MAX:
        raise ModelError(f"sizes must fit int32, got features {tuple(features.shape)}, rois {tuple(rois.shape)}")
    dtype, rois_dtype = kernel.normalize_dtype(features.dtype), kernel.normalize_dtype(rois.dtype)
    kernel.kernel_name(dtype, rois_dtype)  # the pair must have an entry
    return dtype, rois_dtype


def launch_emulated(
    features: torch.Tensor,
    rois: torch.Tensor,
    pooled_shape: tuple[int, int],
    spatial_scale: float,
    grid_x: int | None = None,
    block_x: int = kernel.BLOCK_SIZE,
) -> torch.Tensor:
    """:func:`roi_pool_emulated` with an explicit launch: ``grid_x`` blocks (default
    ``kernel.launch_config``'s, one thread per output) of ``block_x`` threads, as the plugin would launch."""
    dtype, rois_dtype = _check_inputs(features, rois)
    lib = _load(pooled_shape, spatial_scale, dtype, rois_dtype)
    ph, pw = kernel.check_pooled_shape(pooled_shape)
    n, c, h, w = (int(v) for v in features.shape)
    r = int(rois.shape[0])
    grid = kernel.launch_config(r * c * ph * pw, block_x).grid_x if grid_x is None else grid_x
    if not (1 <= grid <= 2**31 - 1 and 1 <= block_x <= 1024):
        raise ModelError(f"launch needs 1 <= grid_x < 2^31 and 1 <= block_x <= 1024, got {grid}, {block_x}")
    features, rois = features.contiguous(), rois.contiguous()
    output = torch.empty((r, c, ph, pw), dtype=features.dtype)
    status = lib.frcnn_host_launch(
        features.data_ptr(), rois.data_ptr(), n, c, h, w, r, output.data_ptr(), grid, block_x
    )
    if status != 0:
        raise BackendError(f"the host RoI-pool launcher refused grid {grid} x block {block_x} (status {status})")
    return output


def roi_pool_emulated(
    features: torch.Tensor, rois: torch.Tensor, pooled_shape: tuple[int, int], spatial_scale: float
) -> torch.Tensor:
    """RoI max pooling by the plugin's CUDA kernel compiled for the host.

    ``features`` float32 or float16 ``[N, C, H, W]`` on CPU, ``rois`` float32 ``[R, 5]`` (float16 RoIs with
    float16 features select the kernel's half-RoI entry); returns ``[R, C, PH, PW]`` of the features' dtype.
    BackendError when no host compiler can build it (see :func:`emulation_available`).
    """
    return launch_emulated(features, rois, pooled_shape, spatial_scale)


def _default_library() -> ctypes.CDLL:
    return _load((7, 7), 1 / 16, "float16", "float32")


def half_to_float_emulated(bits: torch.Tensor) -> torch.Tensor:
    """The shim's ``cvt.f32.f16`` on int16 half bit patterns (a CPU tensor), as float32."""
    src = bits.to(torch.int16).contiguous()
    out = torch.empty(src.shape, dtype=torch.float32)
    _default_library().frcnn_host_half_to_float_n(src.data_ptr(), out.data_ptr(), src.numel())
    return out


def float_to_half_emulated(values: torch.Tensor) -> torch.Tensor:
    """The shim's ``cvt.rn.f16.f32`` on float32 values (a CPU tensor), as float16."""
    src = values.to(torch.float32).contiguous()
    out = torch.empty(src.shape, dtype=torch.int16)
    _default_library().frcnn_host_float_to_half_n(src.data_ptr(), out.data_ptr(), src.numel())
    return out.view(torch.float16)


def emulation_available() -> tuple[bool, str]:
    """(True, compiler and cache folder) when the host kernel compiles and loads here, else (False, why)."""
    try:
        cxx, version = host_compiler()
        _load((7, 7), 1 / 16, "float32", "float32")
        _default_library()
        return True, f"{version} ({cxx}); compiled kernels cached in {cache_dir()}"
    except (BackendError, OSError) as exc:
        return False, f"RoI-pool host emulation unavailable: {exc}"
