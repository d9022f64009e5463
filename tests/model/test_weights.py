"""Weight loading: torchvision VGG16 / ResNet-50 layouts with the RGB→BGR fold, own and Caffe-named files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import Tensor, nn

from frcnn_trt.errors import CheckpointError
from frcnn_trt.model.backbones import Backbone, build_network
from frcnn_trt.model.weights import (
    IMAGENET_RGB_MEAN,
    IMAGENET_RGB_STD,
    load_weights,
    read_state_dict,
    save_weights,
)

# PIXEL_MEANS that make the torchvision mean offset zero: 255 · ImageNet mean, BGR order.
TV_MEANS_BGR = tuple(255 * m for m in reversed(IMAGENET_RGB_MEAN))


def _empty(name: str) -> Backbone:
    """A network with allocated but uninitialised weights (fast): every test loads all of them."""
    with torch.device("meta"):
        net = build_network(name)
    return net.to_empty(device="cpu").eval()


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Random weights, rounded to fp16 values so a file stored in fp16 holds exactly the module's values."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if t.dim() == 4:  # conv: He scale keeps activations finite through 13 layers
                t.normal_(0.0, (2.0 / t[0].numel()) ** 0.5, generator=gen)
            elif t.dim() == 2:
                t.uniform_(-0.01, 0.01, generator=gen)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0, generator=gen)
            else:
                t.normal_(0.0, 0.1, generator=gen)
            t.copy_(t.half().float())


def _inputs(gen: torch.Generator, h: int, w: int, pixel_means: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """The same 0–255 BGR image as our blob (minus means) and as torchvision's normalised RGB input."""
    bgr = torch.rand(1, 3, h, w, generator=gen) * 255
    ours = bgr - torch.tensor(pixel_means).view(1, 3, 1, 1)
    rgb = bgr.flip(1) / 255
    tv = (rgb - torch.tensor(IMAGENET_RGB_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_RGB_STD).view(1, 3, 1, 1)
    return ours, tv


@pytest.fixture(scope="module")
def fast_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch folder in memory (/dev/shm) where there is one: the VGG16 file is a quarter of a GB."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="frcnn-test-") as d:
            yield Path(d)
    else:
        yield tmp_path_factory.mktemp("weights")


def _save_half(module: nn.Module, path: Path) -> None:
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def tv_vgg16(fast_tmp: Path) -> tuple[nn.Module, Path]:
    """torchvision's VGG16 (weights=None) with random weights, saved in its own layout (fp16 file)."""
    with torch.device("meta"):
        tv = torchvision.models.vgg16(weights=None)
    tv = tv.to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in range(31):
            if isinstance(tv.features[i], nn.Conv2d):
                _randomise(tv.features[i], gen)
        fc6 = tv.classifier[0]
        fc6.weight.zero_()  # 102M values: a random sparse pattern keeps this fast but still checks the mapping
        idx = torch.randint(0, fc6.weight.numel(), (200_000,), generator=gen)
        fc6.weight.view(-1)[idx] = (torch.randn(idx.numel(), generator=gen) * 0.05).half().float()
        fc6.bias.copy_(torch.randn(fc6.bias.shape, generator=gen).half().float())
        _randomise(tv.classifier[3], gen)
        _randomise(tv.classifier[6], gen)
    path = fast_tmp / "vgg16_torchvision.safetensors"
    _save_half(tv, path)
    return tv, path


@pytest.fixture(scope="module")
def ours_vgg16() -> Backbone:
    """One allocation for the VGG16 tests: each test loads every tensor it uses."""
    return _empty("VGG16")


def test_torchvision_vgg16_conv_body_equivalent(tv_vgg16: tuple[nn.Module, Path], ours_vgg16: Backbone) -> None:
    tv, path = tv_vgg16
    ours = ours_vgg16
    report = load_weights(ours, path, pixel_means=TV_MEANS_BGR)
    assert report.layout == "torchvision" and report.network == "VGG16"
    assert len(report.loaded) == 13 * 2 + 4 and report.missing == ()
    assert sorted(report.ignored) == ["classifier.6.bias", "classifier.6.weight"]
    assert any("RGB→BGR" in n for n in report.notes)
    assert "30 tensors loaded into VGG16" in report.summary()

    x_ours, x_tv = _inputs(torch.Generator().manual_seed(1), 48, 64, TV_MEANS_BGR)
    with torch.no_grad():
        # Up to relu5_3 (torchvision's pool5 is not in the body). Sizes divisible by 16: torchvision pools
        # in floor mode, Caffe (ours) in ceil mode.
        expected = tv.features[:30](x_tv)
        got = ours(x_ours)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        pooled = torch.randn(2, 512, 7, 7)
        torch.testing.assert_close(
            ours.box_head(pooled),
            tv.classifier[:5](torch.flatten(tv.avgpool(pooled), 1)),
            rtol=1e-4,
            atol=1e-5,
        )


def test_torchvision_vgg16_default_means_exact_away_from_border(
    tv_vgg16: tuple[nn.Module, Path], ours_vgg16: Backbone
) -> None:
    tv, path = tv_vgg16
    ours = ours_vgg16
    means = (102.9801, 115.9465, 122.7717)
    load_weights(ours, path, pixel_means=means)
    x_ours, x_tv = _inputs(torch.Generator().manual_seed(2), 20, 24, means)
    with torch.no_grad():
        got, expected = ours.body.conv1_1(x_ours), tv.features[0](x_tv)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    border_diff = (got - expected).abs().amax()
    assert border_diff > 1e-3  # the padding colour differs at the border, as documented


def test_torchvision_resnet50_c4_equivalent(fast_tmp: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None)
    tv = tv.to_empty(device="cpu").eval()
    _randomise(tv, gen)
    with torch.no_grad():
        for name, t in tv.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
    path = fast_tmp / "resnet50.pth"
    torch.save(tv.state_dict(), path)

    ours = _empty("ResNet50_C4")
    report = load_weights(ours, path, pixel_means=TV_MEANS_BGR)
    assert report.layout == "torchvision"
    assert {"fc.weight", "fc.bias", "bn1.num_batches_tracked"} <= set(report.ignored)
    assert all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in report.ignored)

    x_ours, x_tv = _inputs(gen, 48, 64, TV_MEANS_BGR)
    with torch.no_grad():
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x_tv))))
        expected = tv.layer3(tv.layer2(tv.layer1(t)))
        got = ours(x_ours)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        pooled = torch.randn(1, 1024, 14, 14, generator=gen)
        head_ref = torch.flatten(tv.avgpool(tv.layer4(pooled)), 1)
        torch.testing.assert_close(ours.box_head(pooled), head_ref, rtol=1e-4, atol=1e-5)


def test_own_checkpoint_roundtrip_and_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = build_network("tiny")
    path = tmp_path / "tiny.safetensors"
    save_weights(src, path)
    dst = _empty("tiny")
    report = load_weights(dst, path)
    assert report.layout == "frcnn" and report.ignored == () and len(report.loaded) == len(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)

    # A whole-model checkpoint: backbone under a prefix, other heads ignored; .pth container with "model".
    full = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    full["rpn.conv.weight"] = torch.zeros(128, 128, 3, 3)
    pth = tmp_path / "model.pth"
    torch.save({"model": full, "iteration": 5}, pth)
    dst = _empty("tiny")
    report = load_weights(dst, pth)
    assert report.layout == "frcnn" and report.ignored == ("rpn.conv.weight",)
    assert torch.equal(dst.body.conv5.weight, src.body.conv5.weight)


def test_caffe_names_non_strict(tmp_path: Path) -> None:
    # A converted ImageNet caffemodel uses Caffe layer names; here only the conv part of ZF is in the file.
    gen = torch.Generator().manual_seed(4)
    zf = _empty("ZF")
    flat = {k: torch.randn(v.shape, generator=gen) for k, v in zf.body.state_dict().items()}  # conv1.weight…
    path = tmp_path / "ZF.v2.safetensors"
    save_file(flat, str(path))
    with pytest.raises(CheckpointError, match=r"ZF\.v2\.safetensors: not a weights file for ZF.*missing 'fc6"):
        load_weights(zf, path)
    report = load_weights(zf, path, strict=False)
    assert report.layout == "caffe"
    assert set(report.missing) == {f"box_head.fc{i}.{p}" for i in (6, 7) for p in ("weight", "bias")}
    assert torch.equal(zf.body.conv3.weight, flat["conv3.weight"])


def test_wrong_network_files(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(5)
    zf = _empty("ZF")
    zf_body = {f"body.{k}": torch.randn(v.shape, generator=gen) for k, v in zf.body.state_dict().items()}
    path = tmp_path / "zf_conv.safetensors"
    save_file(zf_body, str(path))  # no network metadata: detection must come from keys and shapes
    with pytest.raises(CheckpointError) as err:
        load_weights(_empty("VGG_CNN_M_1024"), path, strict=False)
    msg = str(err.value)
    assert str(path) in msg and "VGG_CNN_M_1024" in msg
    assert "'body.conv3.weight' has shape (384, 256, 3, 3), expected (512, 256, 3, 3)" in msg

    tiny_path = tmp_path / "tiny.safetensors"
    save_weights(build_network("tiny"), tiny_path)
    with pytest.raises(CheckpointError, match=r"weights of network 'tiny', expected 'ZF'"):
        load_weights(_empty("ZF"), tiny_path)
    with pytest.raises(CheckpointError, match=r"not a weights file for VGG16: none of its keys match"):
        load_weights(_empty("VGG16"), path)
    with pytest.raises(CheckpointError, match="torchvision layout exists for VGG16 and ResNet50_C4 only"):
        load_weights(_empty("ZF"), path, layout="torchvision")
    with pytest.raises(CheckpointError, match="unknown weights layout"):
        load_weights(_empty("ZF"), path, layout="onnx")


class _NotATensor:
    pass


def test_read_state_dict_refuses_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    bad_suffix = tmp_path / "w.pkl"
    bad_suffix.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unsupported weights file type '\.pkl'"):
        read_state_dict(bad_suffix)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"w": torch.zeros(2), "obj": _NotATensor()}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.pth: refusing to load.*Unsupported global.*_NotATensor"):
        read_state_dict(unsafe)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match=r"corrupt\.safetensors: weights file header is not valid JSON"):
        read_state_dict(corrupt)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a zip or pickle")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: weights file is not a torch file"):
        read_state_dict(garbage)
    lone = tmp_path / "lone.pt"
    torch.save(torch.zeros(3), lone)
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        read_state_dict(lone)
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {"a": torch.ones(1)}, "epoch": 3}, nested)
    assert list(read_state_dict(nested)) == ["a"]
