"""py-faster-rcnn's Caffe layer names → this project's modules, for VGG16, ZF and VGG_CNN_M_1024.

The layer names are those of py-faster-rcnn's test and training prototxts (docs/REFERENCE.md §8): ``conv1_1 … conv5_3``
(VGG16) or ``conv1 … conv5``, ``fc6``, ``fc7``, the RPN head ``rpn_conv/3x3`` (end2end) or ``rpn_conv1``
(ZF's alt-opt nets), ``rpn_cls_score``, ``rpn_bbox_pred``, and the predictor ``cls_score``, ``bbox_pred``.

Every learned layer has two blobs, weight and bias, in the layouts this project already uses, so values are
copied as they are: convolutions ``(out, in, kh, kw)``; InnerProduct ``(out, in)`` (``transpose: true``
layers are stored ``(in, out)`` and transposed here), fc6 reading the RoI-pooled blob flattened in
(channel, height, width) order like ``nn.Flatten``; ``rpn_cls_score``'s 2A channels all background first,
then all foreground, and ``rpn_bbox_pred``'s 4 per anchor (:mod:`frcnn_trt.model.rpn`); ``bbox_pred`` in raw
deltas (py-faster-rcnn's snapshot folds the target means/stds in, as this project's checkpoints do). Old
files give InnerProduct blobs legacy 4-D shapes ``(1, 1, out, in)`` / ``(1, 1, 1, out)``: equal up to
leading ones, they are reshaped.

Parts: the conv ``body`` and the ``box_head`` (fc6, fc7) are required; the ``rpn`` head and the
``predictor`` may each be absent as a whole (alt-opt stage snapshots: a stage RPN net has no
``cls_score``/``bbox_pred``), never in part. Layers without blobs (ReLU, pooling, RoI pooling, dropout,
softmax, loss, data, split, silence, Python layers) and learned layers of no part (an ImageNet ``fc8``) are
reported as ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from frcnn_trt.errors import CheckpointError
from frcnn_trt.model.caffe_reader import CaffeLayer

__all__ = ["CAFFE_NETS", "OPTIONAL_PARTS", "LayerMapping", "Target", "infer_net", "infer_num_classes", "map_layers",
           "targets"]

CAFFE_NETS = ("VGG16", "ZF", "VGG_CNN_M_1024")
#: parts a file may lack as a whole (the model keeps py-faster-rcnn's initialisation there)
OPTIONAL_PARTS = ("rpn", "predictor")
_VGG16_CONVS = tuple(f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1))
_ZF_M_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


@dataclass(frozen=True)
class Target:
    """One of our modules (``module.weight`` / ``module.bias``), the Caffe names it goes by, and its part."""

    module: str
    names: tuple[str, ...]
    part: str


@dataclass
class LayerMapping:
    """What :func:`map_layers` found: our state-dict values and the per-layer report."""

    net: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    loaded: list[tuple[str, str]] = field(default_factory=list)  # (Caffe layer, our module)
    ignored: list[tuple[str, str, str]] = field(default_factory=list)  # (Caffe layer, type, why)
    missing_parts: list[str] = field(default_factory=list)  # optional parts absent from the file
    missing_layers: list[str] = field(default_factory=list)  # their Caffe layer names
    notes: list[str] = field(default_factory=list)


def targets(net: str) -> tuple[Target, ...]:
    """The layers ``net`` needs, in forward order."""
    if net not in CAFFE_NETS:
        raise CheckpointError(f"unknown py-faster-rcnn network {net!r}; choose one of {', '.join(CAFFE_NETS)}")
    convs = _VGG16_CONVS if net == "VGG16" else _ZF_M_CONVS
    return (
        *(Target(f"backbone.body.{c}", (c,), "body") for c in convs),
        Target("rpn.conv", ("rpn_conv/3x3", "rpn_conv1"), "rpn"),
        Target("rpn.cls_score", ("rpn_cls_score",), "rpn"),
        Target("rpn.bbox_pred", ("rpn_bbox_pred",), "rpn"),
        Target("backbone.box_head.fc6", ("fc6",), "box_head"),
        Target("backbone.box_head.fc7", ("fc7",), "box_head"),
        Target("predictor.cls_score", ("cls_score",), "predictor"),
        Target("predictor.bbox_pred", ("bbox_pred",), "predictor"),
    )


def _learned(path: str, layers: Sequence[CaffeLayer]) -> dict[str, CaffeLayer]:
    """Layers with blobs by name; a name used twice is an error (which one would be meant?)."""
    found: dict[str, CaffeLayer] = {}
    for layer in layers:
        if not layer.blobs:
            continue
        if layer.name in found:
            raise CheckpointError(f"{path}: two layers named {layer.name!r} carry weights")
        found[layer.name] = layer
    return found


def _outputs(layer: CaffeLayer) -> int:
    """Output count of a learned layer: its bias length (shape-layout independent), else the weight's dim 0."""
    if len(layer.blobs) > 1:
        return int(layer.blobs[1].numel())
    shape = [d for d in layer.blobs[0].shape if d != 1] or [1]
    return int(shape[0])


def infer_net(path: str, layers: Sequence[CaffeLayer]) -> str:
    """VGG16 (``conv1_1``), ZF (``conv3`` 384 outputs) or VGG_CNN_M_1024 (``conv3`` 512, ``fc7`` 1024)."""
    learned = _learned(path, layers)
    if "conv1_1" in learned:
        return "VGG16"
    if "conv1" in learned:
        conv3 = _outputs(learned["conv3"]) if "conv3" in learned else None
        fc7 = _outputs(learned["fc7"]) if "fc7" in learned else None
        if conv3 == 384 or fc7 == 4096:
            return "ZF"
        if conv3 == 512 or fc7 == 1024:
            return "VGG_CNN_M_1024"
        raise CheckpointError(f"{path}: has conv1 but cannot tell ZF (conv3 384 outputs) from VGG_CNN_M_1024 (512): "
                              f"conv3 has {conv3}, fc7 {fc7}; give --net")
    names = ", ".join(list(learned)[:8]) or "none"
    raise CheckpointError(f"{path}: not a py-faster-rcnn VGG16 / ZF / VGG_CNN_M_1024 model: no layer conv1_1 or "
                          f"conv1 with weights (layers with weights: {names})")


def infer_num_classes(path: str, layers: Sequence[CaffeLayer]) -> int | None:
    """Classes including background from ``cls_score`` (checked against ``bbox_pred``); None without it."""
    learned = _learned(path, layers)
    if "cls_score" not in learned:
        return None
    k = _outputs(learned["cls_score"])
    if "bbox_pred" in learned and _outputs(learned["bbox_pred"]) != 4 * k:
        raise CheckpointError(f"{path}: bbox_pred has {_outputs(learned['bbox_pred'])} outputs, cls_score {k}: "
                              f"expected 4 × {k} = {4 * k} (class-specific box regression)")
    return k


def _strip(shape: Sequence[int]) -> tuple[int, ...]:
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return tuple(dims)


def _fit(path: str, net: str, layer: CaffeLayer, what: str, value: Tensor, expected: Sequence[int]) -> Tensor:
    """``value`` in the ``expected`` shape (legacy leading ones dropped), or an error naming both shapes."""
    shape, want = tuple(value.shape), tuple(expected)
    if layer.transpose and what == "weight" and len(want) == 2:
        want = (want[1], want[0])
    if shape != want:
        if value.numel() != math.prod(want) or _strip(shape) != _strip(want):
            raise CheckpointError(f"{path}: layer {layer.name!r} {what}: the file has shape {shape}, {net} "
                                  f"expects {want}")
        value = value.reshape(want)
    return value.t().contiguous() if layer.transpose and what == "weight" and value.dim() == 2 else value


def _take(path: str, net: str, target: Target, layer: CaffeLayer, expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if len(layer.blobs) != 2:
        raise CheckpointError(f"{path}: layer {layer.name!r} ({layer.type}) has {len(layer.blobs)} blobs; "
                              f"{net}'s {target.part} layers have 2 (weight, bias)")
    out = {}
    for what, value in zip(("weight", "bias"), layer.blobs, strict=True):
        key = f"{target.module}.{what}"
        out[key] = _fit(path, net, layer, what, value, tuple(expected[key].shape))
    return out


def _find(path: str, target: Target, learned: Mapping[str, CaffeLayer]) -> CaffeLayer | None:
    present = [n for n in target.names if n in learned]
    if len(present) > 1:
        raise CheckpointError(f"{path}: both {present[0]!r} and {present[1]!r} carry weights; which is the "
                              f"{target.part} layer is ambiguous")
    return learned[present[0]] if present else None


def _check_parts(path: str, net: str, wanted: Sequence[Target], found: set[str], result: LayerMapping) -> None:
    """Required parts complete; optional parts complete or absent as a whole (then recorded as missing)."""
    for part in dict.fromkeys(t.part for t in wanted):
        members = [t for t in wanted if t.part == part]
        absent = [t for t in members if t.module not in found]
        if not absent:
            continue
        if part in OPTIONAL_PARTS and len(absent) == len(members):
            result.missing_parts.append(part)
            result.missing_layers.extend(t.names[0] for t in members)
            continue
        names = " / ".join(absent[0].names)
        have = [t.names[0] for t in members if t.module in found]
        extra = f" (the file has {', '.join(have)} of that part)" if have else ""
        raise CheckpointError(f"{path}: missing required layer {names!r} of {net}'s {part}{extra}")


def map_layers(path: str, net: str, layers: Sequence[CaffeLayer], expected: Mapping[str, Tensor]) -> LayerMapping:
    """Our state-dict values from ``layers`` (module doc); ``expected``: the model's state dict (shapes)."""
    learned = _learned(path, layers)
    wanted = targets(net)
    result = LayerMapping(net=net)
    used: set[str] = set()
    found: set[str] = set()
    for target in wanted:
        layer = _find(path, target, learned)
        if layer is None:
            continue
        result.tensors.update(_take(path, net, target, layer, expected))
        result.loaded.append((layer.name, target.module))
        if layer.transpose:
            result.notes.append(f"{layer.name}: InnerProduct stored transposed (in, out); transposed back")
        used.add(layer.name)
        found.add(target.module)
    _check_parts(path, net, wanted, found, result)
    for layer in layers:
        if layer.name in used:
            continue
        why = f"not a layer of {net}" if layer.blobs else "no weights"
        result.ignored.append((layer.name, layer.type, why))
    return result
