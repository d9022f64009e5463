"""RoI align: the eager op (torchvision's, half-pixel aligned), its ONNX form, and ONNX Runtime's ``RoiAlign``
against ``torchvision.ops.roi_align`` on the same coordinate convention."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import Tensor, nn

from frcnn_trt.errors import ModelError
from frcnn_trt.ops import RoIAlign, roi_align
from frcnn_trt.ops.roi_align import onnx_translation_table

OPSET = 20  # the exporter's default (frcnn_trt.export.onnx_export.DEFAULT_OPSET)


def _rois(gen: torch.Generator, count: int, n_images: int, img_h: int, img_w: int) -> Tensor:
    """Random RoIs (many partly outside the image) plus fixed edge cases."""
    b = torch.randint(0, n_images, (count, 1), generator=gen).float()
    x1 = torch.rand(count, 1, generator=gen) * (img_w + 80) - 40
    y1 = torch.rand(count, 1, generator=gen) * (img_h + 80) - 40
    x2 = x1 + 1 + torch.rand(count, 1, generator=gen) * img_w
    y2 = y1 + 1 + torch.rand(count, 1, generator=gen) * img_h
    last = float(n_images - 1)
    fixed = torch.tensor([
        [0, 0, 0, img_w - 1, img_h - 1],  # whole image
        [last, -60, -50, -20, -10],  # entirely outside (negative side)
        [last, img_w + 10, img_h + 5, img_w + 100, img_h + 90],  # entirely outside (far side)
        [0, -100, -100, img_w + 100, img_h + 100],  # covers and exceeds the map
        [last, -12, 5, 20, 40],  # partly outside on the left
        [0, img_w - 20, img_h - 10, img_w + 30, img_h + 25],  # partly outside bottom right
        [last, 40, 30, 40.5, 30.25],  # smaller than a cell (not clamped to one cell when aligned)
        [0, 50, 50, 50, 50],  # a point
    ], dtype=torch.float32)
    return torch.cat([fixed, torch.cat([b, x1, y1, x2, y2], dim=1)])


def _graph(pooled: tuple[int, int], scale: float, sampling_ratio: int) -> ort.InferenceSession:
    """A hand-made graph: the node :func:`frcnn_trt.ops.roi_align._translate_roi_align` writes."""
    h = onnx.helper
    nodes = [
        h.make_node("Slice", ["rois", "zero", "one", "one"], ["idx2"]),
        h.make_node("Squeeze", ["idx2", "one"], ["idxf"]),
        h.make_node("Cast", ["idxf"], ["idx"], to=onnx.TensorProto.INT64),
        h.make_node("Slice", ["rois", "one", "five", "one"], ["boxes"]),
        h.make_node("RoiAlign", ["x", "boxes", "idx"], ["y"], coordinate_transformation_mode="half_pixel",
                    mode="avg", output_height=pooled[0], output_width=pooled[1], sampling_ratio=sampling_ratio,
                    spatial_scale=scale),
    ]
    consts = [h.make_tensor(n, onnx.TensorProto.INT64, [1], [v]) for n, v in (("zero", 0), ("one", 1), ("five", 5))]
    graph = h.make_graph(
        nodes, "roi_align",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", "c", "h", "w"]),
         h.make_tensor_value_info("rois", onnx.TensorProto.FLOAT, ["r", 5])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["r", "c", *pooled])], initializer=consts)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=10)  # ORT 1.31 reads ≤ 13
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("pooled", "scale", "sampling_ratio"),
                         [((7, 7), 1 / 16, 2), ((7, 7), 1 / 16, 0), ((3, 5), 1 / 8, 1), ((4, 4), 0.5, 3)])
def test_onnxruntime_roialign_is_torchvision_aligned(pooled: tuple[int, int], scale: float,
                                                      sampling_ratio: int) -> None:
    """ONNX ``RoiAlign`` (half_pixel, ORT CPU) = ``torchvision.ops.roi_align(aligned=True)``, RoIs partly or
    wholly outside the map included; sampling_ratio 0 = torchvision's adaptive −1."""
    gen = torch.Generator().manual_seed(int(scale * 1000) + sampling_ratio)
    features = torch.randn(2, 6, 13, 17, generator=gen)
    rois = _rois(gen, 40, 2, int(13 / scale), int(17 / scale))
    got = torch.from_numpy(_graph(pooled, scale, sampling_ratio).run(None, {"x": features.numpy(),
                                                                             "rois": rois.numpy()})[0])
    expected = torchvision.ops.roi_align(features, rois, pooled, scale, sampling_ratio or -1, aligned=True)
    assert got.shape == (rois.shape[0], 6, *pooled)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert float(got[1:3].abs().max()) == 0.0  # wholly outside → 0 in both
    # the other convention really differs here: the test can tell the two apart
    legacy = torchvision.ops.roi_align(features, rois, pooled, scale, sampling_ratio or -1, aligned=False)
    assert float((legacy - got).abs().max()) > 1e-2


class _ConvAlign(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4, padding=2)
        self.pool = RoIAlign((3, 4), 1 / 4, sampling_ratio=2)

    def forward(self, image: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        feats = torch.relu(self.conv(image))
        return feats, self.pool(feats, rois)


@pytest.fixture(scope="module")
def exported() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    model = _ConvAlign().eval()
    dyn = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(
        model, (torch.randn(2, 3, 64, 80), torch.tensor([[0.0, 0, 0, 40, 30], [1, 8, 8, 60, 50]])), dynamo=True,
        input_names=["image", "rois"], output_names=["features", "pooled"], opset_version=OPSET,
        dynamic_shapes={"image": {2: dyn, 3: dyn}, "rois": {0: dyn}},
        custom_translation_table=onnx_translation_table(), verbose=False)
    assert program is not None
    return model, program.model_proto


def test_onnx_form_is_one_standard_roialign_node(exported: tuple[nn.Module, onnx.ModelProto]) -> None:
    model, proto = exported
    onnx.checker.check_model(proto, full_check=True)
    nodes = [n for n in proto.graph.node if n.op_type == "RoiAlign"]
    assert len(nodes) == 1 and nodes[0].domain == ""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {"coordinate_transformation_mode": b"half_pixel", "mode": b"avg", "output_height": 3,
                     "output_width": 4, "sampling_ratio": 2, "spatial_scale": pytest.approx(0.25)}
    assert {n.domain for n in proto.graph.node} == {""}  # no custom op
    assert model.pool.export_spec() == {
        "type": "RoIAlign", "domain": "", "op_type": "RoiAlign", "pooled_shape": [3, 4], "spatial_scale": 0.25,
        "sampling_ratio": 2, "aligned": True, "coordinate_transformation_mode": "half_pixel"}


@pytest.mark.parametrize(("height", "width"), [(64, 80), (96, 52)])
def test_exported_graph_runs_in_onnxruntime_like_torch(exported: tuple[nn.Module, onnx.ModelProto], height: int,
                                                        width: int) -> None:
    model, proto = exported
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(height)
    image = torch.randn(2, 3, height, width, generator=gen)
    rois = _rois(gen, 25, 2, height, width)
    feats_ort, pooled_ort = session.run(None, {"image": image.numpy(), "rois": rois.numpy()})
    # the pooling alone, on identical features
    expected = torchvision.ops.roi_align(torch.from_numpy(feats_ort), rois, (3, 4), 0.25, 2, aligned=True)
    torch.testing.assert_close(torch.from_numpy(pooled_ort), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        _, pooled_torch = model(image, rois)
    torch.testing.assert_close(torch.from_numpy(pooled_ort), pooled_torch, rtol=1e-4, atol=1e-5)


def test_module_is_torchvision_op_and_differentiable() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.0, 5, 90, 70], [1, -10, -6, 40, 33]], dtype=torch.float64)
    op = RoIAlign(2, 1 / 8, sampling_ratio=0)
    assert op.pooled_shape == (2, 2) and "aligned=True" in repr(op)
    out = op(features, rois)
    torch.testing.assert_close(out, torchvision.ops.roi_align(features, rois, (2, 2), 1 / 8, -1, aligned=True))
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (2, 2), 1 / 8, 2), (features,))


def test_bad_arguments_raise_model_error() -> None:
    f, r = torch.zeros(1, 2, 4, 4), torch.zeros(3, 5)
    with pytest.raises(ModelError, match=r"roi_align: rois must be \[R, 5\]"):
        roi_align(f, torch.zeros(3, 4), (2, 2), 1.0)
    with pytest.raises(ModelError, match="N, C, H, W"):
        roi_align(f[0], r, (2, 2), 1.0)
    with pytest.raises(ModelError, match="dtype"):
        roi_align(f, r.double(), (2, 2), 1.0)
    with pytest.raises(ModelError, match="pooled_shape"):
        RoIAlign((2, 0), 1.0)
    with pytest.raises(ModelError, match="sampling_ratio must be an int ≥ 0"):
        RoIAlign(2, 1.0, sampling_ratio=-1)
