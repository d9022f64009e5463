"""The networks under the RPN and Fast R-CNN heads: a stride-16 conv body and a per-RoI box head.

py-faster-rcnn's three nets (``models/pascal_voc/{VGG16,ZF,VGG_CNN_M_1024}`` prototxts), layer for layer,
with Caffe's layer names, plus a small CPU net (``tiny``) and a torchvision ResNet-50 in the C4 layout.

Each network is a :class:`Backbone`:

- ``body``: image blob ``[N, 3, H, W]`` (BGR, 0–255 minus ``PIXEL_MEANS``) → features ``[N, C, H', W']``,
  H' ≈ H/16 (Caffe's exact pooling sizes: VGG16 600×1000 → 38×63);
- ``box_head``: RoI-pooled features ``[R, C, P, P]`` → ``[R, fc_dim]`` (fc6/fc7 + ReLU + Dropout, or res5);
- metadata: ``out_channels`` (C), ``rpn_channels`` (the RPN conv width), ``pooled_size`` (P),
  ``fc_dim``, ``feat_stride`` (16), ``frozen`` (parameter-name prefixes py-faster-rcnn keeps at lr 0).

Caffe details reproduced: max pooling in ceil mode (Caffe's output size, last window clipped); LRN
ACROSS_CHANNELS = ``nn.LocalResponseNorm`` (alpha/n scaling, k); LRN WITHIN_CHANNEL (ZF) =
x / (1 + alpha · avgpool(x²))^beta; ZF's dropout ``scale_train: false`` (no 1/(1−p) at train, ×(1−p) at test).

Initialisation: py-faster-rcnn's prototxts give no filler for conv1–fc7 (they come from the ImageNet
caffemodel), so without a weights file (:mod:`frcnn_trt.model.weights`) layers get He-normal (fan-in)
convs and N(0, 0.01) fc layers. Training from scratch is only meant to work for ``tiny``.

Glossary: N images, H×W input size, C feature channels, R RoIs, P pooled size.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn_trt.errors import ConfigError

__all__ = [
    "NETWORKS",
    "Backbone",
    "CaffeDropout",
    "InputScale",
    "NetworkSpec",
    "WithinChannelLRN",
    "build_network",
    "network_names",
]


# ------------------------------------------------------------------------------------------ Caffe layers


class WithinChannelLRN(nn.Module):
    """Caffe LRN with ``norm_region: WITHIN_CHANNEL``: ``x / (1 + alpha · mean_{k×k}(x²))^beta``.

    Caffe builds it from a square, an AVE pooling (kernel k, stride 1, pad (k−1)/2; the divisor is always k²,
    zero padding counted) and a power layer (shift 1, scale alpha, power −beta). LRNParameter's ``k`` is
    unused.
    """

    def __init__(self, local_size: int, alpha: float, beta: float) -> None:
        super().__init__()
        if local_size % 2 != 1:
            raise ConfigError(f"LRN local_size must be odd (Caffe), got {local_size}")
        self.local_size = local_size
        self.alpha = alpha
        self.beta = beta

    def forward(self, x: Tensor) -> Tensor:
        pad = (self.local_size - 1) // 2
        mean_sq = F.avg_pool2d(x * x, self.local_size, stride=1, padding=pad, count_include_pad=True)
        return x / (1.0 + self.alpha * mean_sq).pow(self.beta)

    def extra_repr(self) -> str:
        return f"local_size={self.local_size}, alpha={self.alpha}, beta={self.beta}"


class CaffeDropout(nn.Module):
    """Caffe's Dropout layer (caffe-fast-rcnn adds ``scale_train``).

    ``scale_train=True`` (Caffe default, = ``nn.Dropout``): train ``x·mask/(1−p)``, test ``x``.
    ``scale_train=False`` (ZF): train ``x·mask``, test ``x·(1−p)``.
    Uses torch's global RNG like ``nn.Dropout``.
    """

    def __init__(self, p: float = 0.5, scale_train: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout ratio must be in [0, 1), got {p}")
        self.p = p
        self.scale_train = scale_train

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            dropped = F.dropout(x, self.p, training=True)
            return dropped if self.scale_train else dropped * (1.0 - self.p)
        return x if self.scale_train else x * (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, scale_train={self.scale_train}"


class InputScale(nn.Module):
    """Multiply by a fixed constant (the tiny net brings 0–255 pixels to about unit scale)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


# ------------------------------------------------------------------------------------------ the container


@dataclass(frozen=True)
class NetworkSpec:
    """What the heads and the export need to know about a network."""

    name: str
    out_channels: int
    rpn_channels: int
    pooled_size: int
    fc_dim: int
    feat_stride: int = 16
    #: parameter-name prefixes (relative to the :class:`Backbone`) py-faster-rcnn never trains (lr_mult 0)
    frozen: tuple[str, ...] = ()


class Backbone(nn.Module):
    """A conv ``body`` (stride 16) and a per-RoI ``box_head``, with the network's metadata."""

    def __init__(self, spec: NetworkSpec, body: nn.Module, box_head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.body = body
        self.box_head = box_head

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def out_channels(self) -> int:
        return self.spec.out_channels

    @property
    def rpn_channels(self) -> int:
        return self.spec.rpn_channels

    @property
    def pooled_size(self) -> int:
        return self.spec.pooled_size

    @property
    def fc_dim(self) -> int:
        return self.spec.fc_dim

    @property
    def feat_stride(self) -> int:
        return self.spec.feat_stride

    @property
    def frozen(self) -> tuple[str, ...]:
        return self.spec.frozen

    def forward(self, images: Tensor) -> Tensor:
        """Image blob ``[N, 3, H, W]`` → conv features ``[N, out_channels, H', W']``."""
        return self.body(images)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature map size for an ``height × width`` input, computed on the meta device (no arithmetic)."""
        tensors = {k: torch.empty_like(v, device="meta") for k, v in self.body.state_dict(keep_vars=True).items()}
        x = torch.empty(1, 3, height, width, device="meta")
        out = torch.func.functional_call(self.body, tensors, (x,))
        return int(out.shape[-2]), int(out.shape[-1])

    def is_frozen(self, name: str) -> bool:
        """Whether parameter ``name`` (relative to this module) is one py-faster-rcnn never trains."""
        return any(name == p or name.startswith(p + ".") for p in self.spec.frozen)

    def frozen_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if self.is_frozen(n))

    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by part: ``"conv"`` (body, minus the frozen ones) and ``"fc"`` (box head).

        Alt-opt stages switch these groups on and off (docs/REFERENCE.md §9); names are relative to this module.
        """
        conv = [(f"body.{n}", p) for n, p in self.body.named_parameters() if not self.is_frozen(f"body.{n}")]
        head = self.box_head.named_parameters()
        fc = [(f"box_head.{n}", p) for n, p in head if not self.is_frozen(f"box_head.{n}")]
        return {"conv": conv, "fc": fc}

    def freeze_frozen(self) -> list[str]:
        """Set ``requires_grad=False`` on the always-frozen parameters; return their names."""
        names = []
        for name, param in self.frozen_parameters():
            param.requires_grad_(False)
            names.append(name)
        return names


# ------------------------------------------------------------------------------------------ init helpers


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, pad: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _fc_head(in_features: int, fc6: int, fc7: int, dropout: Callable[[], nn.Module] | None) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten(1))]
    layers += [("fc6", nn.Linear(in_features, fc6)), ("relu6", nn.ReLU(inplace=True))]
    if dropout is not None:
        layers.append(("drop6", dropout()))
    layers += [("fc7", nn.Linear(fc6, fc7)), ("relu7", nn.ReLU(inplace=True))]
    if dropout is not None:
        layers.append(("drop7", dropout()))
    return nn.Sequential(OrderedDict(layers))


def _caffe_max_pool(kernel: int, stride: int, pad: int = 0) -> nn.MaxPool2d:
    # Caffe's pooling output size is ceil((H + 2p − k) / s) + 1, dropping a last window that would start in
    # the padding: exactly torch's ceil_mode=True.
    return nn.MaxPool2d(kernel, stride=stride, padding=pad, ceil_mode=True)


# ------------------------------------------------------------------------------------------ networks


def build_vgg16() -> Backbone:
    """VGG16 (``models/pascal_voc/VGG16``): conv1_1…conv5_3, no pool5; RoI pool 7×7; fc6/fc7 4096."""
    layers: list[tuple[str, nn.Module]] = []
    cin = 3
    for block, (cout, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for i in range(1, reps + 1):
            layers += [(f"conv{block}_{i}", _conv(cin, cout, 3, pad=1)), (f"relu{block}_{i}", nn.ReLU(True))]
            cin = cout
        if block < 5:
            layers.append((f"pool{block}", _caffe_max_pool(2, 2)))
    body = nn.Sequential(OrderedDict(layers))
    box_head = _fc_head(512 * 7 * 7, 4096, 4096, lambda: CaffeDropout(0.5))
    spec = NetworkSpec(
        "VGG16",
        out_channels=512,
        rpn_channels=512,
        pooled_size=7,
        fc_dim=4096,
        frozen=("body.conv1_1", "body.conv1_2", "body.conv2_1", "body.conv2_2"),
    )
    backbone = Backbone(spec, body, box_head)
    _init(backbone)
    return backbone


def build_zf() -> Backbone:
    """ZF (``models/pascal_voc/ZF``): WITHIN_CHANNEL LRN, 3/2 pad-1 pools, dropout without train scaling."""
    body = nn.Sequential(
        OrderedDict(
            [
                ("conv1", _conv(3, 96, 7, stride=2, pad=3)),
                ("relu1", nn.ReLU(True)),
                ("norm1", WithinChannelLRN(3, 5e-5, 0.75)),
                ("pool1", _caffe_max_pool(3, 2, pad=1)),
                ("conv2", _conv(96, 256, 5, stride=2, pad=2)),
                ("relu2", nn.ReLU(True)),
                ("norm2", WithinChannelLRN(3, 5e-5, 0.75)),
                ("pool2", _caffe_max_pool(3, 2, pad=1)),
                ("conv3", _conv(256, 384, 3, pad=1)),
                ("relu3", nn.ReLU(True)),
                ("conv4", _conv(384, 384, 3, pad=1)),
                ("relu4", nn.ReLU(True)),
                ("conv5", _conv(384, 256, 3, pad=1)),
                ("relu5", nn.ReLU(True)),
            ]
        )
    )
    box_head = _fc_head(256 * 6 * 6, 4096, 4096, lambda: CaffeDropout(0.5, scale_train=False))
    spec = NetworkSpec("ZF", out_channels=256, rpn_channels=256, pooled_size=6, fc_dim=4096, frozen=())
    backbone = Backbone(spec, body, box_head)
    _init(backbone)
    return backbone


def build_vgg_cnn_m_1024() -> Backbone:
    """VGG_CNN_M_1024: ACROSS_CHANNELS LRN(5, 5e-4, 0.75, k=2), unpadded 3/2 pools, fc7 1024; conv1 frozen."""
    body = nn.Sequential(
        OrderedDict(
            [
                ("conv1", _conv(3, 96, 7, stride=2)),
                ("relu1", nn.ReLU(True)),
                ("norm1", nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)),
                ("pool1", _caffe_max_pool(3, 2)),
                ("conv2", _conv(96, 256, 5, stride=2, pad=1)),
                ("relu2", nn.ReLU(True)),
                ("norm2", nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)),
                ("pool2", _caffe_max_pool(3, 2)),
                ("conv3", _conv(256, 512, 3, pad=1)),
                ("relu3", nn.ReLU(True)),
                ("conv4", _conv(512, 512, 3, pad=1)),
                ("relu4", nn.ReLU(True)),
                ("conv5", _conv(512, 512, 3, pad=1)),
                ("relu5", nn.ReLU(True)),
            ]
        )
    )
    box_head = _fc_head(512 * 6 * 6, 4096, 1024, lambda: CaffeDropout(0.5))
    spec = NetworkSpec(
        "VGG_CNN_M_1024",
        out_channels=512,
        rpn_channels=256,
        pooled_size=6,
        fc_dim=1024,
        frozen=("body.conv1",),
    )
    backbone = Backbone(spec, body, box_head)
    _init(backbone)
    return backbone


def build_tiny() -> Backbone:
    """A small CPU net for tests and the synthetic demo: 7 convs (32–128 ch), stride 16, fc 256.

    Trained from scratch (no ImageNet model exists for it), so it normalises: each 3×3 conv (no bias) is
    followed by a per-channel GroupNorm (``GroupNorm(C, C)``, instance-norm-like: batch-independent, so it
    behaves the same with 1 or 2 images per batch and has no running statistics to drift in the frozen
    stages of alt-opt) and a ReLU. The input (0–255 minus means) is scaled by 1/64; the fc layers use He
    init. Without normalisation the earlier 5-conv version stayed at chance on the classes for ~1000
    iterations; this one reached VOC mAP 0.80 on the synthetic test split after 2400 end2end iterations.
    """
    plan = [(3, 32, 2), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 2), (128, 128, 1)]
    layers: list[tuple[str, nn.Module]] = [("scale", InputScale(1.0 / 64.0))]
    for i, (cin, cout, stride) in enumerate(plan, start=1):
        layers += [(f"conv{i}", nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)),
                   (f"norm{i}", nn.GroupNorm(cout, cout)), (f"relu{i}", nn.ReLU(True))]
    box_head = _fc_head(128 * 7 * 7, 256, 256, None)
    spec = NetworkSpec("tiny", out_channels=128, rpn_channels=128, pooled_size=7, fc_dim=256, frozen=())
    backbone = Backbone(spec, nn.Sequential(OrderedDict(layers)), box_head)
    _init(backbone)
    for m in box_head.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return backbone


def build_resnet50_c4() -> Backbone:
    """torchvision ResNet-50 in the C4 layout (Faster R-CNN paper / detectron2 ``R_50_C4``).

    body = stem + res2–res4 (``conv1, bn1, relu, maxpool, layer1–3``; stride 16, 1024 ch); box_head = res5
    (``layer4``, stride 2) + global average pool → 2048. RoI pool 14×14 (res5 halves it to 7×7). Every BN is
    a ``FrozenBatchNorm2d`` and stem + res2 are frozen (detectron2 ``FREEZE_AT=2``). Built with
    ``weights=None``: nothing is downloaded.
    """
    net = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    body = nn.Sequential(
        OrderedDict(
            [
                ("conv1", net.conv1),
                ("bn1", net.bn1),
                ("relu", net.relu),
                ("maxpool", net.maxpool),
                ("layer1", net.layer1),
                ("layer2", net.layer2),
                ("layer3", net.layer3),
            ]
        )
    )
    box_head = nn.Sequential(
        OrderedDict([("layer4", net.layer4), ("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))])
    )
    spec = NetworkSpec(
        "ResNet50_C4",
        out_channels=1024,
        rpn_channels=1024,
        pooled_size=14,
        fc_dim=2048,
        frozen=("body.conv1", "body.bn1", "body.layer1"),
    )
    return Backbone(spec, body, box_head)  # torchvision's own init (He normal convs)


#: canonical name → constructor. Names follow ``cfg.MODEL.NET`` / py-faster-rcnn's model folders.
NETWORKS: dict[str, Callable[[], Backbone]] = {
    "VGG16": build_vgg16,
    "ZF": build_zf,
    "VGG_CNN_M_1024": build_vgg_cnn_m_1024,
    "tiny": build_tiny,
    "ResNet50_C4": build_resnet50_c4,
}


def network_names() -> list[str]:
    return list(NETWORKS)


def canonical_network_name(name: str) -> str:
    """``name`` as NETWORKS spells it (case-insensitive match); ConfigError with the closest name if unknown."""
    by_lower = {k.lower(): k for k in NETWORKS}
    key = by_lower.get(name.lower())
    if key is None:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.5)
        hint = f"; did you mean {by_lower[close[0]]!r}?" if close else ""
        raise ConfigError(f"unknown network {name!r}{hint} (known: {', '.join(NETWORKS)})")
    return key


def build_network(name: str) -> Backbone:
    """Build network ``name`` (case-insensitive: VGG16, ZF, VGG_CNN_M_1024, tiny, ResNet50_C4).

    Unknown names raise :class:`~frcnn_trt.errors.ConfigError` with the closest known name. Build under
    ``with torch.device("meta"):`` to get shapes without allocating weights.
    """
    return NETWORKS[canonical_network_name(name)]()
