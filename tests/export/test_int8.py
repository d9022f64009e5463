"""INT8 export: QDQ structure, calibration cache reuse and invalidation, parity bounds, the backend running it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.export.int8_export import Int8Settings, quantize_export
from frcnn_trt.export.onnx_export import run_parity
from frcnn_trt.export.parity import synthetic_images
from frcnn_trt.export.quantize import qdq_layers
from frcnn_trt.model.checkpoint import load_checkpoint
from tests.helpers import tiny_export

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = ((150, 200), (200, 133), (120, 160))


def write_images(folder: Path, count: int = 3, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(synthetic_images(count, seed=seed, sizes=SIZES)):
        Image.fromarray(im[:, :, ::-1]).save(folder / f"calib_{i}.png")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny")


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="module")
def int8_export(tiny: tuple[Path, Path], calib_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "export"
    shutil.copytree(tiny[1], out)
    quantize_export(out, Int8Settings(str(calib_dir), num_images=3, sample_images=1, max_fp32_layers=0,
                                      cache_dir=out.parent / "cache", target="tensorrt"))
    return out


@pytest.fixture(scope="module")
def cpu_export(tiny: tuple[Path, Path], calib_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8cpu") / "export"
    shutil.copytree(tiny[1], out)
    quantize_export(out, Int8Settings(str(calib_dir), num_images=3, sample_images=1, max_fp32_layers=0,
                                      cache_dir=out.parent / "cache"))
    return out


def test_cpu_target_uint8_activations_relu_folded_and_integer_kernels(cpu_export: Path, tiny: tuple[Path, Path]
                                                                      ) -> None:
    from frcnn_trt.export.precision_report import precision_report

    q = json.loads((cpu_export / "export.json").read_text())["quantization"]
    assert q["target"] == "cpu" and "UINT8" in q["activations"] and "Relu" in q["op_types"]
    for name in ("rpn.onnx", "detector.onnx"):
        proto = onnx.load(str(cpu_export / name))
        assert all(info["int8"] for info in qdq_layers(proto).values())
        made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
        relus = [n for n in proto.graph.node if n.op_type == "Relu"]
        # a Relu after a Conv / Gemm is folded into the UINT8 Q (zero point 0)
        assert not [n.name for n in relus if made_by.get(n.input[0]) in ("Conv", "Gemm")], name
        inits = {i.name: i for i in proto.graph.initializer}
        for n in proto.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
                zp = onnx.numpy_helper.to_array(inits[n.input[2]])
                assert zp.dtype == (np.int8 if n.input[0].endswith("weight_quantized") else np.uint8), n.name
    model, _ = load_checkpoint(tiny[0])
    rep = precision_report(cpu_export, model, synthetic_images(1, sizes=SIZES))
    kernels = {v["kernel"] for layers in rep["onnxruntime_cpu_layers"].values() for v in layers.values()}
    assert kernels <= {"QLinearConv", "QGemm"} and rep["computed"]["onnxruntime"]["precision"] == "int8"
    assert "--int8-target tensorrt" in rep["tensorrt"]["skipped"]
    assert rep["detections"]["reference"] == 0 or rep["detections"]["match_rate"] >= 0.3


def test_qdq_structure_and_roi_node_float(int8_export: Path) -> None:
    data = json.loads((int8_export / "export.json").read_text())
    proto_rpn = onnx.load(str(int8_export / "rpn.onnx"))
    assert data["precision"] == {"rpn.onnx": "int8", "detector.onnx": "int8"}
    q = data["quantization"]
    for name in ("rpn.onnx", "detector.onnx"):
        proto = onnx.load(str(int8_export / name))
        layers = qdq_layers(proto)
        kept = set(q["fp32_layers"][name])
        assert not kept and layers
        for layer, info in layers.items():
            assert info["int8"] == (layer not in kept), (name, layer, info)
            if info["int8"]:
                assert info["weight_axis"] == 0 if info["op"] == "Conv" else info["weight_axis"] is not None
        ops = {n.op_type for n in proto.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        # every Q/DQ is INT8 with zero point 0 (TensorRT's explicit quantization)
        inits = {i.name: i for i in proto.graph.initializer}
        for n in proto.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
                zp = onnx.numpy_helper.to_array(inits[n.input[2]])
                assert zp.dtype == np.int8 and not zp.any()
    det = onnx.load(str(int8_export / "detector.onnx"))
    (roi,) = [n for n in det.graph.node if n.op_type == "RoIPool" and n.domain == "frcnn"]
    graph_inputs = {i.name for i in det.graph.input}
    assert set(roi.input) <= graph_inputs  # fed the float features and RoIs directly, no Q/DQ
    softmax = [n for n in det.graph.node if n.op_type == "Softmax"]
    assert softmax and all(n.op_type != "QuantizeLinear" for n in det.graph.node if n.input[0] in softmax[0].output)
    rec = q["graphs"]["rpn.onnx"]
    assert rec["error_all_int8"] == rec["error_final"] > 0 and rec["int8_layers"] == list(qdq_layers(proto_rpn))
    assert q["method"] == "minmax" and q["images"]["used"] == 3 and "onnxruntime" in q["library"]


def test_int8_runs_on_onnxruntime_within_parity_bounds(int8_export: Path, tiny: tuple[Path, Path]) -> None:
    info = load_export(int8_export)  # hashes match the rewritten graphs
    model, _ = load_checkpoint(tiny[0])
    det = Detector.from_export(int8_export, "onnxruntime", device="cpu")
    assert "onnxruntime" in det.describe()
    images = synthetic_images(2, seed=3, sizes=SIZES)
    assert len(det.detect(images)) == 2
    proposals = det.propose(images[:1])[0]
    assert proposals.boxes.shape[0] > 0
    result = type("R", (), {})()
    result.directory, result.metadata, result.parity = info.directory, dict(info.data), None
    report = run_parity(result, model, images)  # type: ignore[arg-type]
    err = report["max_abs_error"]
    assert err["rpn_cls_prob"] < 0.25 and err["cls_prob"] < 0.25, err
    assert 0.0 < err["features"] < 1e3
    assert report["detections"]["reference"] == 0 or report["detections"]["matched_fraction"] >= 0.3


def test_calibration_cache_reused_and_invalidated(int8_export: Path, tiny: tuple[Path, Path], calib_dir: Path,
                                                  tmp_path: Path) -> None:
    cache = int8_export.parent / "cache"
    first = json.loads((int8_export / "export.json").read_text())["quantization"]["graphs"]

    def again(images: Path, method: str = "minmax") -> dict[str, dict]:
        out = tmp_path / f"e{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny[1], out)
        md = quantize_export(out, Int8Settings(str(images), num_images=3, sample_images=1, max_fp32_layers=0,
                                               method=method, cache_dir=cache, target="tensorrt"))
        return md["quantization"]["graphs"]

    reused = again(calib_dir)
    assert reused["rpn.onnx"]["cache_reused"] and reused["rpn.onnx"]["cache_key"] == first["rpn.onnx"]["cache_key"]
    assert all(json.loads(Path(f["calibration_cache"]).read_text()) for f in reused.values())
    changed = tmp_path / "changed"
    shutil.copytree(calib_dir, changed)
    write_images(changed, count=1, seed=9)  # calib_0.png now holds other pixels
    miss = again(changed)
    assert not miss["rpn.onnx"]["cache_reused"] and miss["rpn.onnx"]["cache_key"] != first["rpn.onnx"]["cache_key"]
    entropy = again(calib_dir, "entropy")
    assert not entropy["rpn.onnx"]["cache_reused"]


def test_int8_precision_report_and_tensorrt_rtx(int8_export: Path, tiny: tuple[Path, Path]) -> None:
    from frcnn_trt.engines.tensorrt.runtime import load_tensorrt
    from frcnn_trt.errors import BackendError
    from frcnn_trt.export.precision_report import REPORT_FILE, precision_report

    model, _ = load_checkpoint(tiny[0])
    rep = precision_report(int8_export, model, synthetic_images(1, sizes=SIZES))
    assert json.loads((int8_export / REPORT_FILE).read_text())["stored_precision"] == "int8"
    kernels = {v["kernel"] for layers in rep["onnxruntime_cpu_layers"].values() for v in layers.values()}
    precisions = {v["precision"] for layers in rep["onnxruntime_cpu_layers"].values() for v in layers.values()}
    assert precisions == {"int8"} and kernels <= {"QLinearConv", "QGemm"}, rep["onnxruntime_cpu_layers"]
    assert rep["computed"]["onnxruntime"]["precision"] == "int8" and rep["computed"]["torch"]["precision"] == "fp32"
    assert set(rep["outputs_max_abs_delta"]) == {"features", "rpn_cls_prob", "rpn_bbox_pred", "cls_prob", "bbox_pred"}
    assert 0.0 <= rep["detections"]["match_rate"] <= 1.0 and rep["detections"]["iou_thresh"] == 0.5
    try:
        load_tensorrt("tensorrt_rtx")
    except BackendError:
        assert "skipped" in rep["tensorrt"]["tensorrt_rtx"]
        return
    # TensorRT for RTX (CPU-only builder) parses and builds the QDQ rpn.onnx strongly typed as INT8
    rtx = rep["tensorrt"]["tensorrt_rtx"]
    assert rtx["rpn_parse"] == {"ok": True, "errors": []}, rtx
    assert rtx["rpn_build"]["ok"] and rtx["rpn_build"]["precision"] == "int8", rtx


def test_cli_int8_max_fp32_zero_quantizes_every_layer(tiny: tuple[Path, Path], calib_dir: Path, tmp_path: Path
                                                      ) -> None:
    from typer.testing import CliRunner

    from frcnn_trt.cli import app

    out = tmp_path / "export"
    r = CliRunner().invoke(app, ["export", str(tiny[0]), "-o", str(out), "--no-parity", "--no-engines", "--int8",
                                 "--calib", str(calib_dir), "--calib-images", "3", "--int8-max-fp32", "0"])
    assert r.exit_code == 0, r.output
    assert "--int8-max-fp32 0 makes" not in r.output  # nothing kept FP32: no speed hint
    q = json.loads((out / "export.json").read_text())["quantization"]
    assert q["max_fp32_layers"] == 0 and q["fp32_layers"] == {"rpn.onnx": [], "detector.onnx": []}
    assert all(layer["int8"] for g in q["graphs"].values() for layer in g["layers"].values())
    r = CliRunner().invoke(app, ["export", str(tiny[0]), "-o", str(tmp_path / "bad"), "--int8", "--calib",
                                 str(calib_dir), "--int8-max-fp32", "-1"])
    assert r.exit_code != 0 and "max FP32 layers -1" in r.output
