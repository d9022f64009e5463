"""The ``frcnn::RoIPool`` quickly deployable plugin (frcnn_trt.engines.tensorrt.plugin) without TensorRT.

``tensorrt.plugin`` exists only in the real TensorRT (≥ 10.9 for AOT), which cannot be installed here. So the
registration code runs against a stand-in ``tensorrt.plugin`` that records what is registered and checks the
signatures the way ``tensorrt.plugin`` does (annotations must be classes, parameters in its schema order, an
AOT return annotation of four parts); the AOT implementation is then called with integer shapes to check the
kernel it picks, the launch grid and the extra-argument order against the kernel's parameter list. The PTX
itself comes from NVRTC (skipped, with the reason, where NVRTC is absent). TensorRT-RTX serves to check the
"missing plugin" message against a real plugin registry.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from frcnn_trt.engines.tensorrt import plugin as tp
from frcnn_trt.errors import BackendError, ModelError


def _nvrtc_ok() -> bool:
    from frcnn_trt.engines.tensorrt.kernel import nvrtc_version

    try:
        nvrtc_version()
    except BackendError:
        return False
    return True


requires_nvrtc = pytest.mark.skipif(not _nvrtc_ok(), reason="NVRTC not available (pip install cuda-bindings "
                                                             "nvidia-cuda-nvrtc)")


def _real_tensorrt() -> bool:
    from frcnn_trt.engines.tensorrt.runtime import probe_tensorrt

    return probe_tensorrt("tensorrt")[0] is not None


# ------------------------------------------------------------------------------------------------ a stand-in


class _Shape(list):  # type: ignore[type-arg]
    def numel(self) -> int:
        n = 1
        for v in self:
            n *= v
        return n


class FakeTRTP(types.ModuleType):
    """Records registrations; validates like tensorrt.plugin's _validate.py (the parts that bite)."""

    class TensorDesc:
        def __init__(self, shape: list[int] | None = None, dtype: Any = "float32") -> None:
            self.shape_expr = _Shape(shape or [])
            self.dtype = dtype

    class Tensor:
        pass

    class AutoTuneCombination:
        def __init__(self, io_types: str, layouts: str = "LINEAR") -> None:
            self.io_types, self.layouts = io_types, layouts

    class KernelLaunchParams:
        grid_x: Any = None
        block_x: Any = None
        shared_mem: Any = None

    class SymInt32:
        def __init__(self, value: Any) -> None:
            self.value = value

    class SymIntExprs(list):  # type: ignore[type-arg]
        @classmethod
        def from_tuple(cls, items: Any) -> FakeTRTP.SymIntExprs:
            return cls(items)

    def __init__(self, with_aot: bool = True) -> None:
        super().__init__("tensorrt.plugin")
        self.defs: dict[str, dict[str, Any]] = {}
        if with_aot:
            self.aot_impl = self._decorator("aot_impl")

    @staticmethod
    def cdiv(a: int, b: int) -> int:
        return -(-a // b)

    @staticmethod
    def from_shape_expr(shape: tuple[Any, ...], dtype: Any) -> tuple[tuple[Any, ...], Any]:
        return tuple(shape), dtype

    def _decorator(self, kind: str) -> Any:
        def outer(plugin_id: str) -> Any:
            def inner(fn: Any) -> Any:
                sig = inspect.signature(fn)
                for name, p in sig.parameters.items():
                    assert not isinstance(p.annotation, str), f"{kind}: {name} annotated with a string"
                    assert p.annotation is not inspect.Parameter.empty, f"{kind}: {name} unannotated"
                self.defs.setdefault(plugin_id, {})[kind] = fn
                return fn
            return inner
        return outer

    def __getattr__(self, name: str) -> Any:
        if name in ("register", "autotune", "impl"):
            return self._decorator(name)
        raise AttributeError(name)


class FakeTRT:
    float32 = "float32"
    float16 = "float16"
    __version__ = "10.13.0"


def _schema(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


# ------------------------------------------------------------------------------------------------ tests


def test_registration_matches_the_tensorrt_plugin_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    monkeypatch.setattr(tp, "_REGISTERED", set())
    trtp = FakeTRTP()
    tp._define(FakeTRT, trtp, aot=True)
    defs = trtp.defs[tp.PLUGIN_ID]
    assert set(defs) == {"register", "autotune", "impl", "aot_impl"} and tp.registered_impls() == {"aot", "jit"}
    reg = defs["register"]
    # tensor descriptors first, then attributes; types tensorrt.plugin maps to plugin fields
    assert _schema(reg) == ["features", "rois", "pooled_shape", "spatial_scale"]
    ann = inspect.signature(reg).parameters
    assert issubclass(ann["features"].annotation, FakeTRTP.TensorDesc)
    assert typing.get_args(typing.get_args(ann["pooled_shape"].annotation)[1])[0] is np.int32
    assert ann["spatial_scale"].annotation is float
    assert _schema(defs["impl"]) == ["features", "rois", "pooled_shape", "spatial_scale", "outputs", "stream"]
    assert _schema(defs["aot_impl"]) == ["features", "rois", "pooled_shape", "spatial_scale", "outputs", "tactic"]
    ret = inspect.signature(defs["aot_impl"]).return_annotation
    assert typing.get_origin(ret) is tuple and len(typing.get_args(ret)) == 4
    assert typing.get_args(ret)[2] is FakeTRTP.KernelLaunchParams
    assert _schema(defs["autotune"]) == ["features", "rois", "outputs"]
    (combo,) = defs["autotune"](None, None, None)
    assert combo.io_types == "FP32|FP16, FP32, FP32|FP16" and combo.layouts == "LINEAR"

    # the descriptor: [R, C, PH, PW] in the features' dtype (the parser passes pooled_shape as INT32)
    feats = FakeTRTP.TensorDesc([2, 128, 25, 25], FakeTRT.float16)
    rois = FakeTRTP.TensorDesc([300, 5], FakeTRT.float32)
    assert reg(feats, rois, np.array([7, 7], dtype=np.int32), 0.0625) == ((300, 128, 7, 7), FakeTRT.float16)
    with pytest.raises(ModelError, match="pooled_shape"):
        reg(feats, rois, np.array([7], dtype=np.int32), 0.0625)


@requires_nvrtc
def test_aot_impl_launch_and_extra_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from frcnn_trt.engines.tensorrt.kernel import BLOCK_SIZE, ptx_entries, ptx_isa_version

    monkeypatch.setattr(tp, "_REGISTERED", set())
    trtp = FakeTRTP()
    tp._define(FakeTRT, trtp, aot=True)
    aot = trtp.defs[tp.PLUGIN_ID]["aot_impl"]
    for dtype, entry in ((FakeTRT.float32, "roi_pool_fwd_f32"), (FakeTRT.float16, "roi_pool_fwd_f16")):
        feats = FakeTRTP.TensorDesc([2, 128, 25, 30], dtype)
        rois = FakeTRTP.TensorDesc([300, 5], FakeTRT.float32)
        out = FakeTRTP.TensorDesc([300, 128, 6, 7], dtype)
        name, ptx, params, extra = aot(feats, rois, np.array([6, 7], dtype=np.int32), 0.0625, (out,), 0)
        assert name == entry.encode()
        text = ptx.decode()
        assert ptx_entries(text) == [entry] and ptx_isa_version(text) == tp.PTX_ISA
        assert "0f3D800000" in text  # 1/16 baked in as a float32 immediate (attributes are not serialized)
        assert (params.grid_x, params.block_x, params.shared_mem) == (-(-300 * 128 * 42 // BLOCK_SIZE), BLOCK_SIZE, 0)
        # (features, rois, int N, int C, int H, int W, int R, output): the kernel's parameter order
        assert [e.value for e in extra] == [2, 128, 25, 30, 300]


@requires_nvrtc
def test_aot_kernel_bakes_shape_and_scale() -> None:
    name, ptx = tp.aot_kernel((7, 7), 1.0 / 16.0, "float32")
    name2, ptx2 = tp.aot_kernel([7, 7], 1.0 / 32.0, "float32")
    assert name == name2 == b"roi_pool_fwd_f32" and ptx != ptx2 and b"0f3D000000" in ptx2
    with pytest.raises(ModelError):
        tp.aot_kernel((0, 7), 0.0625)


def test_old_tensorrt_names_the_version_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    old = FakeTRT()
    old.__version__ = "10.8.0"  # type: ignore[misc]
    monkeypatch.setattr(tp, "_tensorrt", lambda flavour: old)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", FakeTRTP(with_aot=False))
    monkeypatch.setattr(tp, "_REGISTERED", set())
    has_module, has_aot, status = tp.plugin_module_status()
    assert has_module and not has_aot and "10.8.0" in status and "≥ 10.9" in status
    with pytest.raises(BackendError, match=r"TensorRT 10\.8\.0.*≥ 10\.9.*tensorrt-cu13>=10\.9"):
        tp.register_plugin()
    tp.register_plugin(jit=True)  # debugging on an old TensorRT: the JIT (torchvision) plugin only
    assert tp.registered_impls() == {"jit"}
    tp.register_plugin(jit=True)  # idempotent
    assert set(sys.modules["tensorrt.plugin"].defs[tp.PLUGIN_ID]) == {"register", "autotune", "impl"}  # type: ignore[attr-defined]


def test_without_tensorrt_registration_fails_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    if _real_tensorrt():
        pytest.skip("the real TensorRT is installed here")
    monkeypatch.setattr(tp, "_REGISTERED", set())
    with pytest.raises(BackendError, match=r"cannot register the frcnn::RoIPool plugin: TensorRT is not available.*"
                                           r"tensorrt-cu13>=10\.9"):
        tp.register_plugin()
    assert tp.plugin_module_status("tensorrt_rtx") == (
        False, False, "TensorRT-RTX has no Python plugins (no tensorrt.plugin module)")


def test_pooled_shape_of() -> None:
    assert tp.pooled_shape_of([7, 6]) == (7, 6)
    for bad in ([7], [7, 0], [1, 2, 3]):
        with pytest.raises(ModelError):
            tp.pooled_shape_of(bad)


@pytest.mark.tensorrt
def test_missing_plugin_message_names_search_and_version() -> None:
    from frcnn_trt.engines.tensorrt.runtime import probe_tensorrt

    info, why = probe_tensorrt("tensorrt_rtx")
    if info is None:
        pytest.skip(f"TensorRT-RTX not installed: {why}")
    msg = tp.missing_plugin_message("tensorrt_rtx")
    assert f"not found in the plugin registry of TensorRT-RTX {info.version}" in msg
    assert "get_creator('RoIPool', '1', 'frcnn')" in msg and "registered creators:" in msg
    assert "no Python plugins" in msg
    assert tp.find_creator("tensorrt_rtx") is None
    with pytest.raises(BackendError, match="plugin frcnn::RoIPool version 1 not found"):
        tp.require_creator("tensorrt_rtx")


def test_module_imports_without_tensorrt() -> None:
    # importing the plugin module (and the build/backends modules) must not need TensorRT
    src = Path(tp.__file__).read_text()
    assert "\nimport tensorrt" not in src and "\nfrom tensorrt" not in src
