"""``frcnn-trt import caffe``: caffemodels written through the schema, imported, and run.

Each file is built here the way Caffe writes one: a ``NetParameter`` with the layer names of py-faster-rcnn's
prototxts (docs/REFERENCE.md §8), weightless and training-only layers included, in the current ``layer`` list or
the legacy V1 ``layers`` list (enum types, 4-D legacy blob dims), with float or double data. The weights are
those of a seeded random :class:`FasterRCNN` (biases random too, RPN scores spread so proposals are not ties):
the imported checkpoint must hold exactly those values and give the same ``im_detect`` scores and boxes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from frcnn_trt import config as C
from frcnn_trt.boxes import generate_anchors
from frcnn_trt.cli import app
from frcnn_trt.data.voc import VOC_CLASSES
from frcnn_trt.errors import CheckpointError, ConfigError
from frcnn_trt.inference import im_detect
from frcnn_trt.model.caffe_import import import_caffemodel, parse_classes
from frcnn_trt.model.caffe_reader import read_caffemodel
from frcnn_trt.model.caffe_schema import caffe_messages
from frcnn_trt.model.checkpoint import load_checkpoint, load_tensors, read_info
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.postprocess import detections_from_scores

M = caffe_messages()
# V1LayerParameter.LayerType values (Caffe's schema)
V1 = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "LRN": 15, "Dropout": 6, "Softmax": 20,
      "SoftmaxWithLoss": 21, "Silence": 36, "Data": 5}
VGG16_CONVS = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]


# ------------------------------------------------------------------------------------------ writing caffemodels


def _packed(field_number: int, values: np.ndarray) -> bytes:
    """One packed repeated field on the wire (tag, byte length, raw little-endian values)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    raw = values.astype("<f4" if values.dtype == np.float32 else "<f8").tobytes()
    return varint(field_number << 3 | 2) + varint(len(raw)) + raw


def _blob(value: torch.Tensor, *, legacy: bool, double: bool) -> Any:
    blob = M.BlobProto()
    shape = tuple(value.shape)
    if legacy:  # Caffe's old num/channels/height/width: InnerProduct weights (1, 1, out, in), biases (1, 1, 1, n)
        n, c, h, w = (1,) * (4 - len(shape)) + shape
        blob.num, blob.channels, blob.height, blob.width = n, c, h, w
    else:
        blob.shape.dim.extend(shape)
    array = value.detach().double().numpy() if double else value.detach().float().numpy()
    blob.MergeFromString(_packed(8 if double else 5, array.reshape(-1)))  # data = 5, double_data = 8
    return blob


def _net_layers(net: str, rpn_name: str) -> list[tuple[str, str, str | None]]:
    """(Caffe name, type, our module) of a py-faster-rcnn training net, data and loss layers included."""
    convs = VGG16_CONVS if net == "VGG16" else ["conv1", "conv2", "conv3", "conv4", "conv5"]
    layers: list[tuple[str, str, str | None]] = [("input-data", "Python", None)]
    for c in convs:
        layers += [(c, "Convolution", f"backbone.body.{c}"), (c.replace("conv", "relu"), "ReLU", None)]
        if net != "VGG16" and c in ("conv1", "conv2"):
            layers.append((c.replace("conv", "norm"), "LRN", None))
        if (c.endswith("_2") and c < "conv5") or (net != "VGG16" and c in ("conv1", "conv2")):
            layers.append((c.replace("conv", "pool")[:5], "Pooling", None))
    layers += [(rpn_name, "Convolution", "rpn.conv"), ("rpn_relu/3x3", "ReLU", None),
               ("rpn_cls_score", "Convolution", "rpn.cls_score"), ("rpn_bbox_pred", "Convolution", "rpn.bbox_pred"),
               ("rpn_cls_score_reshape", "Reshape", None), ("rpn-data", "Python", None),
               ("rpn_loss_cls", "SoftmaxWithLoss", None), ("rpn_loss_bbox", "SmoothL1Loss", None),
               ("rpn_cls_prob", "Softmax", None), ("proposal", "Python", None), ("roi-data", "Python", None),
               ("roi_pool5", "ROIPooling", None), ("fc6", "InnerProduct", "backbone.box_head.fc6"),
               ("relu6", "ReLU", None), ("drop6", "Dropout", None), ("fc7", "InnerProduct", "backbone.box_head.fc7"),
               ("relu7", "ReLU", None), ("drop7", "Dropout", None),
               ("cls_score", "InnerProduct", "predictor.cls_score"),
               ("bbox_pred", "InnerProduct", "predictor.bbox_pred"),
               ("loss_cls", "SoftmaxWithLoss", None), ("loss_bbox", "SmoothL1Loss", None),
               ("silence_rpn", "Silence", None)]
    return layers


def write_caffemodel(path: Path, state: dict[str, torch.Tensor], net: str, *, v1: bool = False,
                     legacy: bool = False, double: bool = False, rpn_name: str = "rpn_conv/3x3",
                     drop: tuple[str, ...] = (), replace: dict[str, torch.Tensor] | None = None,
                     extra: tuple[tuple[str, str, list[torch.Tensor]], ...] = ()) -> Path:
    """``state`` (a FasterRCNN state dict) as a caffemodel; ``drop``: Caffe layers left out; ``replace``: our
    keys with other values; ``extra``: more (name, type, blobs) layers."""
    proto = M.NetParameter(name=net)
    replace = replace or {}
    rows = [(n, t, mod, [replace.get(f"{mod}.{p}", state[f"{mod}.{p}"]) for p in ("weight", "bias")] if mod else [])
            for n, t, mod in _net_layers(net, rpn_name) if n not in drop]
    rows += [(n, t, None, blobs) for n, t, blobs in extra]
    for name, kind, _, blobs in rows:
        if v1:
            if kind not in V1:
                continue  # V1 nets have no Python / ROIPooling / Reshape layers
            layer = proto.layers.add(name=name, type=V1[kind])
        else:
            layer = proto.layer.add(name=name, type=kind, top=[name])
        for value in blobs:
            layer.blobs.append(_blob(value, legacy=legacy, double=double))
    path.write_bytes(proto.SerializeToString())
    return path


# ------------------------------------------------------------------------------------------ models


def _cfg(net: str) -> C.Config:
    return C.override(C.resolve([C.default_for(net, "end2end")]), MODEL={"NET": net},
                      TEST={"SCALES": [160], "MAX_SIZE": 224, "HAS_RPN": True})


def random_model(net: str, num_classes: int, seed: int = 0) -> FasterRCNN:
    """A seeded random model (eval mode): He-init convs, random biases; RPN and class logits of a few units (the
    features of a 0–255 input are large), so scores are neither flat nor saturated."""
    torch.manual_seed(seed)
    model = FasterRCNN.from_config(_cfg(net), num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5, generator=gen)
        model.predictor.bbox_pred.weight.mul_(2.0)  # deltas of ~0.1–1: box decoding matters, boxes stay sane
        if net == "VGG16":  # 13 He-init convs with random biases grow the features: bring them to ZF's range
            model.backbone.body.conv5_3.weight.mul_(0.2)
            model.backbone.body.conv5_3.bias.mul_(0.2)
    return model.eval()


def _state(model: FasterRCNN) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _image(seed: int, height: int = 160, width: int = 208) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smooth random BGR image blob minus PIXEL_MEANS (im_scale 1), im_info, original size."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 16, width // 16, generator=gen) * 255.0
    img = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    blob = img - torch.tensor(C.Config().PIXEL_MEANS).view(1, 3, 1, 1)
    return blob, torch.tensor([[height, width, 1.0]]), torch.tensor([[height, width]])


def _assert_same_detections(a: FasterRCNN, b: FasterRCNN, seed: int = 1) -> None:
    blob, info, size = _image(seed)
    (sa, ba), = a.im_detect(blob, info, size)
    (sb, bb), = b.im_detect(blob, info, size)
    assert sa.shape[0] > 0 and sa.shape == sb.shape
    torch.testing.assert_close(sb, sa, rtol=0, atol=0)
    torch.testing.assert_close(bb, ba, rtol=0, atol=0)


@pytest.fixture(scope="module")
def zf_model() -> FasterRCNN:
    return random_model("ZF", 21, seed=0)


@pytest.fixture(scope="module")
def zf_state(zf_model: FasterRCNN) -> dict[str, torch.Tensor]:
    return _state(zf_model)


@pytest.fixture(scope="module")
def zf_file(tmp_path_factory: pytest.TempPathFactory, zf_state: dict[str, torch.Tensor]) -> Path:
    return write_caffemodel(tmp_path_factory.mktemp("zf") / "ZF_faster_rcnn_final.caffemodel", zf_state, "ZF",
                            rpn_name="rpn_conv1")


#: the Caffe layers of the RPN head and the box head (dropped where a test needs only the conv body)
HEADS = ("rpn_conv/3x3", "rpn_cls_score", "rpn_bbox_pred", "fc6", "fc7", "cls_score", "bbox_pred")


# ------------------------------------------------------------------------------------------ the three nets


@pytest.mark.parametrize(("net", "num_classes", "v1", "legacy", "double", "rpn_name"), [
    ("ZF", 21, False, False, False, "rpn_conv1"),  # alt-opt names, current format, BlobShape, VOC
    ("ZF", 4, True, True, True, "rpn_conv/3x3"),  # end2end names, V1 layers, legacy dims, double_data, 3 classes
    ("VGG_CNN_M_1024", 3, True, False, False, "rpn_conv/3x3"),  # V1 layers with BlobShape, 2 classes
    ("VGG_CNN_M_1024", 21, False, False, False, "rpn_conv/3x3"),  # current format, VOC
])
def test_import_reproduces_the_model(tmp_path: Path, net: str, num_classes: int, v1: bool, legacy: bool,
                                     double: bool, rpn_name: str) -> None:
    model = random_model(net, num_classes, seed=num_classes)
    state = _state(model)
    src = write_caffemodel(tmp_path / "model.caffemodel", state, net, v1=v1, legacy=legacy, double=double,
                           rpn_name=rpn_name)
    classes = None if num_classes == 21 else [f"thing{i}" for i in range(1, num_classes)]
    report = import_caffemodel(src, tmp_path / "imported", classes=classes, cfg=_cfg(net))
    assert report.net == net and report.net_inferred
    assert report.format == ("layers" if v1 else "layer")
    assert not report.missing_parts
    assert len(report.loaded) == 5 + 3 + 2 + 2
    imported, info = load_checkpoint(tmp_path / "imported.safetensors")
    assert info.net == net and info.stage == "caffe"
    assert info.class_names == ["__background__", *(classes or VOC_CLASSES)]
    assert info.extra["caffe_import"]["format"] == report.format
    for key, value in state.items():  # double data → float32: the same values
        torch.testing.assert_close(imported.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert isinstance(imported, FasterRCNN)
    _assert_same_detections(model, imported)
    if num_classes != 21:  # once per net: Caffe's forward pass in numpy on the file's own blobs
        assert_matches_caffe_forward(src, imported, net, rpn_name)
    assert_detects_like_caffe(src, imported, net, rpn_name)  # image → detections, every net and format


@pytest.fixture(scope="module")
def vgg16_model() -> FasterRCNN:
    return random_model("VGG16", 21, seed=5)


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "layers"])
def test_vgg16_import(vgg16_model: FasterRCNN, tmp_path: Path, v1: bool) -> None:
    start = time.perf_counter()
    src = write_caffemodel(tmp_path / "VGG16_faster_rcnn_final.caffemodel", _state(vgg16_model), "VGG16", v1=v1)
    report = import_caffemodel(src, tmp_path / "vgg16", cfg=_cfg("VGG16"))
    assert report.net == "VGG16" and len(report.loaded) == 13 + 3 + 2 + 2
    assert report.format == ("layers" if v1 else "layer")
    assert any("PASCAL VOC" in n for n in report.notes)
    imported, _ = load_checkpoint(tmp_path / "vgg16.safetensors")
    assert isinstance(imported, FasterRCNN)
    _assert_same_detections(vgg16_model, imported, seed=2)
    assert time.perf_counter() - start < 120.0  # about 15 s on 2 CPU cores: reading 550 MB stays fast
    assert_detects_like_caffe(src, imported, "VGG16", "rpn_conv/3x3")


def test_report_lists_every_layer(zf_file: Path, tmp_path: Path) -> None:
    report = import_caffemodel(zf_file, tmp_path / "zf", cfg=_cfg("ZF"))
    caffe = read_caffemodel(zf_file)
    reported = {c for c, _ in report.loaded} | {n for n, _, _ in report.ignored}
    assert reported == {layer.name for layer in caffe.layers}
    assert ("rpn_conv1", "rpn.conv") in report.loaded
    assert ("roi_pool5", "ROIPooling", "no weights") in report.ignored
    text = "\n".join(report.lines())
    assert "ZF (inferred" in text and "21 outputs" in text and "loaded 12 layers" in text


def test_net_option_unknown_layers_and_transposed_fc(zf_file: Path, zf_state: dict[str, torch.Tensor],
                                                      tmp_path: Path) -> None:
    fc8 = [torch.zeros(1000, 4096), torch.zeros(1000)]
    src = write_caffemodel(tmp_path / "m.caffemodel", zf_state, "ZF", extra=(("fc8", "InnerProduct", fc8),),
                           replace={"backbone.box_head.fc7.weight": zf_state["backbone.box_head.fc7.weight"].t()})
    proto = M.NetParameter()
    proto.ParseFromString(src.read_bytes())
    next(la for la in proto.layer if la.name == "fc7").inner_product_param.transpose = True  # stored (in, out)
    src.write_bytes(proto.SerializeToString())
    report = import_caffemodel(src, tmp_path / "zf", net="zf", cfg=_cfg("ZF"))
    assert report.net == "ZF" and not report.net_inferred
    assert ("fc8", "InnerProduct", "not a layer of ZF") in report.ignored
    assert any("fc7: InnerProduct stored transposed" in n for n in report.notes)
    imported, _ = load_checkpoint(tmp_path / "zf.safetensors")
    torch.testing.assert_close(imported.state_dict()["backbone.box_head.fc7.weight"],
                               zf_state["backbone.box_head.fc7.weight"], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"'conv3' weight: the file has shape \(384, 256, 3, 3\), "
                                              r"VGG_CNN_M_1024 expects \(512, 256, 3, 3\)"):
        import_caffemodel(zf_file, tmp_path / "x", net="VGG_CNN_M_1024")
    with pytest.raises(ConfigError, match="--net 'VGG19'"):
        import_caffemodel(zf_file, tmp_path / "x", net="VGG19")


def test_alt_opt_stage_rpn_model_imports_with_what_it_lacks(zf_model: FasterRCNN, zf_state: dict[str, torch.Tensor],
                                                            tmp_path: Path) -> None:
    src = write_caffemodel(tmp_path / "zf_rpn_stage1_iter_80000.caffemodel", zf_state, "ZF", rpn_name="rpn_conv1",
                           drop=("cls_score", "bbox_pred"))
    report = import_caffemodel(src, tmp_path / "rpn1", cfg=_cfg("ZF"))
    assert report.missing_parts == ("predictor",) and report.missing_layers == ("cls_score", "bbox_pred")
    assert any("no cls_score" in n for n in report.notes)
    assert "missing 2 layers (cls_score, bbox_pred)" in "\n".join(report.lines())
    imported, info = load_checkpoint(tmp_path / "rpn1.safetensors")
    assert info.extra["caffe_import"]["missing_parts"] == ["predictor"]
    blob, _, _ = _image(3)
    ours = zf_model.rpn_blobs(blob)
    for x, y in zip(imported.rpn_blobs(blob), ours, strict=True):  # the RPN part is the trained one
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    again = import_caffemodel(src, tmp_path / "rpn1b", cfg=_cfg("ZF"))  # the re-initialised part is seeded
    assert again.missing_parts == report.missing_parts
    first, second = load_tensors(tmp_path / "rpn1.safetensors"), load_tensors(tmp_path / "rpn1b.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# ------------------------------------------------------------------------------------------ classes


def test_parse_classes(tmp_path: Path) -> None:
    assert parse_classes("cat, dog ,bird") == ["cat", "dog", "bird"]
    names = tmp_path / "classes.txt"
    names.write_text("__background__\n# my classes\ncat\n\ndog\n", encoding="utf-8")
    assert parse_classes(str(names)) == ["cat", "dog"]
    assert parse_classes(None) is None
    with pytest.raises(ConfigError, match="repeat: cat"):
        parse_classes("cat,dog,cat")
    with pytest.raises(ConfigError, match="no such file"):
        parse_classes(str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="no class names"):
        parse_classes(" , ")
    with pytest.raises(ConfigError, match="can only come first"):
        parse_classes("cat,__background__")


def test_class_count_errors(zf_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--classes names 3 classes \(\+ background = 4 outputs\), but .* "
                                          r"cls_score has 21 outputs"):
        import_caffemodel(zf_file, tmp_path / "x", classes="a,b,c")
    state = _state(random_model("ZF", 6, seed=1))
    src = write_caffemodel(tmp_path / "six.caffemodel", state, "ZF", drop=HEADS[:5])
    with pytest.raises(ConfigError, match=r"cls_score has 6 outputs \(5 classes \+ background\); name the classes"):
        import_caffemodel(src, tmp_path / "x")
    bad = write_caffemodel(tmp_path / "bad.caffemodel", state, "ZF", drop=HEADS[:5],
                           replace={"predictor.bbox_pred.weight": torch.zeros(8, 4096),
                                    "predictor.bbox_pred.bias": torch.zeros(8)})
    with pytest.raises(CheckpointError, match=r"bbox_pred has 8 outputs, cls_score 6: expected 4 × 6 = 24"):
        import_caffemodel(bad, tmp_path / "x", classes="a,b,c,d,e")


# ------------------------------------------------------------------------------------------ broken files


@pytest.fixture(scope="module")
def convs_only(tmp_path_factory: pytest.TempPathFactory, zf_state: dict[str, torch.Tensor]) -> Path:
    """A small valid caffemodel: ZF's conv layers only (what the reader tests need)."""
    return write_caffemodel(tmp_path_factory.mktemp("convs") / "convs.caffemodel", zf_state, "ZF", drop=HEADS)


def test_truncated_file(convs_only: Path, tmp_path: Path) -> None:
    data = convs_only.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.caffemodel: truncated or corrupt caffemodel"):
        read_caffemodel(cut)


def test_garbage_and_other_files(tmp_path: Path) -> None:
    cases = {
        "garbage.caffemodel": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                               "truncated or corrupt"),
        "empty.caffemodel": (b"", "empty file"),
        "test.prototxt": (b'name: "ZF"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n', "a text file"),
        "model.pth": (b"PK\x03\x04" + bytes(100), "a zip archive"),
        "model.h5": (b"\x89HDF\r\n\x1a\n" + bytes(100), "an HDF5 file"),
        "w.safetensors": ((2).to_bytes(8, "little") + b"{}", "a safetensors file"),
        "other.pb": (M.NetParameter(name="just a name").SerializeToString(), "no layers"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=message):
            read_caffemodel(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_caffemodel(tmp_path / "nope.caffemodel")
    with pytest.raises(CheckpointError, match="over the 10-byte limit"):
        read_caffemodel(tmp_path / "test.prototxt", max_bytes=10)


def test_bad_blobs(tmp_path: Path) -> None:
    def one_layer(blob: Any) -> Path:
        proto = M.NetParameter()
        proto.layer.add(name="conv1", type="Convolution").blobs.append(blob)
        path = tmp_path / "m.caffemodel"
        path.write_bytes(proto.SerializeToString())
        return path

    short = M.BlobProto()
    short.shape.dim.extend([2, 3])
    short.data.extend([1.0] * 5)
    with pytest.raises(CheckpointError, match=r"layer 'conv1' blob 0: shape \(2, 3\) needs 6 values, the file "
                                              r"holds 5"):
        read_caffemodel(one_layer(short))
    shapeless = M.BlobProto()
    shapeless.data.extend([1.0])
    with pytest.raises(CheckpointError, match="no shape"):
        read_caffemodel(one_layer(shapeless))
    huge = M.BlobProto()
    huge.shape.dim.extend([2**20, 2**20])
    with pytest.raises(CheckpointError, match="over Caffe's limit"):
        read_caffemodel(one_layer(huge))
    nan = M.BlobProto()
    nan.shape.dim.extend([2])
    nan.data.extend([1.0, float("nan")])
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        read_caffemodel(one_layer(nan))
    both = M.NetParameter()
    both.layer.add(name="a")
    both.layers.add(name="b")
    (tmp_path / "both.caffemodel").write_bytes(both.SerializeToString())
    with pytest.raises(CheckpointError, match="both the 'layer' and the legacy 'layers'"):
        read_caffemodel(tmp_path / "both.caffemodel")


def test_missing_layers_and_shape_mismatch(zf_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    src = write_caffemodel(tmp_path / "m.caffemodel", zf_state, "ZF", drop=("conv4", *HEADS))
    with pytest.raises(CheckpointError, match=r"missing required layer 'conv4' of ZF's body"):
        import_caffemodel(src, tmp_path / "x")
    src = write_caffemodel(tmp_path / "m.caffemodel", zf_state, "ZF", drop=HEADS[2:])
    with pytest.raises(CheckpointError, match=r"missing required layer 'rpn_bbox_pred' of ZF's rpn \(the file has "
                                              r"rpn_conv/3x3, rpn_cls_score of that part\)"):
        import_caffemodel(src, tmp_path / "x")
    src = write_caffemodel(tmp_path / "m.caffemodel", zf_state, "ZF", drop=HEADS[3:])
    with pytest.raises(CheckpointError, match="missing required layer 'fc6' of ZF's box_head"):
        import_caffemodel(src, tmp_path / "x")
    wrong = {"rpn.cls_score.weight": torch.zeros(24, 256, 1, 1), "rpn.cls_score.bias": torch.zeros(24)}
    src = write_caffemodel(tmp_path / "m.caffemodel", zf_state, "ZF", replace=wrong, drop=HEADS[3:])
    with pytest.raises(CheckpointError, match=r"'rpn_cls_score' weight: the file has shape \(24, 256, 1, 1\), ZF "
                                              r"expects \(18, 256, 1, 1\)"):
        import_caffemodel(src, tmp_path / "x")
    src = write_caffemodel(tmp_path / "m.caffemodel", zf_state, "ZF", drop=("conv1", *HEADS))
    with pytest.raises(CheckpointError, match="not a py-faster-rcnn VGG16 / ZF / VGG_CNN_M_1024 model"):
        import_caffemodel(src, tmp_path / "x")


def test_one_weight_blob_and_ambiguous_names(zf_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    proto = M.NetParameter()
    src = write_caffemodel(tmp_path / "m.caffemodel", zf_state, "ZF", drop=HEADS)
    proto.ParseFromString(src.read_bytes())
    layer = next(la for la in proto.layer if la.name == "conv2")
    del layer.blobs[1]
    src.write_bytes(proto.SerializeToString())
    with pytest.raises(CheckpointError, match=r"layer 'conv2' \(Convolution\) has 1 blobs; ZF's body layers have 2"):
        import_caffemodel(src, tmp_path / "x")
    twin = (("rpn_conv1", "Convolution", [zf_state["rpn.conv.weight"], zf_state["rpn.conv.bias"]]),)
    src = write_caffemodel(tmp_path / "m.caffemodel", zf_state, "ZF", extra=twin, drop=HEADS[3:])
    with pytest.raises(CheckpointError, match="both 'rpn_conv/3x3' and 'rpn_conv1' carry weights"):
        import_caffemodel(src, tmp_path / "x")


# ------------------------------------------------------------------------------------------ CLI


def test_cli_import_caffe(zf_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["import", "caffe", str(zf_file), "--output", str(tmp_path / "zf.safetensors")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "network ZF" in res.output and "PASCAL VOC" in res.output and "next: frcnn-trt test" in res.output
    assert read_info(tmp_path / "zf.safetensors").net == "ZF"
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    res = runner.invoke(app, ["detect", str(tmp_path / "img.png"), "--weights", str(tmp_path / "zf.safetensors"),
                              "--device", "cpu", "-o", str(tmp_path / "run"), "--no-save-images"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (tmp_path / "run" / "predictions.json").is_file()
    res = runner.invoke(app, ["import", "caffe", str(zf_file), "-o", str(tmp_path / "y"), "--classes", "a,b"])
    assert res.exit_code == 1 and "error:" in res.output and "21 outputs" in res.output


# ------------------------------------------------------------------------------------------ numpy reference
# Caffe's forward pass written from its layer definitions (docs/REFERENCE.md §8), float64, loops where Caffe
# loops: the imported weights must give what Caffe would compute with them.


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Caffe Convolution: zero padding, output floor((H + 2p − k) / s) + 1."""
    c, h, wd = x.shape
    k = w.shape[2]
    xp = np.zeros((c, h + 2 * pad, wd + 2 * pad))
    xp[:, pad:pad + h, pad:pad + wd] = x
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.empty((w.shape[0], oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2]))
    return out + b[:, None, None]


def np_max_pool(x: np.ndarray, k: int, s: int, pad: int) -> np.ndarray:
    """Caffe MAX Pooling: ceil output size, last window dropped if it starts in the padding, pad never wins."""
    c, h, w = x.shape
    oh, ow = -(-(h + 2 * pad - k) // s) + 1, -(-(w + 2 * pad - k) // s) + 1
    if pad and (oh - 1) * s >= h + pad:
        oh -= 1
    if pad and (ow - 1) * s >= w + pad:
        ow -= 1
    out = np.empty((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * s - pad, j * s - pad
            win = x[:, max(h0, 0):min(h0 + k, h), max(w0, 0):min(w0 + k, w)]
            out[:, i, j] = win.max(axis=(1, 2))
    return out


def np_lrn_within(x: np.ndarray, n: int, alpha: float, beta: float) -> np.ndarray:
    """LRN WITHIN_CHANNEL: x / (1 + alpha · AVE-pool_n(x²))^beta, the pool's divisor n² (zero padding counted)."""
    c, h, w = x.shape
    p = (n - 1) // 2
    sq = np.zeros((c, h + 2 * p, w + 2 * p))
    sq[:, p:p + h, p:p + w] = x * x
    mean = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            mean[:, i, j] = sq[:, i:i + n, j:j + n].sum(axis=(1, 2)) / (n * n)
    return x / (1.0 + alpha * mean) ** beta


def np_lrn_across(x: np.ndarray, n: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """LRN ACROSS_CHANNELS: x / (k + alpha/n · Σ_{|c'−c| ≤ (n−1)/2} x_{c'}²)^beta."""
    c = x.shape[0]
    p = (n - 1) // 2
    scale = np.empty_like(x)
    for ch in range(c):
        scale[ch] = k + alpha / n * (x[max(ch - p, 0):min(ch + p + 1, c)] ** 2).sum(axis=0)
    return x * scale ** -beta


def np_roi_pool(feat: np.ndarray, rois: np.ndarray, pooled: int, scale: float) -> np.ndarray:
    """caffe-fast-rcnn ROIPooling: rounded corners, float32 bin size, [floor, ceil) bins, empty bin → 0."""
    c, h, w = feat.shape
    out = np.zeros((len(rois), c, pooled, pooled))
    for r, (_, x1, y1, x2, y2) in enumerate(rois):
        sw, sh, ew, eh = (int(np.sign(v) * np.floor(abs(v) * scale + 0.5)) for v in (x1, y1, x2, y2))
        bin_h = np.float32(max(eh - sh + 1, 1)) / np.float32(pooled)
        bin_w = np.float32(max(ew - sw + 1, 1)) / np.float32(pooled)
        for i in range(pooled):
            for j in range(pooled):
                hs = min(max(int(np.floor(np.float32(i) * bin_h)) + sh, 0), h)
                he = min(max(int(np.ceil(np.float32(i + 1) * bin_h)) + sh, 0), h)
                ws = min(max(int(np.floor(np.float32(j) * bin_w)) + sw, 0), w)
                we = min(max(int(np.ceil(np.float32(j + 1) * bin_w)) + sw, 0), w)
                if he > hs and we > ws:
                    out[r, :, i, j] = feat[:, hs:he, ws:we].max(axis=(1, 2))
    return out


def np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _body(net: str, caffe: dict[str, list[np.ndarray]], image: np.ndarray) -> np.ndarray:
    """The conv body of py-faster-rcnn's test prototxt: the conv5 (VGG16: conv5_3) map, stride 16."""
    def conv(name: str, x: np.ndarray, s: int = 1, p: int = 0) -> np.ndarray:
        return np.maximum(np_conv(x, caffe[name][0], caffe[name][1], s, p), 0.0)

    if net == "VGG16":
        x = image
        for c in VGG16_CONVS:
            x = conv(c, x, 1, 1)
            if c.endswith("_2" if c < "conv3" else "_3") and c < "conv5":
                x = np_max_pool(x, 2, 2, 0)
        return x
    if net == "ZF":
        x = np_max_pool(np_lrn_within(conv("conv1", image, 2, 3), 3, 5e-5, 0.75), 3, 2, 1)
        x = np_max_pool(np_lrn_within(conv("conv2", x, 2, 2), 3, 5e-5, 0.75), 3, 2, 1)
    else:
        x = np_max_pool(np_lrn_across(conv("conv1", image, 2, 0), 5, 5e-4, 0.75, 2.0), 3, 2, 0)
        x = np_max_pool(np_lrn_across(conv("conv2", x, 2, 1), 5, 5e-4, 0.75, 2.0), 3, 2, 0)
    return conv("conv5", conv("conv4", conv("conv3", x, 1, 1), 1, 1), 1, 1)


def ref_rpn(net: str, caffe: dict[str, list[np.ndarray]], image: np.ndarray,
            rpn_conv: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body and RPN head → (features, rpn_cls_prob_reshape (2A, H, W), rpn_bbox_pred (4A, H, W))."""
    feat = _body(net, caffe, image)
    r = np.maximum(np_conv(feat, *caffe[rpn_conv], 1, 1), 0.0)
    score = np_conv(r, *caffe["rpn_cls_score"], 1, 0)
    a, (h, w) = score.shape[0] // 2, score.shape[1:]
    prob = np_softmax(score.reshape(2, a * h, w), axis=0).reshape(2 * a, h, w)  # Reshape(0, 2, -1, 0) + Softmax
    return feat, prob, np_conv(r, *caffe["rpn_bbox_pred"], 1, 0)


def ref_head(net: str, caffe: dict[str, list[np.ndarray]], feat: np.ndarray,
             rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RoI pooling and the box head → (cls_prob, bbox_pred); ZF's dropout has scale_train: false → × 0.5 at
    test, VGG16's and VGG_CNN_M_1024's scale at training time → × 1."""
    pooled, dropout_test = (7, 1.0) if net == "VGG16" else (6, 0.5 if net == "ZF" else 1.0)
    fc = np_roi_pool(feat, rois, pooled, 1.0 / 16).reshape(len(rois), -1)
    for name in ("fc6", "fc7"):
        fc = np.maximum(fc @ caffe[name][0].T + caffe[name][1], 0.0) * dropout_test
    return (np_softmax(fc @ caffe["cls_score"][0].T + caffe["cls_score"][1], axis=1),
            fc @ caffe["bbox_pred"][0].T + caffe["bbox_pred"][1])


def caffe_reference(net: str, caffe: dict[str, list[np.ndarray]], image: np.ndarray, rois: np.ndarray,
                    rpn_conv: str) -> dict[str, np.ndarray]:
    """py-faster-rcnn's test net up to the proposal layer, and its head on given RoIs."""
    feat, prob, deltas = ref_rpn(net, caffe, image, rpn_conv)
    cls_prob, bbox_pred = ref_head(net, caffe, feat, rois)
    return {"features": feat, "rpn_cls_prob": prob, "rpn_bbox_pred": deltas, "cls_prob": cls_prob,
            "bbox_pred": bbox_pred}


def np_bbox_transform_inv(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """lib/fast_rcnn/bbox_transform.py: +1 widths, x2 = ctr + 0.5 · w (no −1), in the deltas' dtype."""
    boxes = boxes.astype(deltas.dtype)
    widths, heights = boxes[:, 2] - boxes[:, 0] + 1.0, boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    cx = deltas[:, 0::4] * widths[:, None] + ctr_x[:, None]
    cy = deltas[:, 1::4] * heights[:, None] + ctr_y[:, None]
    w, h = np.exp(deltas[:, 2::4]) * widths[:, None], np.exp(deltas[:, 3::4]) * heights[:, None]
    out = np.empty_like(deltas)
    out[:, 0::4], out[:, 1::4], out[:, 2::4], out[:, 3::4] = cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h
    return out


def np_clip(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width - 1)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height - 1)
    return out


def np_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """gpu_nms in float32: descending score (ties by index), +1 areas, IoU **>** thresh suppressed."""
    b, t = boxes.astype(np.float32), np.float32(thresh)
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    keep: list[int] = []
    for i in np.argsort(-scores.astype(np.float32), kind="stable"):
        for j in keep:
            iw = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + 1)
            ih = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + 1)
            inter = iw * ih
            if inter / (area[i] + area[j] - inter) > t:
                break
        else:
            keep.append(int(i))
    return keep


def np_proposals(prob: np.ndarray, deltas: np.ndarray, im_info: tuple[float, float, float], *, pre: int = 6000,
                 post: int = 300, nms: float = 0.7, min_size: float = 16.0) -> np.ndarray:
    """py-faster-rcnn's ProposalLayer at TEST (docs/REFERENCE.md §5), float32 → rois [R, 4] (blob pixels)."""
    a, h, w = prob.shape[0] // 2, prob.shape[1], prob.shape[2]
    base = generate_anchors().numpy().astype(np.float32)  # not under test
    sx, sy = np.meshgrid(np.arange(w) * 16, np.arange(h) * 16)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1).astype(np.float32)
    anchors = (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)  # (position, anchor) order
    scores = prob[a:].astype(np.float32).transpose(1, 2, 0).reshape(-1)
    boxes = np_clip(np_bbox_transform_inv(anchors, deltas.astype(np.float32).transpose(1, 2, 0).reshape(-1, 4)),
                    im_info[0], im_info[1])
    ok = np.where((boxes[:, 2] - boxes[:, 0] + 1 >= min_size * im_info[2])
                  & (boxes[:, 3] - boxes[:, 1] + 1 >= min_size * im_info[2]))[0]
    order = ok[np.argsort(-scores[ok], kind="stable")][:pre]
    keep = np_nms(boxes[order], scores[order], nms)[:post]
    return boxes[order[keep]]


def np_detections(scores: np.ndarray, boxes: np.ndarray, *, thresh: float = 0.05, nms: float = 0.3,
                  max_per_image: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """test_net's loop (docs/REFERENCE.md §11): per class ≥ 1 (boxes, scores), score > thresh, NMS, then the
    scores ≥ the max_per_image-th largest over all classes."""
    dets = []
    for j in range(1, scores.shape[1]):
        inds = np.where(scores[:, j] > thresh)[0]
        cls_boxes, cls_scores = boxes[inds, 4 * j:4 * j + 4], scores[inds, j]
        keep = np_nms(cls_boxes, cls_scores, nms)
        dets.append((cls_boxes[keep], cls_scores[keep]))
    every = np.concatenate([s for _, s in dets])
    if len(every) > max_per_image:
        cut = np.sort(every)[-max_per_image]
        dets = [(b[s >= cut], s[s >= cut]) for b, s in dets]
    return dets


def np_detect(net: str, caffe: dict[str, list[np.ndarray]], image: np.ndarray,
              rpn_conv: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Image (H × W × 3 uint8 BGR, im_scale 1) → per-class detections, the whole test pipeline in numpy."""
    blob = (image.astype(np.float64) - np.asarray(C.Config().PIXEL_MEANS)).astype(np.float32)
    feat, prob, deltas = ref_rpn(net, caffe, blob.transpose(2, 0, 1).astype(np.float64), rpn_conv)
    height, width = image.shape[:2]
    rois = np_proposals(prob, deltas, (height, width, 1.0))
    cls_prob, bbox_pred = ref_head(net, caffe, feat, np.concatenate([np.zeros((len(rois), 1)), rois], axis=1))
    boxes = np_clip(np_bbox_transform_inv(rois.astype(np.float64), bbox_pred), height, width)
    return np_detections(cls_prob, boxes)


def _caffe_blobs(src: Path) -> dict[str, list[np.ndarray]]:
    """The caffemodel's own blobs, float64: conv weights (out, in, kh, kw), InnerProduct (out, in), biases (n,)."""
    return {la.name: [la.blobs[0].double().numpy().reshape(la.blobs[1].numel(), *(
        la.blobs[0].shape[-3:] if la.type == "Convolution" else (-1,))), la.blobs[1].double().numpy().reshape(-1)]
        for la in read_caffemodel(src).layers if la.blobs}  # legacy (1, 1, out, in) InnerProduct shapes → (out, in)


def assert_matches_caffe_forward(src: Path, imported: FasterRCNN, net: str, rpn_conv: str) -> None:
    """The imported model's blobs equal :func:`caffe_reference` run on the caffemodel's own blobs."""
    caffe = _caffe_blobs(src)
    blob, _, _ = _image(4, 112, 144)
    # blob pixels: fractional corners (rounding), one reaching past the map (clipped, empty bins), a tiny one
    rois = np.array([[0, 8.4, 7.5, 100.2, 90.0], [0, 40.0, 24.0, 143.0, 111.0], [0, 100.0, 60.0, 300.0, 200.0],
                     [0, 20.0, 30.0, 27.0, 33.0]])
    ref = caffe_reference(net, caffe, blob[0].double().numpy(), rois, rpn_conv)
    with torch.no_grad():
        features, prob, deltas = imported.rpn_blobs(blob)
        cls_prob, bbox_pred = imported.detector(features, torch.tensor(rois, dtype=torch.float32))
    got = {"features": features[0], "rpn_cls_prob": prob[0], "rpn_bbox_pred": deltas[0], "cls_prob": cls_prob,
           "bbox_pred": bbox_pred}
    for name, value in got.items():
        want = ref[name]
        assert tuple(value.shape) == want.shape, name
        err = np.abs(value.double().numpy() - want).max() / max(np.abs(want).max(), 1e-6)
        assert err < 1e-4, f"{name}: relative error {err:.2e}"
    assert 0.05 < ref["cls_prob"].max() < 0.999 and ref["rpn_cls_prob"].std() > 0.05  # not saturated, not flat


def _uint8_image(seed: int, height: int = 64, width: int = 80) -> np.ndarray:
    """A smooth random H × W × 3 uint8 BGR image."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8, width // 8, generator=gen) * 255.0
    img = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return img[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def assert_detects_like_caffe(src: Path, imported: FasterRCNN, net: str, rpn_conv: str, seed: int = 6) -> None:
    """End to end: ``inference.im_detect`` + ``detections_from_scores`` on the imported checkpoint give
    :func:`np_detect`'s detections (same count per class; scores and boxes within float32 tolerance)."""
    image = _uint8_image(seed)
    want = np_detect(net, _caffe_blobs(src), image, rpn_conv)
    with torch.no_grad():  # scale = the short side: im_scale 1, the blob is the image minus the means
        scores, boxes = im_detect(imported, image, pixel_means=C.Config().PIXEL_MEANS, scale=64, max_size=80)
        got_boxes, got_scores, labels = detections_from_scores(scores, boxes)
    assert sum(len(s) for _, s in want) >= 5  # enough detections, over several classes, to mean something
    assert len({j for j, (_, s) in enumerate(want) if len(s)}) >= 2
    for j, (ref_boxes, ref_scores) in enumerate(want, start=1):
        mine = labels == j
        count = int(mine.sum())
        assert count == len(ref_scores), f"class {j}: {count} detections, the reference {len(ref_scores)}"
        np.testing.assert_allclose(got_scores[mine].double().numpy(), ref_scores, rtol=1e-4, atol=1e-6,
                                   err_msg=f"class {j} scores")
        np.testing.assert_allclose(got_boxes[mine].double().numpy(), ref_boxes, rtol=0, atol=2e-2,
                                   err_msg=f"class {j} boxes")
