"""One spec per backend module (frcnn_trt.engines.backends) and choosing one (frcnn_trt.engines.selection)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from frcnn_trt.engines import backends, onnxruntime_backend, selection, torch_backend
from frcnn_trt.engines.export_format import ExportInfo, load_export
from frcnn_trt.engines.protocol import Backend, BackendSpec
from frcnn_trt.engines.selection import open_backend, select_backend
from frcnn_trt.engines.tensorrt import backend as tensorrt_backend
from frcnn_trt.errors import BackendError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_list_comes_from_the_specs() -> None:
    assert (tensorrt_backend, onnxruntime_backend, torch_backend) == backends.BACKEND_MODULES
    assert backends.BACKEND_NAMES == ("tensorrt", "onnxruntime", "torch")  # fastest first: auto's order
    assert tuple(m.SPEC for m in backends.BACKEND_MODULES) == backends.BACKEND_SPECS
    assert {
        "tensorrt": frozenset({"precision", "workspace_mib", "optimization_level", "plugin_impl", "timing_cache",
                               "cache_dir", "build", "force", "verbose"}),
        "onnxruntime": frozenset({"intra_op_threads", "graph_optimization", "io_binding", "cache"}),
        "torch": frozenset({"memory_format"})} == backends.BACKEND_OPTIONS
    classes = {"tensorrt": tensorrt_backend.TensorRTBackend, "onnxruntime": onnxruntime_backend.OnnxRuntimeBackend,
               "torch": torch_backend.TorchBackend}
    for spec in backends.BACKEND_SPECS:
        assert classes[spec.name].name == spec.name and spec.summary and "pip install" in spec.install
    assert backends.backend_spec("torch").version() == torch.__version__
    with pytest.raises(BackendError, match=r"unknown backend 'tflite'; expected one of auto, tensorrt, onnxruntime, "
                                           r"torch"):
        backends.backend_spec("tflite")
    with pytest.raises(dataclasses.FrozenInstanceError):
        backends.BACKEND_SPECS[0].name = "x"  # type: ignore[misc]


def test_select_backend_says_why() -> None:
    name, why = select_backend("auto", "cpu")
    assert name == "onnxruntime" and why.startswith("fastest available: onnxruntime")
    assert "tensorrt: TensorRT runs on a CUDA GPU" in why
    assert select_backend("torch", "cpu")[0] == "torch"
    with pytest.raises(BackendError, match="backend 'tensorrt' cannot run here: TensorRT runs on a CUDA GPU"):
        select_backend("tensorrt", "cpu")
    with pytest.raises(BackendError, match="unknown backend 'tflite'"):
        select_backend("tflite", "cpu")


def test_open_backend_named_and_auto(exported: tuple[Path, Path]) -> None:
    info = load_export(exported[1])
    ort, why = open_backend("auto", info, "cpu", options={"intra_op_threads": 1, "workspace_mib": 64})
    assert ort.name == "onnxruntime" and ort.intra_op_threads == 1  # type: ignore[attr-defined]
    assert "fastest available" in why and "tensorrt: " in why
    eager, why = open_backend("torch", info, "cpu")
    assert isinstance(eager, torch_backend.TorchBackend) and why.startswith("eager PyTorch")
    with pytest.raises(BackendError, match="backend 'tensorrt' cannot run here: TensorRT runs on a CUDA GPU"):
        open_backend("tensorrt", info, "cpu")
    with pytest.raises(BackendError, match=r"backend onnxruntime does not take option\(s\) build \(tensorrt's\), "
                                           r"x \(no backend's\)"):
        open_backend("onnxruntime", info, "cpu", options={"build": False, "x": 1})
    with pytest.raises(BackendError, match=r"unknown backend option\(s\) \['x'\]; known: tensorrt: build, "):
        open_backend("auto", info, "cpu", options={"x": 1})


def _fake_spec(loader: Any, seen: list[Mapping[str, Any]]) -> BackendSpec:
    def load(info: ExportInfo, device: torch.device, options: Mapping[str, Any], model: Any) -> Backend:
        seen.append(dict(options))
        return loader(info, device, options, model)  # type: ignore[no-any-return]

    return BackendSpec(name="fake", summary="a test backend", availability=lambda device, info: (True, "always"),
                       options=frozenset({"fake_level"}), loader=load, version=lambda: "0",
                       install="pip install fake")


def test_a_new_backend_is_one_spec_in_the_list(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a spec to the list is all it takes: auto tries it first, gives it only its own options, and passes
    over it (with the reason) when it cannot load this export."""
    info = load_export(exported[1])
    seen: list[Mapping[str, Any]] = []

    def refuse(*_: Any) -> Backend:
        raise BackendError("cannot load this export")

    specs = (_fake_spec(refuse, seen), *backends.BACKEND_SPECS)
    monkeypatch.setattr(backends, "BACKEND_SPECS", specs)
    monkeypatch.setattr(selection, "BACKEND_SPECS", specs)
    monkeypatch.setattr(backends, "BACKEND_OPTIONS", {s.name: s.options for s in specs})
    backend, why = open_backend("auto", info, "cpu", options={"fake_level": 3, "intra_op_threads": 1})
    assert seen == [{"fake_level": 3}] and backend.name == "onnxruntime"
    assert "fake: cannot load this export" in why
    assert backends.backend_availability("cpu")["fake"] == (True, "always")


def test_concurrent_calls(exported: tuple[Path, Path]) -> None:
    info = load_export(exported[1])
    assert Backend.concurrent_calls is False and tensorrt_backend.TensorRTBackend.concurrent_calls is False
    for name in ("torch", "onnxruntime"):
        assert open_backend(name, info, "cpu")[0].concurrent_calls is True


class _FakeTRTInfo:
    label = "TensorRT 10.13.0"


def test_tensorrt_follows_the_roi_op(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A RoIAlign export needs no tensorrt.plugin: TensorRT runs its RoiAlign through its own plugin library."""
    info = load_export(exported[1])
    align = dataclasses.replace(info, data={**info.data, "roi_op": {"type": "RoIAlign", "domain": "",
                                                                     "op_type": "RoiAlign"}})
    assert info.needs_roi_pool_plugin and not align.needs_roi_pool_plugin
    monkeypatch.setattr(tensorrt_backend, "probe_tensorrt", lambda flavour: (_FakeTRTInfo(), "TensorRT 10.13.0"))
    monkeypatch.setattr(tensorrt_backend.plugin, "plugin_module_status",
                        lambda flavour: (False, False, "no tensorrt.plugin module"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "a GPU")
    cuda = torch.device("cuda", 0)
    ok, why = tensorrt_backend.availability(cuda, info)
    assert not ok and "cannot run the RoIPool plugin: no tensorrt.plugin module" in why
    assert tensorrt_backend.availability(cuda) == (ok, why)  # no export: the RoIPool plugin is assumed
    ok, why = tensorrt_backend.availability(cuda, align)
    assert ok and why == "TensorRT 10.13.0, a GPU (sm 8.6), RoIAlign through TensorRT's standard plugin library"
