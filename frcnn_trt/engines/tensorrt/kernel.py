"""The CUDA kernel of the TensorRT RoIPool plugin: its source and its PTX.

``roi_pool.cu`` (package data) holds Caffe RoI max pooling, forward only, with the semantics of
``torchvision.ops.roi_pool`` (docs/REFERENCE.md §8). This module bakes the compile-time constants into the
source (:func:`kernel_source`) and compiles it to PTX (:func:`compile_ptx`: NVRTC from the
``cuda-bindings`` wheel, ``nvcc`` as a fallback). The TensorRT plugin registration
(:mod:`frcnn_trt.engines.tensorrt.plugin`, ``tensorrt.plugin`` AOT) builds on :func:`compile_ptx`,
:func:`kernel_name` and :func:`launch_config`; :mod:`frcnn_trt.engines.tensorrt.cuda_launch` launches the
PTX on torch tensors for tests on a GPU.

Glossary: N images, C channels, H x W feature map, R RoIs, PH x PW pooled shape.
  features ``[N, C, H, W]``; rois ``[R, 5]`` (batch_index, x1, y1, x2, y2), image pixels;
  output ``[R, C, PH, PW]``.

Kernel entries (one per compiled PTX; the parameter order is TensorRT's AOT order: inputs, int
extra arguments, outputs) — ``(features, rois, int N, int C, int H, int W, int R, output)``:

============================  ========  =======  ===============================================
entry                         features  rois     note
============================  ========  =======  ===============================================
``roi_pool_fwd_f32``          float32   float32
``roi_pool_fwd_f16``          float16   float32  the FP16 form to use: RoI edges stay exact
``roi_pool_fwd_f16_f16rois``  float16   float16  half RoIs round coordinates (0.5 px > 512 px)
============================  ========  =======  ===============================================

Index and compare arithmetic is float32 in every entry; an FP16 output is the exact max of FP16
inputs, so it equals ``torchvision.ops.roi_pool`` run in float32 on the same FP16 values (only an
all-NaN/-inf bin differs: -FLT_MAX in float32 becomes -inf in half).

Architectures: PTX for ``compute_75`` (the default; the oldest target of CUDA 13's NVRTC) is
JIT-compiled by the driver for every newer GPU (Turing, Ampere, Ada, Hopper, Blackwell). The
driver must know the PTX ISA version the compiler wrote (``.version`` in the PTX, see
:func:`ptx_isa_version`): PTX from NVRTC 13.2 declares ISA 9.2 and so needs a CUDA 13.2 driver.
``compile_ptx(..., ptx_isa=(7, 0))`` declares an older ISA instead; that is sound for this kernel,
whose PTX uses only instructions of ISA <= 6.3 (the version that introduced sm_75), and lets the
PTX load on drivers back to CUDA 11.0.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.resources
import math
import operator
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

from frcnn_trt.errors import BackendError, ModelError

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_ARCH",
    "ENTRY_NAMES",
    "LaunchConfig",
    "check_pooled_shape",
    "compile_ptx",
    "compile_source_to_ptx",
    "float32_literal",
    "kernel_name",
    "kernel_source",
    "launch_config",
    "normalize_dtype",
    "nvrtc_version",
    "ptx_entries",
    "ptx_isa_version",
    "run_compiler",
    "source_sha256",
]

BLOCK_SIZE = 256
DEFAULT_ARCH = "compute_75"
SOURCE_NAME = "roi_pool.cu"
_PACKAGE = "frcnn_trt.engines.tensorrt"
_NVRTC_MODULE = "cuda.bindings.nvrtc"
_NVCC = "nvcc"
_MAX_GRID_X = 2**31 - 1
_MIN_PTX_ISA = (6, 3)  # introduced sm_75; every instruction the kernel compiles to is older

Compiler = Literal["auto", "nvrtc", "nvcc"]

_DTYPE_ALIASES = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
}

# (features dtype, rois dtype) -> (entry name, macro that enables it in roi_pool.cu)
_ENTRIES: dict[tuple[str, str], tuple[str, str]] = {
    ("float32", "float32"): ("roi_pool_fwd_f32", "FRCNN_ROI_POOL_F32"),
    ("float16", "float32"): ("roi_pool_fwd_f16", "FRCNN_ROI_POOL_F16"),
    ("float16", "float16"): ("roi_pool_fwd_f16_f16rois", "FRCNN_ROI_POOL_F16_F16ROIS"),
}
ENTRY_NAMES: tuple[str, ...] = tuple(name for name, _ in _ENTRIES.values())


class LaunchConfig(NamedTuple):
    """A 1-D launch: ``grid_x`` blocks of ``block_x`` threads, no shared memory."""

    grid_x: int
    block_x: int


# ----------------------------------------------------------------------------------------------
# Arguments


def normalize_dtype(dtype: object) -> str:
    """``"float32"`` or ``"float16"`` from a name (``"fp16"``, ``"half"``…) or a ``torch.dtype``."""
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPE_ALIASES:
        raise ModelError(f"RoI-pool kernel dtype must be float32 or float16, got {dtype!r}")
    return _DTYPE_ALIASES[name]


def check_pooled_shape(pooled_shape: tuple[int, int] | list[int]) -> tuple[int, int]:
    try:
        if len(pooled_shape) != 2 or any(isinstance(v, (bool, float)) for v in pooled_shape):
            raise TypeError
        ph, pw = (operator.index(v) for v in pooled_shape)
    except TypeError:
        ph = pw = 0
    if ph < 1 or pw < 1:
        raise ModelError(f"pooled_shape must be two positive ints (PH, PW), got {pooled_shape!r}")
    return ph, pw


def _float32(value: float) -> float:
    """``value`` rounded to float32 (as torchvision's kernel converts its double spatial scale)."""
    try:
        f32: float = struct.unpack("<f", struct.pack("<f", float(value)))[0]
    except (OverflowError, TypeError, ValueError):
        raise ModelError(f"spatial_scale must be a positive float32, got {value!r}") from None
    return f32


def _check_spatial_scale(spatial_scale: float) -> float:
    f32 = _float32(spatial_scale)
    if not (math.isfinite(f32) and f32 > 0.0):
        raise ModelError(f"spatial_scale must be a positive finite float32, got {spatial_scale!r}")
    return f32


def float32_literal(value: float) -> str:
    """A CUDA C float literal that parses to exactly ``float32(value)`` (9 significant digits)."""
    return f"{_float32(value):.8e}f"


def kernel_name(dtype: object = "float32", rois_dtype: object = "float32") -> str:
    """The PTX entry name for features of ``dtype`` and RoIs of ``rois_dtype``."""
    key = (normalize_dtype(dtype), normalize_dtype(rois_dtype))
    if key not in _ENTRIES:
        raise ModelError(
            f"no RoI-pool kernel for features {key[0]} with rois {key[1]}; "
            f"supported (features, rois): {sorted(_ENTRIES)}"
        )
    return _ENTRIES[key][0]


# ----------------------------------------------------------------------------------------------
# Source and PTX


@functools.lru_cache(maxsize=1)
def _raw_source() -> str:
    return importlib.resources.files(_PACKAGE).joinpath(SOURCE_NAME).read_text(encoding="utf-8")


def source_sha256() -> str:
    """SHA-256 of ``roi_pool.cu`` as shipped (part of a detector engine's cache key)."""
    return hashlib.sha256(_raw_source().encode()).hexdigest()


def kernel_source(
    pooled_shape: tuple[int, int] | list[int],
    spatial_scale: float,
    dtype: object = "float32",
    rois_dtype: object = "float32",
) -> str:
    """``roi_pool.cu`` with PH, PW, the spatial scale and the entry for the dtypes defined up front."""
    ph, pw = check_pooled_shape(pooled_shape)
    scale = _check_spatial_scale(spatial_scale)
    key = (normalize_dtype(dtype), normalize_dtype(rois_dtype))
    kernel_name(*key)  # validates the pair
    entry, macro = _ENTRIES[key]
    bits = struct.unpack("<I", struct.pack("<f", scale))[0]
    header = (
        "// Generated by frcnn_trt.engines.tensorrt.kernel.kernel_source\n"
        f"#define FRCNN_POOLED_H {ph}\n"
        f"#define FRCNN_POOLED_W {pw}\n"
        f"#define FRCNN_SPATIAL_SCALE ({float32_literal(scale)})  /* float32 0x{bits:08X} = {scale!r} */\n"
        f"#define {macro} 1  /* entry {entry} */\n"
        f'#line 1 "{SOURCE_NAME}"\n'
    )
    return header + _raw_source()


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library that ``cuda-bindings`` loads; BackendError if none."""
    _, version = _load_nvrtc()
    return version


def _load_nvrtc() -> tuple[Any, tuple[int, int]]:
    try:
        nvrtc = importlib.import_module(_NVRTC_MODULE)
    except ImportError as exc:
        raise BackendError(f"NVRTC is not available: {_nvrtc_searched()}; import failed: {exc}") from exc
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # cuda-bindings raises RuntimeError when libnvrtc cannot be loaded
        raise BackendError(
            f"NVRTC is not available: {_nvrtc_searched()}; loading libnvrtc failed: {exc}"
            f"{_pathfinder_detail()}"
        ) from exc
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise BackendError(f"NVRTC is not available: nvrtcVersion() returned {err!r}")
    return nvrtc, (int(major), int(minor))


def _nvrtc_searched() -> str:
    return (
        f"searched Python module {_NVRTC_MODULE!r} (pip: cuda-bindings) and libnvrtc through "
        "cuda-pathfinder (nvidia/cu13|cu12 wheels of nvidia-cuda-nvrtc in site-packages, conda, "
        "CUDA_HOME/CUDA_PATH, the system library path)"
    )


def _pathfinder_detail() -> str:
    try:
        pathfinder = importlib.import_module("cuda.pathfinder")
        pathfinder.load_nvidia_dynamic_lib("nvrtc")
    except Exception as exc:  # the pathfinder's message lists the places it looked
        return f"; cuda-pathfinder: {exc}"
    return ""


def _check_arch(arch: str) -> str:
    if not re.fullmatch(r"compute_\d{2,3}[af]?", arch):
        raise ModelError(f"arch must be a virtual architecture like 'compute_75' (PTX output), got {arch!r}")
    return arch


def _compile_nvrtc(source: str, arch: str, name: str) -> str:
    nvrtc, _ = _load_nvrtc()
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS

    def check(result: tuple[Any, ...], what: str) -> tuple[Any, ...]:
        if result[0] != ok:
            _, msg = nvrtc.nvrtcGetErrorString(result[0])
            raise BackendError(f"NVRTC {what} failed for {name}: {msg.decode(errors='replace')}")
        return result[1:]

    (prog,) = check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []), "create")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--fmad=false"]
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        (log_size,) = check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * log_size
        check(nvrtc.nvrtcGetProgramLog(prog, log), "log")
        if status != ok:
            text = log.decode(errors="replace").rstrip("\x00").strip()
            raise BackendError(f"NVRTC failed to compile {name} for {arch} ({status.name}):\n{text}")
        (ptx_size,) = check(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx = b" " * ptx_size
        check(nvrtc.nvrtcGetPTX(prog, ptx), "get PTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return ptx.decode().rstrip("\x00")


def run_compiler(cmd: list[str], what: str) -> None:
    """Run a compiler command line (``cmd[0]`` is the compiler); BackendError with its output when it fails.

    ``what`` completes "failed to compile ..." in the message (e.g. ``"roi_pool.cu for sm_90"``)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{cmd[0]} could not run: {exc}") from exc
    if proc.returncode != 0:
        raise BackendError(f"{cmd[0]} failed to compile {what} (exit {proc.returncode}; {' '.join(cmd)}):\n"
                           f"{(proc.stderr + proc.stdout).strip()}")


def _compile_nvcc(source: str, arch: str, name: str, nvcc: str) -> str:
    with tempfile.TemporaryDirectory(prefix="frcnn_roi_pool_") as tmp:
        src = Path(tmp) / name
        out = Path(tmp) / "kernel.ptx"
        src.write_text(source, encoding="utf-8")
        run_compiler([nvcc, "--ptx", f"--gpu-architecture={arch}", "--fmad=false", "-o", str(out), str(src)],
                     f"{name} for {arch}")
        return out.read_text(encoding="utf-8")


def compile_source_to_ptx(
    source: str, arch: str = DEFAULT_ARCH, compiler: Compiler = "auto", name: str = SOURCE_NAME
) -> str:
    """CUDA C ``source`` to PTX text for the virtual ``arch``.

    ``compiler="auto"`` uses NVRTC and falls back to ``nvcc`` on PATH when NVRTC cannot be loaded.
    Compile errors and a missing compiler raise :class:`BackendError` (with the compiler's log, or
    with what was searched).
    """
    _check_arch(arch)
    if compiler not in ("auto", "nvrtc", "nvcc"):
        raise ModelError(f"compiler must be 'auto', 'nvrtc' or 'nvcc', got {compiler!r}")
    if compiler in ("auto", "nvrtc"):
        try:
            _load_nvrtc()
        except BackendError as exc:
            nvcc = shutil.which(_NVCC) if compiler == "auto" else None
            if nvcc is None:
                suffix = f"; {_NVCC!r} on PATH: not found" if compiler == "auto" else ""
                raise BackendError(
                    f"{exc}{suffix}. Install `pip install cuda-bindings nvidia-cuda-nvrtc` "
                    "(or a CUDA toolkit with nvcc) to compile the RoI-pool kernel"
                ) from exc
            return _compile_nvcc(source, arch, name, nvcc)
        return _compile_nvrtc(source, arch, name)
    nvcc = shutil.which(_NVCC)
    if nvcc is None:
        raise BackendError(f"{_NVCC!r} was not found on PATH")
    return _compile_nvcc(source, arch, name, nvcc)


def compile_ptx(
    pooled_shape: tuple[int, int] | list[int],
    spatial_scale: float,
    dtype: object = "float32",
    rois_dtype: object = "float32",
    arch: str = DEFAULT_ARCH,
    compiler: Compiler = "auto",
    ptx_isa: tuple[int, int] | None = None,
) -> str:
    """PTX of the RoI-pool entry :func:`kernel_name` ``(dtype, rois_dtype)`` with the constants baked.

    ``ptx_isa`` rewrites the declared PTX ISA version down to (major, minor) so older drivers load
    it (see the module docstring); ``None`` keeps the compiler's. Cached per argument set.
    """
    ph, pw = check_pooled_shape(pooled_shape)
    scale = _check_spatial_scale(spatial_scale)
    if ptx_isa is not None:
        if len(ptx_isa) != 2 or not all(isinstance(v, int) and v >= 0 for v in ptx_isa):
            raise ModelError(f"ptx_isa must be (major, minor) ints, got {ptx_isa!r}")
        ptx_isa = (ptx_isa[0], ptx_isa[1])
    dtypes = (normalize_dtype(dtype), normalize_dtype(rois_dtype))
    return _compile_ptx_cached(ph, pw, scale, *dtypes, _check_arch(arch), compiler, ptx_isa)


@functools.lru_cache(maxsize=64)
def _compile_ptx_cached(
    ph: int,
    pw: int,
    scale: float,
    dtype: str,
    rois_dtype: str,
    arch: str,
    compiler: Compiler,
    ptx_isa: tuple[int, int] | None,
) -> str:
    source = kernel_source((ph, pw), scale, dtype, rois_dtype)
    ptx = compile_source_to_ptx(source, arch=arch, compiler=compiler)
    if ptx_isa is None:
        return ptx
    if ptx_isa > ptx_isa_version(ptx) or ptx_isa < _MIN_PTX_ISA:
        raise ModelError(
            f"ptx_isa {ptx_isa} must lie between {_MIN_PTX_ISA} and the compiler's {ptx_isa_version(ptx)}"
        )
    version = rf"\g<1>.version {ptx_isa[0]}.{ptx_isa[1]}"
    return re.sub(r"^(\s*)\.version\s+\d+\.\d+", version, ptx, count=1, flags=re.MULTILINE)


def ptx_entries(ptx: str) -> list[str]:
    """Names of the ``.entry`` (kernel) symbols in ``ptx``."""
    return re.findall(r"\.entry\s+([A-Za-z_$][\w$]*)", ptx)


def ptx_isa_version(ptx: str) -> tuple[int, int]:
    """The PTX ISA version (``.version X.Y``) the driver must support to load ``ptx``."""
    match = re.search(r"^\s*\.version\s+(\d+)\.(\d+)", ptx, flags=re.MULTILINE)
    if match is None:
        raise BackendError("PTX text has no .version directive")
    return int(match.group(1)), int(match.group(2))


def launch_config(num_outputs: int, block: int = BLOCK_SIZE) -> LaunchConfig:
    """One thread per output element: ``ceil(num_outputs / block)`` blocks (at least 1).

    The kernel loops grid-stride, so the grid is capped at the CUDA limit and a zero-output launch
    is a valid no-op.
    """
    if num_outputs < 0 or block < 1 or block > 1024:
        raise ModelError(
            f"launch_config needs num_outputs >= 0 and 1 <= block <= 1024, got {num_outputs}, {block}"
        )
    return LaunchConfig(grid_x=min(max(1, -(-num_outputs // block)), _MAX_GRID_X), block_x=block)
