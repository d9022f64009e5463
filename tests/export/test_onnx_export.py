"""ONNX export: graphs vs the torch model in ONNX Runtime, the RoIPool node, export.json, validation errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from frcnn_trt.boxes import generate_anchors
from frcnn_trt.engines.detector import InferenceSettings
from frcnn_trt.engines.export_format import export_json, load_export
from frcnn_trt.errors import ExportError
from frcnn_trt.export.onnx_export import export_model, find_default_checkpoint
from frcnn_trt.io import sha256_file
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.ops.roi_pool import register_onnx_schema, to_onnxruntime
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(exported: tuple[Path, Path]) -> torch.nn.Module:
    return load_checkpoint(exported[0])[0]


def _session(path: Path, rewrite: bool = False) -> ort.InferenceSession:
    proto = onnx.load(str(path))
    payload = (to_onnxruntime(proto) if rewrite else proto).SerializeToString()
    return ort.InferenceSession(payload, providers=["CPUExecutionProvider"])


def _rois(gen: torch.Generator, count: int, batch: int, height: int, width: int) -> torch.Tensor:
    x1 = torch.rand(count, generator=gen) * (width - 20)
    y1 = torch.rand(count, generator=gen) * (height - 20)
    w = 4 + torch.rand(count, generator=gen) * (width - x1 - 4)
    h = 4 + torch.rand(count, generator=gen) * (height - y1 - 4)
    img = torch.randint(0, batch, (count,), generator=gen).float()
    return torch.stack([img, x1, y1, (x1 + w).clamp(max=width - 1), (y1 + h).clamp(max=height - 1)], 1)


@pytest.mark.parametrize(("height", "width"), [(240, 320), (400, 176)])
@pytest.mark.parametrize("num_rois", [1, 300])
def test_onnxruntime_matches_torch(exported: tuple[Path, Path], model: torch.nn.Module, height: int, width: int,
                                   num_rois: int) -> None:
    _, out = exported
    gen = torch.Generator().manual_seed(height + num_rois)
    blob = (torch.rand(2, 3, height, width, generator=gen) - 0.5) * 200
    rpn = _session(out / "rpn.onnx")
    feats_o, prob_o, bbox_o = rpn.run(None, {"image": blob.numpy()})
    with torch.no_grad():
        feats_t, prob_t, bbox_t = model.rpn_blobs(blob)
    for o, t in ((feats_o, feats_t), (prob_o, prob_t), (bbox_o, bbox_t)):
        assert o.shape == tuple(t.shape) and o.dtype == np.float32
        assert float(np.abs(o - t.numpy()).max()) <= 1e-4
    rois = _rois(gen, num_rois, 2, height, width)
    det = _session(out / "detector.onnx", rewrite=True)
    cls_o, box_o = det.run(None, {"features": feats_t.numpy(), "rois": rois.numpy()})
    with torch.no_grad():
        cls_t, box_t = model.detector(feats_t, rois)
    assert cls_o.shape == (num_rois, 4) and box_o.shape == (num_rois, 16)
    assert float(np.abs(cls_o - cls_t.numpy()).max()) <= 1e-4
    assert float(np.abs(box_o - box_t.numpy()).max()) <= 1e-4


def test_roipool_node_and_checker(exported: tuple[Path, Path]) -> None:
    _, out = exported
    register_onnx_schema()
    det = onnx.load(str(out / "detector.onnx"))
    onnx.checker.check_model(det, full_check=True)
    onnx.checker.check_model(onnx.load(str(out / "rpn.onnx")), full_check=True)
    nodes = [n for n in det.graph.node if n.op_type == "RoIPool"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.domain == "frcnn"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"pooled_shape": [7, 7], "spatial_scale": pytest.approx(1 / 16),
                     "plugin_namespace": b"frcnn", "plugin_version": b"1"}
    assert {n.domain for n in det.graph.node} <= {"", "frcnn"}
    assert ("frcnn", 1) in {(o.domain, o.version) for o in det.opset_import}
    # dynamic dims carry readable names
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in det.graph.input}
    assert dims == {"features": ["batch", 128, "feat_height", "feat_width"], "rois": ["num_rois", 5]}
    rpn = onnx.load(str(out / "rpn.onnx"))
    assert [d.dim_param or d.dim_value for d in rpn.graph.output[1].type.tensor_type.shape.dim] == \
        ["batch", 18, "feat_height", "feat_width"]
    assert [d.dim_param or d.dim_value for d in rpn.graph.input[0].type.tensor_type.shape.dim] == \
        ["batch", 3, "height", "width"]
    assert [o.name for o in rpn.graph.output] == ["features", "rpn_cls_prob", "rpn_bbox_pred"]
    assert not any(n.domain == "frcnn" for n in rpn.graph.node)


def test_export_json(exported: tuple[Path, Path]) -> None:
    ckpt, out = exported
    data = json.loads((out / "export.json").read_text())
    cfg = tiny_config()
    assert data["format"] == "frcnn-trt-export" and data["net"] == "tiny"
    assert data["class_names"] == ["__background__", "class1", "class2", "class3"]
    assert data["preprocessing"]["pixel_means_bgr"] == [102.9801, 115.9465, 122.7717]
    assert (data["preprocessing"]["target_size"], data["preprocessing"]["max_size"]) == (240, 400)
    base = generate_anchors(16, (0.5, 1, 2), (2, 4, 8), dtype=torch.float64).tolist()
    assert data["anchors"]["base_anchors"] == base and data["anchors"]["feat_stride"] == 16
    assert data["proposals"]["test"] == {"pre_nms_top_n": 6000, "post_nms_top_n": 300, "nms_thresh": 0.7,
                                         "min_size": cfg.TEST.RPN_MIN_SIZE}
    assert data["proposals"]["rpn_generate"]["pre_nms_top_n"] == -1
    assert data["proposals"]["rpn_generate"]["post_nms_top_n"] == 2000
    assert data["test"] == {"score_thresh": 0.05, "nms_thresh": 0.3, "max_per_image": 100, "bbox_reg": True}
    prof = data["shape_profiles"]
    assert prof["rpn.onnx"]["image"]["max"][2:] == [400, 400]
    assert prof["detector.onnx"]["rois"] == {"min": [1, 5], "opt": [300, 5], "max": [2000, 5]}
    assert prof["detector.onnx"]["features"]["max"][2:] == [25, 25]
    assert data["opset"] == 20
    roi_pool = {"domain": "frcnn", "op_type": "RoIPool", "pooled_shape": [7, 7], "spatial_scale": 0.0625,
                "plugin_namespace": "frcnn", "plugin_version": "1"}
    assert data["roi_op"] == {"type": "RoIPool", **roi_pool}
    assert data["roi_pool"] == roi_pool  # the section older readers know
    assert set(data["versions"]) >= {"torch", "onnx", "onnxruntime", "frcnn_trt"}
    assert data["precision"] == {"rpn.onnx": "fp32", "detector.onnx": "fp32"}
    assert data["source"]["sha256"] == sha256_file(ckpt)
    for name in ("rpn.onnx", "detector.onnx"):
        entry = data["files"][name]
        assert entry["sha256"] == sha256_file(out / name)
        assert entry["size"] == (out / name).stat().st_size
    parity = data["parity"]
    assert parity["images"] == 2
    assert max(parity["max_abs_error"].values()) < 1e-4
    assert parity["detections"]["reference"] > 0
    assert parity["detections"]["matched_fraction"] == 1.0
    assert parity["detections"]["max_box_error"] < 1e-2


def _copy_export(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():  # not the ort_cache/ folder ONNX Runtime sessions leave
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_load_export_errors(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = exported
    assert load_export(out).num_classes == 4
    with pytest.raises(ExportError, match="does not exist"):
        load_export(tmp_path / "nowhere")
    bad = _copy_export(out, tmp_path / "corrupt")
    raw = bytearray((bad / "detector.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different content
    (bad / "detector.onnx").write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=r"detector\.onnx: SHA-256"):
        load_export(bad)
    load_export(bad, verify=False)  # size still matches
    trunc = _copy_export(out, tmp_path / "trunc")
    (trunc / "rpn.onnx").write_bytes((trunc / "rpn.onnx").read_bytes()[:1000])
    with pytest.raises(ExportError, match=r"rpn\.onnx has 1000 bytes"):
        load_export(trunc, verify=False)
    missing = _copy_export(out, tmp_path / "missing")
    (missing / "rpn.onnx").unlink()
    with pytest.raises(ExportError, match=r"rpn\.onnx is missing"):
        load_export(missing)
    (missing / "export.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        load_export(missing)


def test_roi_op_of_an_export_without_the_section(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """An export.json written before ``roi_op`` existed reads as RoIPool, which needs the plugin."""
    _, out = exported
    assert load_export(out).needs_roi_pool_plugin
    old = _copy_export(out, tmp_path / "old")
    data = json.loads((old / "export.json").read_text())
    del data["roi_op"]
    (old / "export.json").write_text(json.dumps(data))
    info = load_export(old)
    assert info.roi_op == {"type": "RoIPool", **data["roi_pool"]} and info.needs_roi_pool_plugin


def test_export_json_refuses_an_unknown_roi_op() -> None:
    with pytest.raises(ExportError, match="unknown RoI op 'PSRoIPool'"):
        export_json(net="tiny", class_names=["a", "b"], settings=InferenceSettings(("a", "b")),
                    roi_op={"type": "PSRoIPool"}, shape_profiles={}, feature_map={}, opset=20, precision="fp32",
                    precision_notes="", files={})


def test_export_refuses_bad_arguments(model: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 22"):
        export_model(model, cfg=tiny_config(), class_names=["a", "b", "c", "d"], output_dir=tmp_path, opset=22)
    with pytest.raises(ExportError, match="3 class names"):
        export_model(model, cfg=tiny_config(), class_names=["a", "b", "c"], output_dir=tmp_path)


def test_find_default_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="final"):
        find_default_checkpoint(tmp_path)
    old = tmp_path / "a" / "VGG16_faster_rcnn_final.safetensors"
    new = tmp_path / "b" / "c" / "ZF_final.safetensors"
    for p in (old, new):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 100, time.time() - 100))
    (tmp_path / "b" / "stage1_rpn_iter_100.safetensors").write_bytes(b"x")
    assert find_default_checkpoint(tmp_path) == new
