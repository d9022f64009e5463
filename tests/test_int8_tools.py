"""tools/ort_profile.py (per-kernel time of an export on ONNX Runtime) and tools/int8_modelopt.py (ModelOpt's
ONNX PTQ for comparison: the RoI node round trip and reader run everywhere; the quantization itself needs
nvidia-modelopt, which is not a dependency, and skips without it)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import onnx
import pytest

from frcnn_trt.ops.roi_pool import ONNX_DOMAIN, ONNX_OP_TYPE, to_onnxruntime
from tests.helpers import tiny_export

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny")


def test_ort_profile_reports_kernel_times(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    tool = _load("ort_profile")
    out = tmp_path / "prof.json"
    assert tool.main([str(tiny[1]), "--size", "120", "160", "--rois", "8", "--runs", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())[str(tiny[1])]
    assert set(res) == {"rpn", "detector"}
    for graph in res.values():
        assert graph["run_ms"] > 0 and graph["ops"]
        assert sum(graph["ops"].values()) <= graph["run_ms"] * 1.05  # kernels fit inside the run
    assert any("Conv" in op for op in res["rpn"]["ops"])
    assert "MaxRoiPool" in res["detector"]["ops"]


def test_modelopt_tool_restores_the_roi_node_and_rereads_calibration(tiny: tuple[Path, Path]) -> None:
    tool = _load("int8_modelopt")
    original = onnx.load(str(tiny[1] / "detector.onnx"))
    back = tool._restore_roi_node(to_onnxruntime(original), original)
    roi = [n for n in back.graph.node if n.domain == ONNX_DOMAIN]
    want = [n for n in original.graph.node if n.domain == ONNX_DOMAIN]
    assert len(roi) == 1 and roi[0].op_type == ONNX_OP_TYPE and roi[0].attribute == want[0].attribute
    assert not any(n.op_type == "MaxRoiPool" for n in back.graph.node)
    assert any(o.domain == ONNX_DOMAIN for o in back.opset_import)
    with pytest.raises(SystemExit, match="one RoI node"):
        tool._restore_roi_node(original, original)
    reader = tool.ListReader([{"x": 1}, {"x": 2}])
    assert [reader.get_next(), reader.get_next(), reader.get_next()] == [{"x": 1}, {"x": 2}, None]
    reader.rewind()
    assert reader.get_next() == {"x": 1} and reader.get_first() == {"x": 1} and reader.get_next() == {"x": 2}


def test_modelopt_tool_makes_an_export_that_runs(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt is not installed (not a dependency)")
    from frcnn_trt.engines.detector import Detector
    from frcnn_trt.engines.export_format import load_export
    from tests.export.test_int8 import write_images

    tool = _load("int8_modelopt")
    calib = write_images(tmp_path / "calib")
    out = tmp_path / "modelopt"
    assert tool.main([str(tiny[1]), "--calib", str(calib), "--calib-images", "3", "--output", str(out)]) == 0
    info = load_export(out)
    assert info.precision == {"rpn.onnx": "int8", "detector.onnx": "int8"}
    assert "modelopt" in info.data["quantization"]["library"]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out / "rpn.onnx")).graph.node)
    from frcnn_trt.data.images import read_image

    det = Detector.from_export(out, backend="onnxruntime", device="cpu")
    assert len(det.detect([read_image(next(iter(sorted(calib.iterdir()))))])) == 1
