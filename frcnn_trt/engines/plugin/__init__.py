"""The TensorRT RoIPool plugin: its CUDA kernel (``roi_pool.cu``) and the PTX tooling around it.

``roi_pool.cu`` is package data; see :mod:`frcnn_trt.engines.plugin.kernel`.
"""

from __future__ import annotations

from frcnn_trt.engines.plugin.kernel import (
    BLOCK_SIZE,
    DEFAULT_ARCH,
    ENTRY_NAMES,
    LaunchConfig,
    compile_ptx,
    compile_source_to_ptx,
    kernel_name,
    kernel_source,
    launch_config,
    nvrtc_version,
    run_roi_pool_cuda,
)

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_ARCH",
    "ENTRY_NAMES",
    "LaunchConfig",
    "compile_ptx",
    "compile_source_to_ptx",
    "kernel_name",
    "kernel_source",
    "launch_config",
    "nvrtc_version",
    "run_roi_pool_cuda",
]
