"""Anchor grids over a feature map, in py-faster-rcnn's order (docs/REFERENCE.md §2, §4).

Glossary of shape letters:

- ``N``: images in the batch; ``H × W``: feature-map size; ``A``: anchors per location (9 by default).
- ``M = H·W·A``: anchors of one image, flattened as ``(h·W + w)·A + a`` (``a`` fastest), the order of
  ``proposal_layer.py`` and of every per-anchor tensor in this package (labels, targets, scores, deltas).

The RPN head emits Caffe blob layouts; :func:`rpn_cls_to_anchor_order` and :func:`rpn_bbox_to_anchor_order`
turn them into this anchor order:

- ``rpn_cls_score`` / ``rpn_cls_prob`` ``(N, 2A, H, W)``: channels ``0..A-1`` are background of anchors
  ``0..A-1``, ``A..2A-1`` foreground (the ``Reshape(0, 2, -1, 0)`` + softmax-over-axis-1 layout);
- ``rpn_bbox_pred`` ``(N, 4A, H, W)``: channel ``4a + k``, ``k`` in ``(dx, dy, dw, dh)``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from frcnn_trt.boxes import generate_anchors
from frcnn_trt.config import Config
from frcnn_trt.errors import ModelError

__all__ = [
    "AnchorGenerator",
    "AnchorSettings",
    "rpn_bbox_to_anchor_order",
    "rpn_cls_to_anchor_order",
    "rpn_fg_scores_to_anchor_order",
    "shifted_anchors",
]


def shifted_anchors(base_anchors: Tensor, feat_h: int, feat_w: int, stride: int = 16) -> Tensor:
    """All anchors of an ``feat_h × feat_w`` map: ``base_anchors [A, 4]`` → ``[H·W·A, 4]``.

    Row ``(h·W + w)·A + a`` is ``base_anchors[a] + stride·(w, h, w, h)``. Dtype and device of
    ``base_anchors``.
    """
    if base_anchors.dim() != 2 or base_anchors.shape[1] != 4:
        raise ModelError(f"base_anchors must be [A, 4], got {tuple(base_anchors.shape)}")
    if feat_h < 0 or feat_w < 0 or stride <= 0:
        raise ModelError(f"bad anchor grid: feat_h={feat_h}, feat_w={feat_w}, stride={stride}")
    dev, dt = base_anchors.device, base_anchors.dtype
    shift_x = torch.arange(feat_w, device=dev, dtype=dt) * stride
    shift_y = torch.arange(feat_h, device=dev, dtype=dt) * stride
    sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [H, W]: index h·W + w after reshape
    shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(feat_h * feat_w, 1, 4)  # [H·W, 1, 4]
    return (shifts + base_anchors.unsqueeze(0)).reshape(feat_h * feat_w * base_anchors.shape[0], 4)


@dataclass(frozen=True)
class AnchorSettings:
    """The anchor grid (py-faster-rcnn's prototxt ``param_str``; docs/REFERENCE.md §2).

    ``feat_stride``: pixels between neighbouring feature-map cells; ``scales`` / ``ratios``: of the base
    anchors (``generate_anchors``); ``base_size``: their reference side, 16 in py-faster-rcnn whatever the
    stride. Scales and ratios are stored as float tuples (ints given are converted).
    """

    feat_stride: int = 16
    scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    base_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "feat_stride", int(self.feat_stride))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        object.__setattr__(self, "base_size", int(self.base_size))

    @classmethod
    def from_config(cls, cfg: Config) -> AnchorSettings:
        """From ``cfg.MODEL.FEAT_STRIDE``, ``ANCHOR_SCALES`` and ``ANCHOR_RATIOS``."""
        return cls(cfg.MODEL.FEAT_STRIDE, cfg.MODEL.ANCHOR_SCALES, cfg.MODEL.ANCHOR_RATIOS)


class AnchorGenerator(nn.Module):
    """Anchors for a feature map, cached per ``(H, W, device, dtype)`` (the last 64 grids).

    ``forward(feat_h, feat_w, device=None, dtype=float32) -> Tensor[H·W·A, 4]``. The base anchors are
    :func:`~frcnn_trt.boxes.generate_anchors` of ``(base_size, ratios, scales)`` of the
    :class:`AnchorSettings`, shifted by ``feat_stride`` per cell. The returned tensor is shared between
    calls: do not modify it in place.
    """

    base_anchors: Tensor
    cache_size = 64  # grids kept (least recently used dropped): image sizes vary between batches

    def __init__(self, settings: AnchorSettings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else AnchorSettings()
        s = self.settings
        base = generate_anchors(s.base_size, s.ratios, s.scales, dtype=torch.float64)
        self.register_buffer("base_anchors", base, persistent=False)
        self._cache: OrderedDict[tuple[int, int, torch.device, torch.dtype], Tensor] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: Config) -> AnchorGenerator:
        """Build from ``cfg.MODEL`` (:meth:`AnchorSettings.from_config`)."""
        return cls(AnchorSettings.from_config(cfg))

    @property
    def num_anchors(self) -> int:
        """``A``, anchors per feature-map location."""
        return int(self.base_anchors.shape[0])

    def forward(
        self,
        feat_h: int,
        feat_w: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        dev = torch.device(device) if device is not None else self.base_anchors.device
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        key = (int(feat_h), int(feat_w), dev, dtype)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
        else:
            # Built in float64 (exact: integer and half-integer values), then cast.
            stride = self.settings.feat_stride
            cached = shifted_anchors(self.base_anchors.to(dev), int(feat_h), int(feat_w), stride)
            cached = cached.to(dtype)
            self._cache[key] = cached
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return cached

    def extra_repr(self) -> str:
        s = self.settings
        return f"feat_stride={s.feat_stride}, base_size={s.base_size}, scales={s.scales}, ratios={s.ratios}"


def _check_blob(name: str, blob: Tensor, per_anchor: int) -> int:
    if blob.dim() != 4 or blob.shape[1] % per_anchor != 0 or blob.shape[1] == 0:
        raise ModelError(f"{name} must be (N, {per_anchor}·A, H, W), got {tuple(blob.shape)}")
    return blob.shape[1] // per_anchor


def rpn_cls_to_anchor_order(rpn_cls: Tensor) -> Tensor:
    """``(N, 2A, H, W)`` (bg channels ``0..A-1``, fg ``A..2A-1``) → ``(N, H·W·A, 2)``, ``[bg, fg]`` last."""
    a = _check_blob("rpn_cls", rpn_cls, 2)
    n, _, h, w = rpn_cls.shape
    return rpn_cls.reshape(n, 2, a, h, w).permute(0, 3, 4, 2, 1).reshape(n, h * w * a, 2)


def rpn_fg_scores_to_anchor_order(rpn_cls_prob: Tensor) -> Tensor:
    """Foreground channels ``A..2A-1`` of ``(N, 2A, H, W)`` → ``(N, H·W·A)``."""
    a = _check_blob("rpn_cls_prob", rpn_cls_prob, 2)
    n = rpn_cls_prob.shape[0]
    h, w = rpn_cls_prob.shape[2:]
    return rpn_cls_prob[:, a:].permute(0, 2, 3, 1).reshape(n, h * w * a)


def rpn_bbox_to_anchor_order(rpn_bbox: Tensor) -> Tensor:
    """``(N, 4A, H, W)`` with channel ``4a + k`` → ``(N, H·W·A, 4)``."""
    a = _check_blob("rpn_bbox", rpn_bbox, 4)
    n, _, h, w = rpn_bbox.shape
    return rpn_bbox.permute(0, 2, 3, 1).reshape(n, h * w * a, 4)
