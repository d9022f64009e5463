"""INT8: the FP32-layer pick from measured sensitivities, and every bad input (images, scales, options)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from frcnn_trt.errors import ExportError
from frcnn_trt.export import calibration as CAL
from frcnn_trt.export.int8_export import Int8Settings
from frcnn_trt.export.onnx_export import run_export
from frcnn_trt.export.quantize import check_scales
from frcnn_trt.export.sensitivity import GraphProbe, fp32_cap, select_fp32_layers
from tests.export.test_int8 import write_images

PRE = CAL.Preprocess((102.9801, 115.9465, 122.7717), 120, 200)


# ------------------------------------------------------------------------------------------------ selection


class FakeProbe(GraphProbe):
    """Error = sum of per-layer contributions of the layers still INT8 (read from the fake graph's doc)."""

    def __init__(self, cost: dict[str, float]) -> None:
        super().__init__([])
        self.cost = cost

    def error(self, proto: onnx.ModelProto) -> float:
        excluded = set(filter(None, proto.doc_string.split(",")))
        return sum(c for k, c in self.cost.items() if k not in excluded)


def fake_quantize(exclude: Sequence[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.doc_string = ",".join(exclude)
    return m


def test_selection_keeps_the_most_sensitive_layers_until_within_tolerance() -> None:
    cost = {"a": 0.01, "b": 0.20, "c": 0.05, "d": 0.02}
    sel, best = select_fp32_layers(list(cost), fake_quantize, FakeProbe(cost), tolerance=0.05, max_fp32=3,
                                   min_gain=0.0)
    assert sel.fp32_layers == ["b", "c"] and best.doc_string == "b,c"
    assert sel.error_all_int8 == pytest.approx(0.28) and sel.error_final == pytest.approx(0.03)
    assert sel.int8_layers == ["a", "d"] and sel.sensitivity["b"] == pytest.approx(0.20)
    d = sel.to_dict()
    assert [s["layer"] for s in d["sensitivity"]] == ["b", "c", "d", "a"] and len(d["steps"]) == 3
    # capped, and nothing measured when already within tolerance
    capped = select_fp32_layers(list(cost), fake_quantize, FakeProbe(cost), tolerance=0.0, max_fp32=1,
                                min_gain=0.0)[0]
    assert capped.fp32_layers == ["b"]
    within = select_fp32_layers(list(cost), fake_quantize, FakeProbe(cost), tolerance=0.5, max_fp32=3)[0]
    assert within.fp32_layers == [] and within.sensitivity == {}


def test_selection_keeps_only_layers_worth_their_cost() -> None:
    # default min_gain 10 %: of e0 = 0.28, "c" (0.05) and "b" (0.20) pass, "d" (0.02) and "a" do not
    cost = {"a": 0.01, "b": 0.20, "c": 0.05, "d": 0.02}
    sel = select_fp32_layers(list(cost), fake_quantize, FakeProbe(cost), tolerance=0.0, max_fp32=4)[0]
    assert sel.fp32_layers == ["b", "c"] and sel.error_final == pytest.approx(0.03)
    # many layers sharing the error evenly (random weights): none is worth keeping float
    even = {f"l{i}": 0.01 for i in range(16)}
    sel_even = select_fp32_layers(list(even), fake_quantize, FakeProbe(even), tolerance=0.0, max_fp32=4)[0]
    assert sel_even.fp32_layers == []
    assert [fp32_cap(n, 0.125, 4) for n in (0, 1, 4, 8, 10, 16, 40)] == [0, 1, 1, 1, 2, 2, 4]
    assert fp32_cap(16, 0.125, 1) == 1 and fp32_cap(16, 0.0, 4) == 0


# ------------------------------------------------------------------------------------------------ images


def test_no_or_too_few_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match="holds no image"):
        CAL.calibration_paths(str(empty), 8)
    with pytest.raises(ExportError, match="not an imdb name, a folder"):
        CAL.calibration_paths(str(tmp_path / "nowhere"), 8)
    with pytest.raises(ExportError, match="no_match_"):
        CAL.calibration_paths(str(tmp_path / "no_match_*.png"), 8)
    two = write_images(tmp_path / "two", count=2)
    with pytest.raises(ExportError, match=r"holds 2 image\(s\); at least 3"):
        CAL.calibration_paths(str(two), 8, min_images=3)
    with pytest.raises(ExportError, match="≥ 1"):
        CAL.calibration_paths(str(two), 0)
    assert len(CAL.calibration_paths(str(two / "*.png"), 1)) == 1
    with pytest.raises(ExportError, match="calibration imdb"):
        CAL.calibration_paths(f"synth:{tmp_path / 'missing'}:trainval", 4)


def test_imdb_source(synth_dir: Path) -> None:
    paths = CAL.calibration_paths(f"synth:{synth_dir}:trainval", 5)
    assert len(paths) == 5 and all(p.is_file() for p in paths)


def test_unreadable_images_are_skipped_and_reported(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", count=2)
    (folder / "broken.png").write_bytes(b"not a png at all")
    stream = CAL.ImageStream(CAL.calibration_paths(str(folder), 8), PRE, min_images=2)
    blobs = list(stream.blobs())
    assert len(blobs) == 2 and stream.used == 2
    assert [Path(s["path"]).name for s in stream.skipped] == ["broken.png"] and stream.skipped[0]["reason"]
    assert blobs[0][1].shape[0] == 1 and blobs[0][1].dtype.is_floating_point
    strict = CAL.ImageStream(stream.paths, PRE, min_images=3)
    with pytest.raises(ExportError, match=r"only 2 of 3 calibration image\(s\) could be read \(1 skipped"):
        list(strict.blobs())


# ------------------------------------------------------------------------------------------------ scales


def test_non_finite_ranges_and_scales_name_the_tensor() -> None:
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    ranges = TensorsData(CalibrationMethod.MinMax, {
        "ok": TensorData(lowest=np.float32(-1), highest=np.float32(1)),
        "conv3_out": TensorData(lowest=np.float32(0), highest=np.float32(np.inf))})
    with pytest.raises(ExportError, match="'conv3_out' a non-finite range"):
        CAL.check_ranges(ranges, "rpn")
    scale = numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "x_scale")
    zp = numpy_helper.from_array(np.array(0, dtype=np.int8), "x_zp")
    node = helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("xq", TensorProto.INT8, [1])], [scale, zp])
    with pytest.raises(ExportError, match="scale 'x_scale' of tensor 'x' is not finite"):
        check_scales(helper.make_model(graph), "rpn")


def test_cache_file_that_is_garbage_is_recalibrated(tmp_path: Path) -> None:
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    ranges = TensorsData(CalibrationMethod.MinMax, {"t": TensorData(lowest=np.float32(-2), highest=np.float32(3))})
    cache = CAL.CalibrationCache(tmp_path)
    cache.path("rpn", "k").write_text("{not json")
    calls: list[Any] = []
    got, reused = cache.get_or_compute("rpn", "k", {"method": "minmax"}, lambda: calls.append(1) or ranges)
    assert not reused and calls == [1] and got is ranges
    again, reused = cache.get_or_compute("rpn", "k", {}, lambda: calls.append(2) or ranges)
    assert reused and calls == [1] and float(again.data["t"].range_value[1]) == 3.0
    assert cache.path("rpn", "k").with_suffix(".key.json").is_file()


# ------------------------------------------------------------------------------------------------ options


def test_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--int8 needs --calib"):
        Int8Settings("")
    with pytest.raises(ExportError, match="--calib-method 'kl' unknown"):
        Int8Settings("imgs", method="kl")
    with pytest.raises(ExportError, match="--int8-target 'gpu' unknown: use one of cpu, tensorrt"):
        Int8Settings("imgs", target="gpu")
    with pytest.raises(ExportError, match=r"max FP32 fraction 1\.5"):
        Int8Settings("imgs", max_fp32_fraction=1.5)
    with pytest.raises(ExportError, match="--int8 and --fp16 exclude each other"):
        run_export(tmp_path / "x.safetensors", tmp_path / "out", fp16=True, int8=Int8Settings("imgs"))


def test_cli_refuses_int8_without_calib_and_with_fp16(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from frcnn_trt.cli import app

    r = CliRunner().invoke(app, ["export", str(tmp_path / "m.safetensors"), "--int8"])
    assert r.exit_code != 0 and "--int8 needs --calib" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m.safetensors"), "--int8", "--fp16", "--calib", "x"])
    assert r.exit_code != 0 and "exclude each other" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m.safetensors"), "--calib", "x"])
    assert r.exit_code != 0 and "--calib goes with --int8" in r.output


def test_speed_hint_only_when_layers_stay_fp32() -> None:
    from frcnn_trt.export.int8_export import fp32_speed_hint

    def meta(kept: list[str]) -> dict:
        return {"quantization": {"graphs": {"rpn.onnx": {"fp32_layers": []}, "detector.onnx": {"fp32_layers": kept}}}}

    assert fp32_speed_hint(meta([])) is None and fp32_speed_hint({}) is None
    hint = fp32_speed_hint(meta(["node_Gemm_8"]))
    assert hint is not None and "--int8-max-fp32 0" in hint


def test_quantizer_leaves_the_root_logger_level_as_it_was() -> None:
    import logging

    from frcnn_trt.export.quantize import _quiet_quantizer

    root = logging.getLogger()
    before = root.level
    with _quiet_quantizer():
        assert root.level == logging.ERROR
    assert root.level == before
