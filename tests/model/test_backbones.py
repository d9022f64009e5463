"""Networks: Caffe sizes, parameter counts, frozen lists, Caffe LRN / dropout / pooling vs loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from frcnn_trt.errors import ConfigError
from frcnn_trt.model.backbones import (
    Backbone,
    CaffeDropout,
    WithinChannelLRN,
    build_network,
    network_names,
)

# ---------------------------------------------------------------------------------------- Caffe shape maths


def caffe_conv(h: int, k: int, s: int = 1, p: int = 0) -> int:
    return (h + 2 * p - k) // s + 1


def caffe_pool(h: int, k: int, s: int, p: int = 0) -> int:
    """``PoolingLayer::Reshape``: ceil, then drop a last window that would start in the padding."""
    out = math.ceil((h + 2 * p - k) / s) + 1
    if p and (out - 1) * s >= h + p:
        out -= 1
    return out


# layer lists from the prototxts (conv: k, s, p; pool: k, s, p)
CAFFE_LAYERS = {
    "VGG16": [("conv", 3, 1, 1)] * 2
    + [("pool", 2, 2, 0)]
    + [("conv", 3, 1, 1)] * 2
    + [("pool", 2, 2, 0)]
    + ([("conv", 3, 1, 1)] * 3 + [("pool", 2, 2, 0)]) * 2
    + [("conv", 3, 1, 1)] * 3,
    "ZF": [("conv", 7, 2, 3), ("pool", 3, 2, 1), ("conv", 5, 2, 2), ("pool", 3, 2, 1)] + [("conv", 3, 1, 1)] * 3,
    "VGG_CNN_M_1024": [("conv", 7, 2, 0), ("pool", 3, 2, 0), ("conv", 5, 2, 1), ("pool", 3, 2, 0)]
    + [("conv", 3, 1, 1)] * 3,
}


def caffe_feature_size(net: str, h: int, w: int) -> tuple[int, int]:
    for kind, k, s, p in CAFFE_LAYERS[net]:
        f = caffe_conv if kind == "conv" else caffe_pool
        h, w = f(h, k, s, p), f(w, k, s, p)
    return h, w


@pytest.fixture(scope="module")
def meta_nets() -> dict[str, Backbone]:
    with torch.device("meta"):
        return {name: build_network(name) for name in network_names()}


def test_vgg16_600x1000_is_38x63(meta_nets: dict[str, Backbone]) -> None:
    # docs/REFERENCE.md §5: proposal_rpn_generate runs on a 38×63 map for a 600×1000 blob.
    assert meta_nets["VGG16"].feature_size(600, 1000) == (38, 63)
    assert meta_nets["VGG16"].feature_size(600, 800) == (38, 50)  # the 38×50 proposal_test case


@pytest.mark.parametrize("net", ["VGG16", "ZF", "VGG_CNN_M_1024"])
@pytest.mark.parametrize("size", [(600, 1000), (600, 901), (562, 1000), (375, 500), (101, 77), (64, 64)])
def test_feature_sizes_match_caffe(meta_nets: dict[str, Backbone], net: str, size: tuple[int, int]) -> None:
    assert meta_nets[net].feature_size(*size) == caffe_feature_size(net, *size)


def test_feature_sizes_other_nets(meta_nets: dict[str, Backbone]) -> None:
    assert meta_nets["ZF"].feature_size(600, 1000) == (39, 64)
    assert meta_nets["VGG_CNN_M_1024"].feature_size(600, 1000) == (36, 61)
    assert meta_nets["tiny"].feature_size(600, 1000) == (38, 63)  # ceil(x / 16)
    assert meta_nets["tiny"].feature_size(127, 129) == (8, 9)
    assert meta_nets["ResNet50_C4"].feature_size(600, 1000) == (38, 63)


@pytest.mark.parametrize(("kernel", "stride", "pad"), [(2, 2, 0), (3, 2, 1), (3, 2, 0)])  # VGG16, ZF, VGG_CNN_M
def test_caffe_max_pool_matches_loop_reference(kernel: int, stride: int, pad: int) -> None:
    pool = nn.MaxPool2d(kernel, stride, pad, ceil_mode=True)
    gen = torch.Generator().manual_seed(0)
    for h in (5, 6, 7, 8, 75, 76):
        x = torch.randn(1, 2, h, h + 1, generator=gen)
        out = pool(x).numpy()
        oh, ow = caffe_pool(h, kernel, stride, pad), caffe_pool(h + 1, kernel, stride, pad)
        assert out.shape == (1, 2, oh, ow)
        ref = np.empty((2, oh, ow))
        for i in range(oh):
            for j in range(ow):
                hs, ws = i * stride - pad, j * stride - pad
                he, we = min(hs + kernel, h), min(ws + kernel, h + 1)
                ref[:, i, j] = x[0, :, max(hs, 0) : he, max(ws, 0) : we].amax(dim=(1, 2)).numpy()
        np.testing.assert_array_equal(out[0], ref)


# ---------------------------------------------------------------------------------------- sizes and counts


def test_parameter_counts(meta_nets: dict[str, Backbone]) -> None:
    vgg = meta_nets["VGG16"]
    assert sum(p.numel() for p in vgg.body.parameters()) == 14_714_688
    assert vgg.box_head.fc6.weight.shape == (4096, 25088)
    assert vgg.box_head.fc7.weight.shape == (4096, 4096)
    assert meta_nets["ZF"].box_head.fc6.weight.shape == (4096, 256 * 6 * 6)
    assert meta_nets["VGG_CNN_M_1024"].box_head.fc6.weight.shape == (4096, 512 * 6 * 6)
    assert meta_nets["VGG_CNN_M_1024"].box_head.fc7.weight.shape == (1024, 4096)
    tiny = sum(p.numel() for p in meta_nets["tiny"].parameters())
    assert tiny < 3_000_000
    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None)
    tv_convs = sum(m.weight.numel() for m in tv.modules() if isinstance(m, nn.Conv2d))
    assert sum(p.numel() for p in meta_nets["ResNet50_C4"].parameters()) == tv_convs


@pytest.mark.parametrize(
    ("net", "meta"),
    [
        ("VGG16", (512, 512, 7, 4096)),
        ("ZF", (256, 256, 6, 4096)),
        ("VGG_CNN_M_1024", (512, 256, 6, 1024)),
        ("tiny", (128, 128, 7, 256)),
        ("ResNet50_C4", (1024, 1024, 14, 2048)),
    ],
)
def test_metadata(meta_nets: dict[str, Backbone], net: str, meta: tuple[int, int, int, int]) -> None:
    b = meta_nets[net]
    assert (b.out_channels, b.rpn_channels, b.pooled_size, b.fc_dim) == meta
    assert b.feat_stride == 16 and b.name == net


def test_frozen_lists_and_groups(meta_nets: dict[str, Backbone]) -> None:
    frozen = {n: [name for name, _ in b.frozen_parameters()] for n, b in meta_nets.items()}
    assert frozen["VGG16"] == [f"body.conv{b}_{i}.{p}" for b in (1, 2) for i in (1, 2) for p in ("weight", "bias")]
    assert frozen["VGG_CNN_M_1024"] == ["body.conv1.weight", "body.conv1.bias"]
    assert frozen["ZF"] == [] and frozen["tiny"] == []
    assert frozen["ResNet50_C4"][0] == "body.conv1.weight"
    assert all(n == "body.conv1.weight" or n.startswith("body.layer1.") for n in frozen["ResNet50_C4"])
    # all BN of the ResNet are frozen (buffers, not parameters)
    assert not any("bn" in n for n, _ in meta_nets["ResNet50_C4"].named_parameters())

    groups = meta_nets["VGG16"].param_groups()
    assert [n for n, _ in groups["conv"]][:2] == ["body.conv3_1.weight", "body.conv3_1.bias"]
    assert len(groups["conv"]) == 2 * 9
    assert [n for n, _ in groups["fc"]] == [f"box_head.fc{i}.{p}" for i in (6, 7) for p in ("weight", "bias")]
    res_groups = meta_nets["ResNet50_C4"].param_groups()
    assert res_groups["conv"][0][0].startswith("body.layer2.")
    assert all(n.startswith("box_head.layer4.") for n, _ in res_groups["fc"])
    every = {n for n, _ in meta_nets["ZF"].named_parameters()}
    assert {n for g in meta_nets["ZF"].param_groups().values() for n, _ in g} == every


def test_freeze_frozen() -> None:
    with torch.device("meta"):
        vgg = build_network("vgg16")
    names = vgg.freeze_frozen()
    assert len(names) == 8
    assert not vgg.body.conv1_1.weight.requires_grad
    assert vgg.body.conv3_1.weight.requires_grad


def test_build_network_names_and_errors() -> None:
    with torch.device("meta"):
        assert build_network("zf").name == "ZF"
        assert build_network("vgg_cnn_m_1024").name == "VGG_CNN_M_1024"
    with pytest.raises(ConfigError, match=r"did you mean 'VGG16'"):
        build_network("VGG-16")
    with pytest.raises(ConfigError, match=r"did you mean 'ResNet50_C4'"):
        build_network("resnet50")
    with pytest.raises(ConfigError, match="unknown network 'alexnet'"):
        build_network("alexnet")


def test_resnet_build_downloads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with torch.device("meta"):
        net = build_network("ResNet50_C4")
    assert isinstance(net.body.bn1, torchvision.ops.misc.FrozenBatchNorm2d)


# ---------------------------------------------------------------------------------------- forward passes


@pytest.mark.parametrize("net", ["VGG16", "ZF", "VGG_CNN_M_1024", "tiny", "ResNet50_C4"])
def test_forward_shapes(net: str) -> None:
    with torch.device("meta"):
        backbone = build_network(net)
    backbone.to_empty(device="cpu")
    with torch.no_grad():  # values only need to be finite: cheap fills, zeros for the huge fc6
        for name, t in backbone.state_dict().items():
            if name.endswith("running_var"):
                t.fill_(1.0)
            elif t.numel() > 5_000_000:
                t.zero_()
            else:
                t.normal_(0.0, 0.01)
    backbone.eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        feats = backbone(x)
        assert tuple(feats.shape) == (1, backbone.out_channels, *backbone.feature_size(70, 90))
        p = backbone.pooled_size
        out = backbone.box_head(torch.randn(2, backbone.out_channels, p, p))
    assert tuple(out.shape) == (2, backbone.fc_dim)
    assert torch.isfinite(feats).all() and torch.isfinite(out).all()


def test_tiny_trains_from_unit_scale() -> None:
    torch.manual_seed(0)
    tiny = build_network("tiny")
    image = torch.rand(2, 3, 128, 160) * 255 - 120  # a mean-subtracted 0–255 blob
    feats = tiny(image)
    assert feats.shape == (2, 128, 8, 10)
    assert 0.05 < feats.std().item() < 20  # input scaling keeps He init near unit scale
    pooled = torch.randn(4, 128, 7, 7, requires_grad=True)
    (feats.mean() + tiny.box_head(pooled).mean()).backward()
    assert all(p.grad is not None for p in tiny.parameters())


# ---------------------------------------------------------------------------------------- Caffe layers


def _within_channel_ref(x: np.ndarray, size: int, alpha: float, beta: float) -> np.ndarray:
    _, _, h, w = x.shape
    pad = (size - 1) // 2
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            win = x[:, :, max(i - pad, 0) : i + pad + 1, max(j - pad, 0) : j + pad + 1]
            mean_sq = (win**2).sum(axis=(2, 3)) / size**2  # Caffe AVE pool: divisor k² (padding counted)
            out[:, :, i, j] = x[:, :, i, j] / (1 + alpha * mean_sq) ** beta
    return out


def _across_channel_ref(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    _, c, _, _ = x.shape
    pre = (size - 1) // 2
    out = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(ch - pre, 0), min(ch + pre + 1, c)
        scale = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
        out[:, ch] = x[:, ch] * scale ** (-beta)
    return out


def test_within_channel_lrn_matches_caffe_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64) * 300)
    ours = WithinChannelLRN(3, 5e-5, 0.75)(x).numpy()  # ZF's parameters; activations of a few hundred
    ref = _within_channel_ref(x.numpy(), 3, 5e-5, 0.75)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert np.abs(ours - x.numpy()).max() > 1.0  # the normalisation is not a no-op at this scale
    np.testing.assert_allclose(
        WithinChannelLRN(5, 1e-2, 0.5)(x / 30).numpy(),
        _within_channel_ref(x.numpy() / 30, 5, 1e-2, 0.5),
        rtol=1e-12,
    )
    with pytest.raises(ConfigError):
        WithinChannelLRN(4, 1e-4, 0.75)


def test_across_channel_lrn_matches_caffe_loop() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.relu(torch.randn(2, 9, 5, 6, generator=gen, dtype=torch.float64) * 100)
    with torch.device("meta"):
        norm = build_network("VGG_CNN_M_1024").body.norm1
    assert isinstance(norm, nn.LocalResponseNorm)
    ours = nn.LocalResponseNorm(norm.size, norm.alpha, norm.beta, norm.k)(x).numpy()
    ref = _across_channel_ref(x.numpy(), 5, 5e-4, 0.75, 2.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert np.abs(ours / x.numpy().clip(1e-9) - 1).max() > 0.3


def test_zf_dropout_has_no_train_scaling() -> None:
    with torch.device("meta"):
        zf, vgg = build_network("ZF"), build_network("VGG16")
    assert isinstance(zf.box_head.drop6, CaffeDropout) and not zf.box_head.drop6.scale_train
    assert isinstance(vgg.box_head.drop7, CaffeDropout) and vgg.box_head.drop7.scale_train

    x = torch.full((200, 50), 3.0)
    zf_drop, vgg_drop = CaffeDropout(0.5, scale_train=False), CaffeDropout(0.5)
    torch.manual_seed(0)
    y = zf_drop.train()(x)
    assert set(y.unique().tolist()) == {0.0, 3.0}
    assert 0.45 < (y == 0).float().mean().item() < 0.55
    assert torch.equal(zf_drop.eval()(x), torch.full_like(x, 1.5))  # ×(1 − p) at test
    y = vgg_drop.train()(x)
    assert set(y.unique().tolist()) == {0.0, 6.0}
    assert torch.equal(vgg_drop.eval()(x), x)
    with pytest.raises(ConfigError):
        CaffeDropout(1.0)
