"""Engine building (frcnn_trt.engines.tensorrt: settings, cache, build, refit), proven with TensorRT for RTX on a
CPU-only machine.

TensorRT-RTX (``pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings``) parses ONNX and builds
engines without a GPU for a named compute capability; it has no Python plugins. Tests that need it carry the
``tensorrt`` marker and skip, saying so, where it is absent. What runs here: ``rpn.onnx`` (FP32 and FP16) parsed
and built, the engine cache (hit, miss with the reason, force, corruption), and ``detector.onnx`` parsed up to
the plugin lookup, observed in the parser's log and through a probe creator in RTX's plugin registry that
records the fields the parser hands it. Precision planning, profiles, graph comparison for refit and the
export hook are tested without any TensorRT.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from frcnn_trt.engines.export_format import load_export
from frcnn_trt.engines.tensorrt import build as B
from frcnn_trt.engines.tensorrt import cache as C
from frcnn_trt.engines.tensorrt import refit as R
from frcnn_trt.engines.tensorrt import runtime as RT
from frcnn_trt.engines.tensorrt import settings as S
from frcnn_trt.errors import BackendError, ExportError
from tests.helpers import tiny_export


def _rtx() -> Any:
    try:
        return RT.load_tensorrt("tensorrt_rtx")
    except BackendError:
        return None


RTX = _rtx()
requires_rtx = pytest.mark.skipif(
    RTX is None, reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)")
RTX_CC = "8.6"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny")[1]


@pytest.fixture(scope="module")
def export_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny", fp16=True)[1]


def _info(**kw: Any) -> RT.TensorRTInfo:
    base: dict[str, Any] = {"flavour": "tensorrt", "module": "tensorrt", "version": "10.13.0", "fp16_flag": True,
                            "strongly_typed_flag": True, "refit": True, "onnx_refitter": True}
    base.update(kw)
    return RT.TensorRTInfo(**base)


TRT10 = _info()
TRT11 = _info(version="11.4.0", fp16_flag=False)


# ------------------------------------------------------------------------------------------------ no TensorRT needed


def test_precision_plans_follow_features_not_versions() -> None:
    # TensorRT 10: FP16 ONNX → strongly typed; FP32 ONNX + fp16 → builder flag
    p = S.resolve_precision("fp16", "auto", TRT10)
    assert (p.precision, p.strongly_typed, p.builder_flags) == ("fp16", True, ())
    p = S.resolve_precision("fp32", "fp16", TRT10)
    assert (p.precision, p.strongly_typed, p.builder_flags) == ("fp16", False, ("FP16",))
    p = S.resolve_precision("fp32", "auto", TRT10)
    assert (p.precision, p.builder_flags) == ("fp32", ())
    # TensorRT 11 (no BuilderFlag.FP16): FP16 only from the graph; the request is refused, not rewritten
    assert S.resolve_precision("fp16", "fp16", TRT11).precision == "fp16"
    with pytest.raises(BackendError, match=r"no FP16 builder flag.*export --fp16"):
        S.resolve_precision("fp32", "fp16", TRT11)
    # the same TensorRT 11 behaviour from a 10.x version string with the flag missing: features decide
    with pytest.raises(BackendError, match="no FP16 builder flag"):
        S.resolve_precision("fp32", "fp16", _info(version="10.99", fp16_flag=False))
    with pytest.raises(BackendError, match="FP16 export"):
        S.resolve_precision("fp16", "fp32", TRT10)
    with pytest.raises(BackendError, match="precision must be"):
        S.BuildSettings(precision="int8")
    with pytest.raises(BackendError, match="compute capability"):
        S.BuildSettings(compute_capability="sm86")


def test_specs_take_profiles_from_export_json(export_dir: Path) -> None:
    info = load_export(export_dir, verify=False)
    rpn, det = S.engine_specs(info)
    prof = info.data["shape_profiles"]
    assert rpn.name == "rpn" and not rpn.plugin and rpn.onnx == export_dir / "rpn.onnx"
    assert rpn.profile["image"] == tuple(tuple(prof["rpn.onnx"]["image"][k]) for k in ("min", "opt", "max"))
    assert det.plugin and set(det.profile) == {"features", "rois"}
    # RoI count: up to the post-NMS maximum the export recorded
    assert det.profile["rois"][2][0] == prof["detector.onnx"]["rois"]["max"][0] >= 300
    assert det.roi_op["plugin_namespace"] == "frcnn" and det.roi_op["plugin_version"] == "1"
    assert rpn.onnx_sha256 == info.file_sha256("rpn.onnx")
    bad = dataclasses.replace(info, data={**info.data, "shape_profiles": {"rpn.onnx": {"image": {"min": [1]}}}})
    with pytest.raises(ExportError, match="min, opt and max"):
        S.engine_specs(bad, ["rpn"])


def test_cache_key_covers_what_invalidates_a_plan(export_dir: Path) -> None:
    spec = S.engine_specs(load_export(export_dir, verify=False), ["detector"])[0]
    s = S.BuildSettings()
    plan = S.resolve_precision("fp32", "auto", TRT10)
    key, d = C.engine_key(spec, s, plan, TRT10, "8.6")
    assert len(key) == 16 and d["plugin"]["id"] == "frcnn::RoIPool" and len(d["plugin"]["kernel_sha256"]) == 64
    variants = [
        C.engine_key(dataclasses.replace(spec, onnx_sha256="0" * 64), s, plan, TRT10, "8.6")[0],
        C.engine_key(spec, s, plan, TRT10, "8.9")[0],
        C.engine_key(spec, s, plan, _info(version="10.14.0"), "8.6")[0],
        C.engine_key(spec, dataclasses.replace(s, workspace_mib=1024), plan, TRT10, "8.6")[0],
        C.engine_key(spec, s, S.resolve_precision("fp32", "fp16", TRT10), TRT10, "8.6")[0],
        C.engine_key(spec, dataclasses.replace(s, plugin_impl="jit"), plan, TRT10, "8.6")[0],
    ]
    assert len({key, *variants}) == 7
    assert C.engine_key(spec, S.BuildSettings(), plan, TRT10, "8.6")[0] == key  # deterministic


def test_same_graph_for_refit(tmp_path: Path, export_dir: Path) -> None:
    from frcnn_trt.export.onnx_export import export_model, random_checkpoint
    from frcnn_trt.model.checkpoint import load_checkpoint
    from tests.helpers import tiny_config

    # another seed: same graph, other weights (what alt-opt's stage-2 RPN is to stage 1). rpn_spread as in
    # tiny_export: with all-zero biases the exporter drops them, and the graph differs (same_graph says so)
    ckpt = random_checkpoint(tmp_path / "other.safetensors", net="tiny", num_classes=4, cfg=tiny_config(), seed=1,
                             rpn_spread=50.0)
    model, ck = load_checkpoint(ckpt)
    other = export_model(model, cfg=tiny_config(), class_names=ck.class_names, output_dir=tmp_path / "exp").directory
    ok, why = R.same_graph(export_dir / "rpn.onnx", other / "rpn.onnx")
    assert ok and why == "same graph, different weights"
    ok, why = R.same_graph(export_dir / "rpn.onnx", export_dir / "detector.onnx")
    assert not ok and "differ" in why
    with pytest.raises(BackendError, match="cannot refit"):
        R.refit_engine(tmp_path / "x.engine", export_dir / "detector.onnx", tmp_path / "y.engine",
                        reference_onnx=export_dir / "rpn.onnx")


def test_export_hook_says_what_it_did_not_build(export_dir: Path) -> None:
    info, _ = RT.probe_tensorrt("tensorrt")
    if info is not None:
        pytest.skip("the real TensorRT is installed here")
    report = B.build_export_engines(export_dir)
    assert not report.ok and report.built == {}
    assert set(report.not_built) == {"rpn", "detector"}
    assert all("TensorRT is not available" in why and "pip install" in why for why in report.not_built.values())
    assert all("NOT built" in line for line in report.lines())
    json.dumps(report.to_dict())
    with pytest.raises(ExportError):
        B.build_export_engines(export_dir / "missing")


def test_missing_tensorrt_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="unknown TensorRT flavour"):
        RT.load_tensorrt("tensorrt_llm")
    info, why = RT.probe_tensorrt("tensorrt")
    if info is None:  # tensorrt-stubs alone leave an empty `tensorrt` namespace package: not TensorRT
        assert "pip install" in why
        with pytest.raises(BackendError, match="TensorRT is not available"):
            RT.tensorrt_info("tensorrt")


class _FakeCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class _FakeConfig:
    """The IBuilderConfig calls the timing-cache helpers make."""

    def __init__(self, reject: bool = False) -> None:
        self.reject = reject
        self.cache: _FakeCache | None = None

    def create_timing_cache(self, data: bytes) -> _FakeCache:
        return _FakeCache(bytes(data) + b"+built")

    def set_timing_cache(self, cache: _FakeCache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        if self.reject and cache.data != b"+built":
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> _FakeCache | None:
        return self.cache


def test_timing_cache_is_loaded_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "timing.cache"
    cfg = _FakeConfig()
    assert C.load_timing_cache(cfg, path) == "new"
    C.save_timing_cache(cfg, path)
    assert path.read_bytes() == b"+built"
    cfg = _FakeConfig()
    assert C.load_timing_cache(cfg, path).startswith("loaded")
    C.save_timing_cache(cfg, path)
    assert path.read_bytes() == b"+built+built"  # grows across builds
    cfg = _FakeConfig(reject=True)  # another TensorRT/GPU: start afresh instead of failing
    assert C.load_timing_cache(cfg, path) == "new"
    assert cfg.cache is not None and cfg.cache.data == b"+built"


# ------------------------------------------------------------------------------------------------ TensorRT-RTX


@pytest.mark.tensorrt
@requires_rtx
def test_rtx_builds_rpn_and_caches_it(tmp_path: Path, export_dir: Path) -> None:
    info = load_export(export_dir, verify=False)
    (spec,) = S.engine_specs(info, ["rpn"])
    s = S.BuildSettings(compute_capability=RTX_CC, workspace_mib=512)
    r = B.build_engine(spec, s, cache_dir=tmp_path, flavour="tensorrt_rtx")
    assert r.built and r.path.is_file() and r.size == r.path.stat().st_size > 100_000
    assert r.precision == "fp32" and r.compute_capability == RTX_CC and r.tensorrt.startswith("TensorRT-RTX")
    assert r.reason.startswith("no cached rpn engine in")
    meta = json.loads(r.path.with_suffix(".json").read_text())
    assert meta["key"]["onnx_sha256"] == info.file_sha256("rpn.onnx") and meta["key_hash"] == r.key
    # hit
    again = B.build_engine(spec, s, cache_dir=tmp_path, flavour="tensorrt_rtx")
    assert not again.built and again.reason == "cached" and again.path == r.path
    # a changed setting rebuilds and says why
    other = B.build_engine(spec, dataclasses.replace(s, compute_capability="7.5"), cache_dir=tmp_path,
                            flavour="tensorrt_rtx")
    assert other.built and 'compute_capability: "8.6" → "7.5"' in other.reason and other.path != r.path
    # force rebuilds
    forced = B.build_engine(spec, s, cache_dir=tmp_path, flavour="tensorrt_rtx", force=True)
    assert forced.built and forced.reason == "force=True"
    # a corrupt cached engine is not used
    r.path.write_bytes(b"garbage")
    redo = B.build_engine(spec, s, cache_dir=tmp_path, flavour="tensorrt_rtx")
    assert redo.built and "SHA-256" in redo.reason
    # lookup only: no build, a reason
    with pytest.raises(BackendError, match="no usable cached rpn engine"):
        B.build_engine(spec, dataclasses.replace(s, workspace_mib=256), cache_dir=tmp_path, flavour="tensorrt_rtx",
                        lookup_only=True)
    with pytest.raises(BackendError, match=r"cannot target compute capability 9\.0"):
        B.build_engine(spec, dataclasses.replace(s, compute_capability="9.0"), cache_dir=tmp_path,
                        flavour="tensorrt_rtx")


@pytest.mark.tensorrt
@requires_rtx
def test_rtx_builds_fp16_rpn_strongly_typed(tmp_path: Path, export_fp16: Path) -> None:
    (spec,) = S.engine_specs(load_export(export_fp16, verify=False), ["rpn"])
    assert spec.onnx_precision == "fp16"
    r = B.build_engine(spec, S.BuildSettings(compute_capability=RTX_CC), cache_dir=tmp_path, flavour="tensorrt_rtx")
    assert r.built and r.precision == "fp16" and "strongly typed" in r.notes[0]
    parsed = B.parse_onnx(spec.onnx, flavour="tensorrt_rtx")
    assert parsed.ok and parsed.outputs["features"] == ((-1, 128, -1, -1), "HALF")
    assert parsed.inputs["image"] == ((-1, 3, -1, -1), "FLOAT")  # image stays float32 in an FP16 export
    # RTX is strongly typed only: FP16 from an FP32 graph is refused, not faked
    (spec32,) = S.engine_specs(load_export(tiny_export(export_fp16.parent)[1], verify=False), ["rpn"])
    with pytest.raises(BackendError, match="no FP16 builder flag"):
        B.build_engine(spec32, S.BuildSettings(precision="fp16", compute_capability=RTX_CC), cache_dir=tmp_path,
                        flavour="tensorrt_rtx")


@pytest.mark.tensorrt
@requires_rtx
def test_rtx_parser_looks_up_the_roipool_plugin(export_dir: Path) -> None:
    parsed = B.parse_onnx(export_dir / "detector.onnx", flavour="tensorrt_rtx")
    assert not parsed.ok
    assert any("Plugin not found" in e and "node_roi_pool" in e and "'RoIPool'" in e for e in parsed.errors)
    lookups = parsed.log_lines("pluginName: RoIPool, pluginVersion: 1, pluginNamespace: frcnn")
    assert lookups, parsed.log_lines("RoIPool")
    assert parsed.inputs == {"features": ((-1, 128, -1, -1), "FLOAT"), "rois": ((-1, 5), "FLOAT")}


@pytest.fixture
def probe_creator() -> Iterator[list[tuple[str, dict[str, tuple[str, list[float]]], str]]]:
    """A creator for ("RoIPool", "1", "frcnn") in RTX's registry that records what the parser passes."""
    import numpy as np

    trt = RTX
    seen: list[tuple[str, dict[str, tuple[str, list[float]]], str]] = []

    class Probe(trt.IPluginCreatorV3One):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_namespace, self.plugin_version = "RoIPool", "frcnn", "1"
            self.field_names = trt.PluginFieldCollection([
                trt.PluginField("pooled_shape", np.array([], dtype=np.int32), trt.PluginFieldType.INT32),
                trt.PluginField("spatial_scale", np.array([], dtype=np.float32), trt.PluginFieldType.FLOAT32)])

        def create_plugin(self, name: str, fc: Any, phase: Any) -> Any:
            seen.append((name, {f.name: (f.type.name, np.array(f.data).tolist()) for f in fc}, phase.name))
            raise RuntimeError("probe only: TensorRT-RTX runs no Python plugins")

    creator = Probe()
    registry = trt.get_plugin_registry()
    assert registry.register_creator(creator, "frcnn")
    try:
        yield seen
    finally:
        registry.deregister_creator(creator)


@pytest.mark.tensorrt
@requires_rtx
def test_rtx_parser_hands_the_node_fields_to_the_registered_creator(
        export_dir: Path, probe_creator: list[Any], tmp_path: Path) -> None:
    parsed = B.parse_onnx(export_dir / "detector.onnx", flavour="tensorrt_rtx")
    assert not parsed.ok and any("Could not create the plugin" in e for e in parsed.errors)
    (name, fields, phase), = probe_creator
    assert name == "node_roi_pool" and phase == "BUILD"
    # plugin_namespace / plugin_version select the creator; only the real attributes arrive as fields
    assert fields == {"pooled_shape": ("INT32", [7, 7]), "spatial_scale": ("FLOAT32", [0.0625])}
    info = load_export(export_dir, verify=False)
    assert info.data["roi_pool"]["pooled_shape"] == [7, 7] and info.data["roi_pool"]["spatial_scale"] == 0.0625


@pytest.mark.tensorrt
@requires_rtx
def test_rtx_build_of_detector_fails_fast_without_the_plugin(tmp_path: Path, export_dir: Path) -> None:
    (spec,) = S.engine_specs(load_export(export_dir, verify=False), ["detector"])
    with pytest.raises(BackendError, match="cannot register the frcnn::RoIPool plugin: TensorRT-RTX has no Python"):
        B.build_engine(spec, S.BuildSettings(compute_capability=RTX_CC), cache_dir=tmp_path, flavour="tensorrt_rtx")
    assert not any(tmp_path.glob("detector-*.engine"))


@pytest.mark.tensorrt
@requires_rtx
def test_rtx_profile_mismatch_is_reported(tmp_path: Path, export_dir: Path) -> None:
    (spec,) = S.engine_specs(load_export(export_dir, verify=False), ["rpn"])
    bad = dataclasses.replace(spec, profile={"images": spec.profile["image"]})
    with pytest.raises(BackendError, match=r"profiles input\(s\) \['images'\] that the graph lacks"):
        B.build_engine(bad, S.BuildSettings(compute_capability=RTX_CC), cache_dir=tmp_path, flavour="tensorrt_rtx")
    copy = tmp_path / "rpn.onnx"
    shutil.copy(spec.onnx, copy)
    copy.write_bytes(copy.read_bytes()[:1000])  # truncated ONNX: the parser's error comes back
    with pytest.raises(BackendError, match="cannot parse"):
        B.build_engine(dataclasses.replace(spec, onnx=copy, onnx_sha256="1" * 64),
                        S.BuildSettings(compute_capability=RTX_CC), cache_dir=tmp_path, flavour="tensorrt_rtx")


@pytest.mark.tensorrt
@requires_rtx
def test_refit_needs_a_refittable_reference(tmp_path: Path, export_dir: Path) -> None:
    # TensorRT-RTX cannot build REFIT engines without a GPU, so only the refusals are checked here
    (spec,) = S.engine_specs(load_export(export_dir, verify=False), ["rpn"])
    ref = B.build_engine(spec, S.BuildSettings(compute_capability=RTX_CC), cache_dir=tmp_path, flavour="tensorrt_rtx")
    with pytest.raises(BackendError, match="not built refittable"):
        R.refit_from(spec, ref, S.BuildSettings(compute_capability=RTX_CC), cache_dir=tmp_path,
                      flavour="tensorrt_rtx")
    with pytest.raises(BackendError, match="sidecar"):
        R.refit_from(spec, tmp_path / "nothing.engine", cache_dir=tmp_path, flavour="tensorrt_rtx")
