"""RoI pooling: eager op vs a Caffe loop reference, autograd, the ONNX and ONNX Runtime forms."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import Tensor, nn

from frcnn_trt.errors import ExportError, ModelError
from frcnn_trt.ops import (
    RoIPool,
    onnx_translation_table,
    register_onnx_schema,
    roi_pool,
    to_onnxruntime,
)


def _round_half_away(v: float) -> int:
    a = abs(float(v))
    fl = math.floor(a)
    r = fl + (1 if a - fl >= 0.5 else 0)
    return int(math.copysign(r, v)) if r else 0


def ref_roi_pool(
    features: np.ndarray, rois: np.ndarray, pooled: tuple[int, int], scale: float, arith: type = np.float32
) -> np.ndarray:
    """Caffe ``ROIPoolingLayer::Forward_cpu`` as a loop; values in float64, coordinate maths in ``arith``
    (Caffe's ``Dtype``: float32 for float32 nets)."""
    feats = features.astype(np.float64)
    _, c, h, w = feats.shape
    ph, pw = pooled
    out = np.zeros((rois.shape[0], c, ph, pw), dtype=np.float64)
    s = arith(scale)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        x1, y1, x2, y2 = (_round_half_away(arith(v) * s) for v in roi[1:])
        roi_h = max(y2 - y1 + 1, 1)
        roi_w = max(x2 - x1 + 1, 1)
        bin_h = arith(roi_h) / arith(ph)
        bin_w = arith(roi_w) / arith(pw)
        for i in range(ph):
            hs = min(max(math.floor(arith(i) * bin_h) + y1, 0), h)
            he = min(max(math.ceil(arith(i + 1) * bin_h) + y1, 0), h)
            for j in range(pw):
                ws = min(max(math.floor(arith(j) * bin_w) + x1, 0), w)
                we = min(max(math.ceil(arith(j + 1) * bin_w) + x1, 0), w)
                if he <= hs or we <= ws:
                    continue  # empty bin → 0
                out[r, :, i, j] = feats[b, :, hs:he, ws:we].reshape(c, -1).max(axis=1)
    return out


def _edge_rois(gen: torch.Generator, count: int, n_images: int, img_h: int, img_w: int) -> Tensor:
    """Random RoIs plus the edge cases: out of bounds, negative, zero/negative size, batch index > 0."""
    b = torch.randint(0, n_images, (count, 1), generator=gen).float()
    x1 = torch.rand(count, 1, generator=gen) * (img_w + 60) - 30
    y1 = torch.rand(count, 1, generator=gen) * (img_h + 60) - 30
    x2 = x1 + torch.rand(count, 1, generator=gen) * img_w - 8  # some with x2 < x1
    y2 = y1 + torch.rand(count, 1, generator=gen) * img_h - 8
    random_rois = torch.cat([b, x1, y1, x2, y2], dim=1)
    last = float(n_images - 1)
    fixed = torch.tensor(
        [
            [0, 0, 0, img_w - 1, img_h - 1],  # whole image
            [last, -50, -40, -20, -10],  # entirely outside (negative side)
            [last, img_w + 10, img_h + 5, img_w + 100, img_h + 90],  # entirely outside (far side)
            [0, -100, -100, img_w + 100, img_h + 100],  # covers and exceeds the map
            [last, 40, 30, 40, 30],  # zero-size (one cell)
            [0, 50, 50, 20, 20],  # x2 < x1 → size clamps to 1
            [last, 7.5, 8.0, 23.5, 24.0],  # exact .5 rounding points at scale 1/16 → half away from zero
            [0, -8.0, -7.9, 8.0, 7.9],  # negative .5 rounding
        ],
        dtype=torch.float32,
    )
    return torch.cat([fixed, random_rois])


@pytest.mark.parametrize(("pooled", "scale"), [((7, 7), 1 / 16), ((6, 6), 1 / 16), ((3, 5), 1 / 8), ((4, 4), 0.3)])
def test_matches_caffe_loop_reference(pooled: tuple[int, int], scale: float) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 13, 17, generator=gen)
    rois = _edge_rois(gen, 40, 2, int(13 / scale), int(17 / scale))
    expected = ref_roi_pool(feats.numpy(), rois.numpy(), pooled, scale, arith=np.float32)
    ours = roi_pool(feats, rois, pooled, scale)
    tv = torchvision.ops.roi_pool(feats, rois, pooled, scale)
    assert ours.shape == (rois.shape[0], 3, *pooled)
    assert torch.equal(ours, tv)
    np.testing.assert_array_equal(ours.double().numpy(), expected)
    # Empty bins are zero: the fully outside RoIs pool to exactly 0.
    assert torch.count_nonzero(ours[1:3]) == 0


def test_float64_features_use_float64_coordinate_maths() -> None:
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 2, 40, 40, generator=gen, dtype=torch.float64)
    rois = _edge_rois(gen, 30, 2, 640, 640).double()
    expected = ref_roi_pool(feats.numpy(), rois.numpy(), (7, 7), 1 / 16, arith=np.float64)
    np.testing.assert_array_equal(roi_pool(feats, rois, (7, 7), 1 / 16).numpy(), expected)


def test_float32_last_bin_quirk_is_kept() -> None:
    # RoI of 57 cells, 7 bins: float32 ceil(7 · (57/7)) = 58, so the last bin takes one row past the RoI.
    feats = torch.arange(64, dtype=torch.float32).reshape(1, 1, 64, 1)
    rois = torch.tensor([[0.0, 0.0, 0.0, 0.0, 56.0]])
    out = roi_pool(feats, rois, (7, 1), 1.0)
    assert out[0, 0, :, 0].tolist() == [8, 16, 24, 32, 40, 48, 57]  # bin i ends at ceil((i+1)·57/7) − 1
    expected64 = ref_roi_pool(feats.numpy(), rois.numpy(), (7, 1), 1.0, arith=np.float64)
    assert expected64[0, 0, 6, 0] == 56  # float64 maths would stop at the RoI end
    assert ref_roi_pool(feats.numpy(), rois.numpy(), (7, 1), 1.0)[0, 0, 6, 0] == 57


def test_hand_worked_small_case() -> None:
    # 4×4 map, stride 2 (scale 0.5): RoI (2,2)-(6,6) px → cells 1..3, 3×3 cells into 2×2 bins.
    # bin size 1.5: rows [0,2)→1,2 and [1,3)→2,3 (+start 1) — overlapping bins as in Caffe.
    feats = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    out = roi_pool(feats, torch.tensor([[0.0, 2, 2, 6, 6]]), (2, 2), 0.5)
    assert out[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]


def test_gradient_matches_torchvision() -> None:
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 3, 12, 14, generator=gen)
    rois = _edge_rois(gen, 20, 2, 192, 224)
    grad_out = torch.randn(rois.shape[0], 3, 4, 5, generator=gen)
    a = feats.clone().requires_grad_(True)
    b = feats.clone().requires_grad_(True)
    (roi_pool(a, rois, (4, 5), 1 / 16) * grad_out).sum().backward()
    (torchvision.ops.roi_pool(b, rois, (4, 5), 1 / 16) * grad_out).sum().backward()
    assert a.grad is not None and b.grad is not None
    assert torch.equal(a.grad, b.grad)
    assert a.grad.abs().sum() > 0


def test_gradcheck_and_opcheck() -> None:
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 2, 8, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[1, 0.0, 0, 60, 50], [0, 16, 8, 100, 120], [1, -20, -20, 40, 30]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, (3, 2), 1 / 16), (feats,))
    torch.library.opcheck(torch.ops.frcnn.roi_pool.default, (feats, rois, [3, 2], 1 / 16))


def test_module_and_input_errors() -> None:
    pool = RoIPool(7, 1 / 16)
    assert pool.pooled_shape == (7, 7)
    assert "pooled_shape=(7, 7)" in repr(pool)
    feats = torch.randn(1, 4, 10, 10)
    assert pool(feats, torch.tensor([[0.0, 0, 0, 100, 100]])).shape == (1, 4, 7, 7)
    assert pool(feats, torch.zeros(0, 5)).shape == (0, 4, 7, 7)
    with pytest.raises(ModelError, match=r"\[R, 5\]"):
        pool(feats, torch.zeros(3, 4))
    with pytest.raises(ModelError, match="N, C, H, W"):
        pool(feats[0], torch.zeros(3, 5))
    with pytest.raises(ModelError, match="dtype"):
        pool(feats, torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ModelError, match="pooled_shape"):
        RoIPool((7, 0), 1 / 16)


# ------------------------------------------------------------------------------------------------ ONNX


class _ConvPool(nn.Module):
    """conv (stride 4) → RoI pool; returns the features too so ORT's pooling can be checked bit for bit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4, padding=2)
        self.pool = RoIPool((3, 4), 1 / 4)

    def forward(self, image: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        feats = torch.relu(self.conv(image))
        return feats, self.pool(feats, rois)


@pytest.fixture(scope="module")
def exported() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    model = _ConvPool().eval()
    image = torch.randn(2, 3, 64, 80)
    rois = torch.tensor([[0.0, 0, 0, 40, 30], [1, 8, 8, 60, 50], [0, 2, 3, 10, 12]])
    dyn = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(
        model,
        (image, rois),
        dynamo=True,
        input_names=["image", "rois"],
        output_names=["features", "pooled"],
        dynamic_shapes={"image": {2: dyn, 3: dyn}, "rois": {0: dyn}},
        custom_translation_table=onnx_translation_table(),
        verbose=False,
    )
    assert program is not None
    return model, program.model_proto


def test_onnx_node_form(exported: tuple[nn.Module, onnx.ModelProto]) -> None:
    _, proto = exported
    nodes = [n for n in proto.graph.node if n.op_type == "RoIPool"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.domain == "frcnn"
    assert len(node.input) == 2 and len(node.output) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {
        "pooled_shape": [3, 4],
        "spatial_scale": pytest.approx(0.25),
        "plugin_namespace": b"frcnn",
        "plugin_version": b"1",
    }
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("frcnn", 1)}
    # Nothing else of torchvision / frcnn leaks into the graph.
    assert {n.domain for n in proto.graph.node} <= {"", "frcnn"}


def test_onnx_checker_and_shape_inference(exported: tuple[nn.Module, onnx.ModelProto]) -> None:
    _, proto = exported
    register_onnx_schema()
    register_onnx_schema()  # idempotent
    onnx.checker.check_model(proto, full_check=True)
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    del stripped.graph.value_info[:]
    for out in stripped.graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(stripped, check_type=True, strict_mode=True)
    pooled = next(o for o in inferred.graph.output if o.name == "pooled")
    dims = pooled.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [8, 3, 4]
    assert dims[0].dim_param  # dynamic RoI count


@pytest.mark.parametrize(("height", "width"), [(64, 80), (96, 52)])
@pytest.mark.parametrize("num_rois", [1, 37])
def test_onnxruntime_bit_identical(
    exported: tuple[nn.Module, onnx.ModelProto], height: int, width: int, num_rois: int
) -> None:
    model, proto = exported
    ort_model = to_onnxruntime(proto)
    assert [n.op_type for n in ort_model.graph.node if n.op_type in ("RoIPool", "MaxRoiPool")] == ["MaxRoiPool"]
    assert all(o.domain != "frcnn" for o in ort_model.opset_import)
    onnx.checker.check_model(ort_model, full_check=True)
    session = ort.InferenceSession(ort_model.SerializeToString(), providers=["CPUExecutionProvider"])

    gen = torch.Generator().manual_seed(height * 1000 + num_rois)
    image = torch.randn(2, 3, height, width, generator=gen)
    rois = _edge_rois(gen, max(num_rois - 8, 0), 2, height, width)[:num_rois]
    feats_ort, pooled_ort = session.run(None, {"image": image.numpy(), "rois": rois.numpy()})
    assert pooled_ort.shape == (num_rois, 8, 3, 4)
    expected = torchvision.ops.roi_pool(torch.from_numpy(feats_ort), rois, (3, 4), 0.25)
    assert torch.equal(torch.from_numpy(pooled_ort), expected)  # bit-identical pooling
    with torch.no_grad():
        feats_torch, pooled_torch = model(image, rois)
    torch.testing.assert_close(torch.from_numpy(feats_ort), feats_torch, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(pooled_ort), pooled_torch, rtol=1e-4, atol=1e-5)


def test_onnxruntime_large_rois_float32_quirk() -> None:
    # Feed the pooling directly (no conv): RoIs with 57-cell sides hit the float32 last-bin quirk.
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node(
                "RoIPool",
                ["x", "rois"],
                ["y"],
                domain="frcnn",
                pooled_shape=[7, 7],
                spatial_scale=1 / 16,
                plugin_namespace="frcnn",
                plugin_version="1",
            )
        ],
        "g",
        [
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 70, 70]),
            onnx.helper.make_tensor_value_info("rois", onnx.TensorProto.FLOAT, ["R", 5]),
        ],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["R", 2, 7, 7])],
    )
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", 20), onnx.helper.make_opsetid("frcnn", 1)],
        ir_version=10,  # what ONNX Runtime 1.31 reads (onnx 1.23 would write 14)
    )
    session = ort.InferenceSession(to_onnxruntime(proto).SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 70, 70, generator=gen)
    rois = torch.tensor([[0.0, 0, 0, 56 * 16, 56 * 16], [0, 16, 32, 57 * 16, 58 * 16], [0, 0, 0, 28 * 16, 114 * 16]])
    (y,) = session.run(None, {"x": x.numpy(), "rois": rois.numpy()})
    np.testing.assert_array_equal(y, torchvision.ops.roi_pool(x, rois, 7, 1 / 16).numpy())
    np.testing.assert_array_equal(y.astype(np.float64), ref_roi_pool(x.numpy(), rois.numpy(), (7, 7), 1 / 16))


def _tiny_roi_model(opset: int, in_subgraph: bool = False) -> onnx.ModelProto:
    helper = onnx.helper
    node = helper.make_node("RoIPool", ["x", "rois"], ["y"], domain="frcnn", pooled_shape=[2, 2], spatial_scale=1.0)
    inputs = [
        helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4]),
        helper.make_tensor_value_info("rois", onnx.TensorProto.FLOAT, [1, 5]),
    ]
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 2, 2])
    if in_subgraph:
        zeros = helper.make_tensor("zeros", onnx.TensorProto.FLOAT, [1, 1, 2, 2], [0.0] * 4)
        then_branch = helper.make_graph([node], "then", [], [out])
        else_branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=zeros)], "else", [], [out])
        cond = helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)]
        graph = helper.make_graph(nodes, "g", [cond, *inputs], [out])
    else:
        graph = helper.make_graph([node], "g", inputs, [out])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("frcnn", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def test_to_onnxruntime_refuses_new_opsets() -> None:
    with pytest.raises(ExportError, match="opset 22"):
        to_onnxruntime(_tiny_roi_model(22))


def test_to_onnxruntime_rewrites_subgraphs_and_leaves_input_alone() -> None:
    original = _tiny_roi_model(20, in_subgraph=True)
    rewritten = to_onnxruntime(original)

    def then_node(model: onnx.ModelProto) -> onnx.NodeProto:
        attrs = {a.name: a for a in model.graph.node[0].attribute}
        return attrs["then_branch"].g.node[0]

    assert (then_node(rewritten).domain, then_node(rewritten).op_type) == ("", "MaxRoiPool")
    assert (then_node(original).domain, then_node(original).op_type) == ("frcnn", "RoIPool")
    assert all(o.domain != "frcnn" for o in rewritten.opset_import)
    session = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    (y,) = session.run(None, {"c": np.array(True), "x": x, "rois": np.array([[0, 0, 0, 3, 3]], np.float32)})
    assert y[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]


def test_to_onnxruntime_rewrites_model_local_functions() -> None:
    helper = onnx.helper
    body = helper.make_node("RoIPool", ["x", "r"], ["y"], domain="frcnn", pooled_shape=[2, 2], spatial_scale=1.0)
    function = helper.make_function(
        "custom",
        "PoolTwice",
        ["x", "r"],
        ["y"],
        [body],
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("frcnn", 1)],
    )
    graph = helper.make_graph(
        [helper.make_node("PoolTwice", ["x", "rois"], ["y"], domain="custom")],
        "g",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4]),
            helper.make_tensor_value_info("rois", onnx.TensorProto.FLOAT, [1, 5]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 2, 2])],
    )
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("frcnn", 1), helper.make_opsetid("custom", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function], ir_version=10)
    rewritten = to_onnxruntime(model)
    assert (rewritten.functions[0].node[0].domain, rewritten.functions[0].node[0].op_type) == ("", "MaxRoiPool")
    assert all(o.domain != "frcnn" for o in rewritten.opset_import)
    assert all(o.domain != "frcnn" for o in rewritten.functions[0].opset_import)
    session = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    (y,) = session.run(None, {"x": x, "rois": np.array([[0, 0, 0, 3, 3]], np.float32)})
    assert y[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
