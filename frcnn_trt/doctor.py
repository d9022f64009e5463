"""``frcnn-trt doctor``: what this machine can run, checked by doing it, with the install command for the rest.

Each check *does* the thing where that is cheap instead of trusting a list: ONNX Runtime's CUDA provider is
tried in a session (``onnxruntime-gpu`` lists it on machines without a GPU), TensorRT and TensorRT-RTX build a
one-layer network, the RoIPool plugin kernel is compiled to PTX with NVRTC, the plugin is registered and
looked up in TensorRT's registry. ``tensorrt-stubs`` alone (an empty ``tensorrt`` namespace package) is
reported as "not installed".

:func:`collect` returns a JSON-able dict (sections with ``ok``, ``detail`` and, when something is missing,
``install``); :func:`run_doctor` prints it (or the JSON) and returns it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper

from frcnn_trt.engines.backends import BACKEND_SPECS, backend_spec
from frcnn_trt.engines.selection import select_backend
from frcnn_trt.engines.tensorrt import plugin
from frcnn_trt.engines.tensorrt.kernel import nvrtc_version, ptx_entries, ptx_isa_version
from frcnn_trt.engines.tensorrt.runtime import INSTALL_HINTS, load_tensorrt, probe_tensorrt
from frcnn_trt.log import console as make_console

__all__ = ["collect", "run_doctor"]

INSTALL = {
    "torch_cuda": "pip install torch torchvision  (the PyPI wheels are CUDA builds; needs an NVIDIA driver)",
    "onnxruntime_cuda": "pip install onnxruntime-gpu, with the CUDA 12/13 and cuDNN 9 libraries it was built for "
                        "(pip install 'onnxruntime-gpu[cuda,cudnn]')",
    "nvrtc": "pip install cuda-bindings nvidia-cuda-nvrtc",
}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _guard(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a check that crashes is a finding, not a doctor crash
        out = {"ok": False, "detail": f"check failed: {type(exc).__name__}: {exc}"}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


# ------------------------------------------------------------------------------------------------ checks


def _check_torch() -> dict[str, Any]:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1)})
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    detail = f"torch {torch.__version__} ({build}); " + (
        ", ".join(f"GPU {g['index']}: {g['name']} (sm {g['compute_capability']}, {g['memory_gib']} GiB)"
                  for g in gpus) if gpus else "no CUDA GPU visible")
    out: dict[str, Any] = {"ok": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
                           "cuda_available": bool(gpus), "gpus": gpus, "detail": detail}
    if not gpus:
        out["install"] = INSTALL["torch_cuda"] if not torch.version.cuda else None
    return out


def _tiny_onnx() -> bytes:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "doctor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _check_onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"ok": False, "detail": f"onnxruntime is not installed ({exc})",
                "install": backend_spec("onnxruntime").install}
    listed = list(ort.get_available_providers())
    out: dict[str, Any] = {"ok": True, "version": ort.__version__, "providers_listed": listed}
    cuda: dict[str, Any] = {"listed": "CUDAExecutionProvider" in listed, "works": False}
    if cuda["listed"]:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        # the failed CUDA attempt on a GPU-less machine logs errors through the default logger: we report it
        # instead (ORT has no getter; 2 = warning is its default)
        ort.set_default_logger_severity(4)
        try:
            sess = ort.InferenceSession(_tiny_onnx(), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            kept = sess.get_providers()
            cuda["works"] = "CUDAExecutionProvider" in kept
            cuda["detail"] = ("a session keeps CUDAExecutionProvider" if cuda["works"] else
                              f"listed, but a session drops it (no GPU, or CUDA/cuDNN libraries missing): kept {kept}")
        except Exception as exc:  # ORT's own exception types
            cuda["detail"] = f"listed, but creating a session failed: {exc}"
        finally:
            ort.set_default_logger_severity(2)
    else:
        cuda["detail"] = "not in this onnxruntime build"
    out["cuda_provider"] = cuda
    out["detail"] = f"onnxruntime {ort.__version__}; CPU provider; CUDA provider: {cuda['detail']}"
    if not cuda["works"]:
        out["install"] = INSTALL["onnxruntime_cuda"] + " — on a machine with an NVIDIA GPU"
    return out


def _build_identity(trt: Any, rtx_cc: str | None) -> int:
    """Build a one-layer network with ``trt`` (a TensorRT module); returns the plan size in bytes."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (1, 4))
    network.mark_output(network.add_activation(x, trt.ActivationType.RELU).get_output(0))
    config = builder.create_builder_config()
    if rtx_cc is not None:
        major, minor = rtx_cc.split(".")
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.__members__[f"SM{major}{minor}"], 0)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("build_serialized_network returned None")
    return int(plan.nbytes)


def _check_tensorrt(gpu: bool) -> dict[str, Any]:
    info, why = probe_tensorrt("tensorrt")
    if info is None:
        return {"ok": False, "installed": False, "detail": why.split(". Install: ")[0],
                "install": INSTALL_HINTS["tensorrt"], "stubs": _version("tensorrt-stubs")}
    out: dict[str, Any] = {"ok": True, "installed": True, "version": info.version, "features": info.to_dict()}
    if gpu:
        try:
            out["can_build"] = True
            out["build_detail"] = f"built a one-layer engine ({_build_identity(load_tensorrt('tensorrt'), None)} bytes)"
        except Exception as exc:  # builder creation fails without a usable GPU/driver
            out["can_build"] = False
            out["build_detail"] = f"cannot build: {exc}"
    else:
        out["can_build"] = False
        out["build_detail"] = "cannot build: no CUDA GPU visible (TensorRT builds on the GPU it targets)"
    has_module, has_aot, status = plugin.plugin_module_status("tensorrt")
    found: dict[str, Any] = {"tensorrt_plugin": has_module, "aot": has_aot, "detail": status}
    if has_module:
        try:
            plugin.register_plugin(jit=not has_aot)
            found["registered"] = plugin.find_creator("tensorrt") is not None
            found["impls"] = sorted(plugin.registered_impls())
        except Exception as exc:  # BackendError, or tensorrt.plugin rejecting the definition
            found["registered"] = False
            found["detail"] += f"; registration failed: {exc}"
    out["plugin"] = found
    precision = ("FP16 builder flag (TensorRT 10)" if info.fp16_flag else
                 "strongly typed only: FP16 from an FP16 export (TensorRT 11)")
    out["detail"] = (f"{info.label}; {out['build_detail']}; {precision}; plugin: {status}"
                     + ("" if found.get("registered", False) else " — frcnn::RoIPool NOT registered"))
    out["ok"] = bool(out["can_build"] and found.get("registered", False))
    if not out["ok"]:
        out["install"] = (INSTALL_HINTS["tensorrt"] if has_aot or not has_module else
                          f"pip install 'tensorrt-cu13>={'.'.join(map(str, plugin.MIN_AOT_TENSORRT))}'")
    return out


def _check_tensorrt_rtx(gpu_cc: str | None) -> dict[str, Any]:
    info, why = probe_tensorrt("tensorrt_rtx")
    if info is None:
        return {"ok": False, "installed": False, "detail": why.split(". Install: ")[0],
                "install": INSTALL_HINTS["tensorrt_rtx"]}
    ccs = info.compute_capabilities
    target = gpu_cc if gpu_cc in ccs else "8.6" if "8.6" in ccs or not ccs else ccs[-1]
    out: dict[str, Any] = {"ok": True, "installed": True, "version": info.version,
                           "compute_capabilities": list(info.compute_capabilities)}
    try:
        size = _build_identity(load_tensorrt("tensorrt_rtx"), target)
        out["can_build"] = True
        out["detail"] = (f"{info.label}; built a one-layer engine for sm {target} ({size} bytes) — ONNX parse/build "
                         f"checks only: no Python plugins, so detector.onnx cannot become an engine here")
    except Exception as exc:  # RTX build errors
        out["ok"] = out["can_build"] = False
        out["detail"] = f"{info.label}; cannot build for sm {target}: {exc}"
    return out


def _check_kernel() -> dict[str, Any]:
    try:
        major, minor = nvrtc_version()
    except Exception as exc:  # BackendError naming what was searched
        return {"ok": False, "detail": f"NVRTC: {exc}", "install": INSTALL["nvrtc"]}
    name, ptx = plugin.aot_kernel((7, 7), 1.0 / 16.0, "float32")
    text = ptx.decode()
    isa = ptx_isa_version(text)
    return {"ok": True, "nvrtc": f"{major}.{minor}", "entry": name.decode(), "ptx_bytes": len(ptx),
            "ptx_isa": f"{isa[0]}.{isa[1]}",
            "detail": f"NVRTC {major}.{minor} compiled the RoIPool kernel to PTX ({', '.join(ptx_entries(text))}, "
                      f"ISA {isa[0]}.{isa[1]}, {len(ptx)} bytes)"}


def _check_driver() -> dict[str, Any]:
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        return {"ok": False, "detail": f"cuda-bindings not installed ({exc})", "install": "pip install cuda-bindings"}
    try:
        (err,) = driver.cuInit(0)
    except Exception as exc:  # libcuda.so missing: raised by the bindings
        return {"ok": False, "detail": f"no NVIDIA driver (libcuda): {exc}"}
    if err != driver.CUresult.CUDA_SUCCESS:
        return {"ok": False, "detail": f"cuInit failed: {getattr(err, 'name', err)} (no GPU or driver problem)"}
    err, version = driver.cuDriverGetVersion()
    return {"ok": True, "driver_cuda": f"{version // 1000}.{version % 1000 // 10}",
            "detail": f"NVIDIA driver for CUDA {version // 1000}.{version % 1000 // 10}"}


def _check_backends(gpu: bool) -> dict[str, Any]:
    """Every backend of :data:`~frcnn_trt.engines.backends.BACKEND_SPECS` on each device: can it run, its
    library's version, and the install command where that library is missing; then what ``--backend auto``
    picks."""
    out: dict[str, Any] = {"ok": True}
    for dev in ("cpu", "cuda") if gpu else ("cpu",):
        out[dev] = {}
        for spec in BACKEND_SPECS:
            ok, why = spec.availability(torch.device(dev), None)
            version = spec.version()
            out[dev][spec.name] = {"ok": ok, "detail": why, "version": version,
                                   **({"install": spec.install} if version is None else {})}
    device = "cuda" if gpu else "cpu"
    name, why = select_backend("auto", device)
    out["auto"] = {"device": device, "backend": name, "why": why}
    out["detail"] = f"--backend auto on {device} → {name}"
    return out


def collect() -> dict[str, Any]:
    """Run every check; a JSON-able dict."""
    report: dict[str, Any] = {
        "python": {"ok": True, "detail": f"Python {platform.python_version()} on {platform.platform()}",
                   "version": platform.python_version(), "executable": sys.executable},
    }
    report["torch"] = _guard(_check_torch)
    gpus = report["torch"].get("gpus") or []
    gpu = bool(gpus)
    report["cuda_driver"] = _guard(_check_driver)
    report["onnxruntime"] = _guard(_check_onnxruntime)
    report["tensorrt"] = _guard(lambda: _check_tensorrt(gpu))
    report["tensorrt_rtx"] = _guard(lambda: _check_tensorrt_rtx(gpus[0]["compute_capability"] if gpus else None))
    report["plugin_kernel"] = _guard(_check_kernel)
    report["backends"] = _guard(lambda: _check_backends(gpu))
    report["versions"] = {d: _version(d) for d in ("torch", "torchvision", "onnx", "onnxruntime-gpu", "onnxruntime",
                                                   "tensorrt", "tensorrt-rtx-cu13-bindings", "tensorrt-stubs",
                                                   "cuda-bindings", "nvidia-cuda-nvrtc")}
    return report


_TITLES = {"python": "Python", "torch": "torch / CUDA", "cuda_driver": "NVIDIA driver", "onnxruntime": "ONNX Runtime",
           "tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX", "plugin_kernel": "RoIPool plugin kernel",
           "backends": "backends"}


def run_doctor(*, as_json: bool = False, console: Any = None) -> dict[str, Any]:
    """Print what this machine can run (``as_json``: the dict as JSON on stdout) and return the dict."""
    report = collect()
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return report
    if console is None:
        console = make_console()
    console.print("[bold]frcnn-trt doctor[/]")
    for key, title in _TITLES.items():
        sec = report[key]
        mark = "[green]✓[/]" if sec.get("ok") else "[red]✗[/]"
        console.print(f"  {mark} {title:<22} ", end="")
        console.print(str(sec.get("detail", "")), markup=False, highlight=False)
        if key == "backends":
            _print_backends(console, sec)
        if sec.get("install"):
            console.print(f"      install: {sec['install']}", markup=False, highlight=False, style="yellow")
    return report


def _print_backends(console: Any, sec: dict[str, Any]) -> None:
    for dev in ("cpu", "cuda"):
        for name, b in (sec.get(dev) or {}).items():
            m = "[green]✓[/]" if b["ok"] else "[dim]·[/]"
            console.print(f"      {m} {name:<12} {dev:<5} ", end="")
            console.print(b["detail"], markup=False, highlight=False, style="dim")
            if b.get("install"):
                console.print(f"        install: {b['install']}", markup=False, highlight=False, style="yellow")
