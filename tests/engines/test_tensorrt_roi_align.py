"""The TensorRT side follows the RoI op: a RoIAlign export's detector (standard ONNX ``RoiAlign``) needs no
``frcnn::RoIPool`` plugin, TensorRT's standard plugin library instead, and its cache key holds no kernel.

What TensorRT-RTX 1.7 does with ``RoiAlign`` (observed on a CPU-only machine): its ONNX parser maps the node to
the built-in ``ROIAlign_TRT`` plugin (its registry lists ``ROIAlign_TRT`` v2 with or without
``init_libnvinfer_plugins``), and creating that plugin calls the CUDA runtime, which fails without a CUDA driver
("CUDA driver version is insufficient"), so the parse fails there. With a driver the same test goes on to build
the engine; without one it checks that the parser took the ROIAlign path and skips the build, saying why.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from frcnn_trt.engines.export_format import ExportInfo, load_export
from frcnn_trt.engines.tensorrt import cache
from frcnn_trt.engines.tensorrt.build import build_engine, parse_onnx
from frcnn_trt.engines.tensorrt.runtime import init_standard_plugins, load_tensorrt
from frcnn_trt.engines.tensorrt.settings import BuildSettings, EngineSpec, engine_specs, resolve_precision
from frcnn_trt.errors import BackendError
from tests.engines.test_tensorrt_build import RTX_CC, TRT10, requires_rtx


def _align(info: ExportInfo) -> ExportInfo:
    roi_op = {"type": "RoIAlign", "domain": "", "op_type": "RoiAlign", "pooled_shape": [7, 7],
              "spatial_scale": 0.0625, "sampling_ratio": 0, "aligned": True}
    data = {k: v for k, v in info.data.items() if k != "roi_pool"}
    return dataclasses.replace(info, data={**data, "roi_op": roi_op})


def test_detector_spec_and_key_follow_the_roi_op(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    info = load_export(exported[1], verify=False)
    rpn, pool = engine_specs(info)
    _, align = engine_specs(_align(info))
    assert (rpn.plugin, rpn.standard_plugins) == (False, False)
    assert (pool.plugin, pool.standard_plugins) == (True, False) and pool.roi_op["type"] == "RoIPool"
    assert (align.plugin, align.standard_plugins) == (False, True) and align.roi_op["op_type"] == "RoiAlign"
    s = BuildSettings()
    plan = resolve_precision("fp32", "auto", TRT10)
    pool_key, pool_dict = cache.engine_key(pool, s, plan, TRT10, "8.6")
    align_key, align_dict = cache.engine_key(align, s, plan, TRT10, "8.6")
    assert "plugin" in pool_dict and "plugin" not in align_dict
    # our kernel's source is part of a RoIPool detector's key only
    monkeypatch.setattr(cache, "source_sha256", lambda: "f" * 64)
    assert cache.engine_key(pool, s, plan, TRT10, "8.6")[0] != pool_key
    assert cache.engine_key(align, s, plan, TRT10, "8.6")[0] == align_key
    # plugin_impl (aot/jit) concerns our plugin only
    assert cache.engine_key(align, dataclasses.replace(s, plugin_impl="jit"), plan, TRT10, "8.6")[0] == align_key


def _roi_align_onnx(path: Path) -> Path:
    """A detector-shaped graph around one ONNX RoiAlign, as frcnn_trt.ops.roi_align exports it (opset 18)."""
    i64 = TensorProto.INT64
    consts = [helper.make_tensor(n, i64, [1], [v]) for n, v in (("zero", 0), ("one", 1), ("five", 5))]
    nodes = [
        helper.make_node("Slice", ["rois", "zero", "one", "one"], ["index_f"]),
        helper.make_node("Squeeze", ["index_f", "one"], ["index_1d"]),
        helper.make_node("Cast", ["index_1d"], ["batch_indices"], to=i64),
        helper.make_node("Slice", ["rois", "one", "five", "one"], ["boxes"]),
        helper.make_node("RoiAlign", ["features", "boxes", "batch_indices"], ["pooled"], name="node_roi_align",
                         coordinate_transformation_mode="half_pixel", mode="avg", output_height=7, output_width=7,
                         sampling_ratio=0, spatial_scale=0.0625),
    ]
    graph = helper.make_graph(
        nodes, "roi_align",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8, "H", "W"]),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["R", 5])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["R", 8, 7, 7])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _spec(onnx_path: Path) -> EngineSpec:
    profile = {"features": ((1, 8, 4, 4), (1, 8, 16, 16), (2, 8, 32, 32)), "rois": ((1, 5), (10, 5), (100, 5))}
    return EngineSpec(name="detector", onnx=onnx_path, onnx_sha256="a" * 64, onnx_precision="fp32", profile=profile,
                      plugin=False, standard_plugins=True, roi_op={"type": "RoIAlign"})


def _needs_a_driver(errors: list[str], log: list[str]) -> bool:
    return any("ROIAlign plugin was not found" in e for e in errors) and any("CUDA driver" in m for m in log)


@pytest.mark.tensorrt
@requires_rtx
def test_rtx_maps_roialign_to_its_standard_plugin(tmp_path: Path) -> None:
    init_standard_plugins("tensorrt_rtx")
    init_standard_plugins("tensorrt_rtx")  # once per flavour
    trt: Any = load_tensorrt("tensorrt_rtx")
    names = {c.name for c in trt.get_plugin_registry().all_creators}
    assert "ROIAlign_TRT" in names
    path = _roi_align_onnx(tmp_path / "detector.onnx")
    parsed = parse_onnx(path, flavour="tensorrt_rtx", standard_plugins=True)
    assert not any("RoIPool" in m for m in parsed.log_lines())  # never our plugin
    if not parsed.ok:
        assert _needs_a_driver(parsed.errors, parsed.log_lines()), parsed.errors
        assert any("RoiAlign" in m for m in parsed.log_lines("node_roi_align"))
        # the build stops at the same place, with the parser's reason and a hint, and never asks for our plugin
        with pytest.raises(BackendError, match=r"cannot parse .*ROIAlign plugin was not found.*ROIAlign_TRT"):
            build_engine(_spec(path), BuildSettings(compute_capability=RTX_CC), cache_dir=tmp_path,
                         flavour="tensorrt_rtx")
        pytest.skip("TensorRT-RTX creates its ROIAlign_TRT plugin through the CUDA runtime, which needs a CUDA "
                    "driver: without one the RoiAlign graph does not parse (checked above: it took the ROIAlign "
                    "path, not the frcnn::RoIPool plugin)")
    assert parsed.outputs["pooled"] == ((-1, 8, 7, 7), "FLOAT")
    result = build_engine(_spec(path), BuildSettings(compute_capability=RTX_CC), cache_dir=tmp_path,
                          flavour="tensorrt_rtx")
    assert result.built and result.path.is_file()
    assert "plugin" not in json.loads(result.path.with_suffix(".json").read_text())["key"]
