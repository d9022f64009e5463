"""py-faster-rcnn's ``AnchorTargetLayer`` (``lib/rpn/anchor_target_layer.py``, docs/REFERENCE.md §4): RPN anchor labels
and regression targets, batched over images.

Glossary of shape letters:

- ``N``: images; ``H × W``: RPN feature map; ``A``: anchors per location; ``M = H·W·A`` anchors per image in
  the order ``(h·W + w)·A + a`` (see :mod:`frcnn_trt.anchors`).
- ``G_i``: ground-truth boxes of image ``i`` (already multiplied by the image scale, as py-faster-rcnn's
  ``gt_boxes`` blob).
- ``im_info [N, 3]``: ``(blob_h, blob_w, im_scale)`` per image.

Random subsampling of the labels: :mod:`frcnn_trt.targets.sampling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from frcnn_trt.anchors import AnchorGenerator
from frcnn_trt.boxes import bbox_overlaps, bbox_transform
from frcnn_trt.config import Config
from frcnn_trt.errors import ModelError
from frcnn_trt.targets.sampling import check_generator, pad_gt, priorities, rank_in_groups

__all__ = ["AnchorTargetLayer", "AnchorTargetSettings", "AnchorTargets", "anchor_targets"]


class AnchorTargets(NamedTuple):
    """RPN targets in anchor order ``(h, w, a)``.

    ``labels [N, M]`` int64 (1 fg, 0 bg, −1 ignore); ``bbox_targets``, ``bbox_inside_weights``,
    ``bbox_outside_weights`` ``[N, M, 4]`` float32.
    """

    labels: Tensor
    bbox_targets: Tensor
    bbox_inside_weights: Tensor
    bbox_outside_weights: Tensor


@dataclass(frozen=True)
class AnchorTargetSettings:
    """The anchor target layer's settings; the defaults are docs/REFERENCE.md §1's (``cfg.TRAIN.RPN_*``).

    ``allowed_border``: how far (pixels) an anchor may cross the blob border and still be labelled;
    ``positive_overlap`` / ``negative_overlap``: IoU at or above which an anchor is foreground / below which it
    is background; ``clobber_positives``: apply the background rule last; ``fg_fraction`` · ``batch_size``:
    the most foreground anchors kept per image, ``batch_size`` the most labelled in all;
    ``bbox_inside_weights``: of foreground anchors; ``positive_weight``: < 0 weighs every labelled anchor
    ``1/#labelled``, a value ``p`` in (0, 1) gives foreground ``p/#fg`` and background ``(1 − p)/#bg``.
    """

    allowed_border: float = 0.0
    positive_overlap: float = 0.7
    negative_overlap: float = 0.3
    clobber_positives: bool = False
    fg_fraction: float = 0.5
    batch_size: int = 256
    bbox_inside_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    positive_weight: float = -1.0

    def __post_init__(self) -> None:
        for name in ("allowed_border", "positive_overlap", "negative_overlap", "fg_fraction", "positive_weight"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "clobber_positives", bool(self.clobber_positives))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "bbox_inside_weights", tuple(float(v) for v in self.bbox_inside_weights))
        if not self.positive_weight < 0 and not 0 < self.positive_weight < 1:
            raise ModelError(f"RPN_POSITIVE_WEIGHT must be < 0 (uniform) or in (0, 1), got {self.positive_weight}")

    @classmethod
    def from_config(cls, cfg: Config) -> AnchorTargetSettings:
        """From ``cfg.TRAIN.RPN_*`` (the border is py-faster-rcnn's fixed 0)."""
        t = cfg.TRAIN
        return cls(
            positive_overlap=t.RPN_POSITIVE_OVERLAP,
            negative_overlap=t.RPN_NEGATIVE_OVERLAP,
            clobber_positives=t.RPN_CLOBBER_POSITIVES,
            fg_fraction=t.RPN_FG_FRACTION,
            batch_size=t.RPN_BATCHSIZE,
            bbox_inside_weights=t.RPN_BBOX_INSIDE_WEIGHTS,
            positive_weight=t.RPN_POSITIVE_WEIGHT,
        )


def _check_info(im_info: Tensor, n: int) -> None:
    if im_info.dim() != 2 or im_info.shape[0] != n or im_info.shape[1] < 2:
        raise ModelError(f"im_info must be [N={n}, 3] (one row per gt list), got {tuple(im_info.shape)}")


def _labels(
    overlaps: Tensor, gt_valid: Tensor, inside: Tensor, s: AnchorTargetSettings
) -> tuple[Tensor, Tensor]:
    """Labels ``[N, M]`` before subsampling (−1, 0, 1) and each anchor's best gt ``[N, M]``."""
    n, m = inside.shape
    argmax = overlaps.argmax(dim=2)  # [N, M]; first maximum, like np.argmax
    max_ov = overlaps.gather(2, argmax.unsqueeze(2)).squeeze(2).clamp_min(0.0)  # no gt ⇒ 0
    gt_max = overlaps.masked_fill(~inside.unsqueeze(2), -1.0).amax(dim=1)  # [N, G] over inside anchors
    attains = ((overlaps == gt_max.unsqueeze(1)) & gt_valid.unsqueeze(1)).any(dim=2) & inside

    labels = torch.full((n, m), -1, dtype=torch.long, device=inside.device)
    neg = inside & (max_ov < s.negative_overlap)
    pos = attains | (inside & (max_ov >= s.positive_overlap))
    if not s.clobber_positives:
        labels[neg] = 0
        labels[pos] = 1
    else:
        labels[pos] = 1
        labels[neg] = 0
    return labels, argmax


def _subsample(labels: Tensor, s: AnchorTargetSettings, generator: torch.Generator | None) -> Tensor:
    """At most ``fg_fraction · batch_size`` fg, then ``batch_size − #fg`` bg per image; the rest become −1.
    One random priority per anchor of the batch, shared by the fg and the bg draw."""
    n, m = labels.shape
    dev = labels.device
    flat = labels.reshape(-1)
    group = torch.arange(n, device=dev).repeat_interleave(m)
    priority = priorities(n * m, generator, dev)
    num_fg = int(s.fg_fraction * s.batch_size)
    fg = flat == 1
    flat = torch.where(fg & (rank_in_groups(fg, group, priority) >= num_fg), -1, flat)
    num_bg = s.batch_size - (flat == 1).reshape(n, m).sum(dim=1)  # [N]
    bg = flat == 0
    flat = torch.where(bg & (rank_in_groups(bg, group, priority) >= num_bg[group]), -1, flat)
    return flat.reshape(n, m)


def _weights(labels: Tensor, s: AnchorTargetSettings) -> tuple[Tensor, Tensor]:
    """Inside weights (fg rows) and outside weights ``[N, M, 4]`` float32."""
    n, m = labels.shape
    dev = labels.device
    f64 = torch.float64
    is_fg = labels == 1
    is_bg = labels == 0
    iw_row = torch.tensor(s.bbox_inside_weights, dtype=torch.float32, device=dev)
    inside_w = torch.where(is_fg.unsqueeze(2), iw_row, torch.zeros((), dtype=torch.float32, device=dev))
    if s.positive_weight < 0:
        num_examples = (labels >= 0).sum(dim=1, keepdim=True).to(f64)  # [N, 1]
        pos_w = neg_w = 1.0 / num_examples
    else:
        pos_w = s.positive_weight / is_fg.sum(dim=1, keepdim=True).to(f64)
        neg_w = (1.0 - s.positive_weight) / is_bg.sum(dim=1, keepdim=True).to(f64)
    zero64 = torch.zeros((), dtype=f64, device=dev)
    out_w = torch.where(is_fg, pos_w, torch.where(is_bg, neg_w, zero64)).to(torch.float32)
    return inside_w, out_w.unsqueeze(2).expand(n, m, 4).contiguous()


@torch.no_grad()
def anchor_targets(
    anchors: Tensor,
    gt_boxes: Sequence[Tensor],
    im_info: Tensor,
    settings: AnchorTargetSettings,
    *,
    generator: torch.Generator | None,
) -> AnchorTargets:
    """py-faster-rcnn's ``AnchorTargetLayer`` for ``anchors [M, 4]``, ``gt_boxes`` (``N`` tensors
    ``[G_i, 4]``, scaled) and ``im_info [N, 3]``, with the :class:`AnchorTargetSettings` ``settings``.

    Per image: only anchors fully inside the blob (``x1 ≥ −b, y1 ≥ −b, x2 < W + b, y2 < H + b``, ``b =
    allowed_border``) get labels; IoU (+1, float64) with the gt; labels start at −1; 0 where max IoU <
    ``negative_overlap``; 1 for **every** anchor that attains some gt's maximum IoU (ties all positive — and,
    a quirk reproduced on purpose, a gt whose best IoU is 0 makes *all* inside anchors with 0 IoU to it
    positive); 1 where max IoU ≥ ``positive_overlap`` (with ``clobber_positives`` the 0-rule is applied last
    instead). At most ``int(fg_fraction · batch_size)`` positives are kept at random, then at most
    ``batch_size − #fg`` negatives; the rest become −1. Targets encode each inside anchor against its
    best gt (float64, returned float32); inside weights for fg; outside weights ``1/#(labels ≥ 0)`` for fg
    and bg (``positive_weight < 0``), else ``p/#fg`` and ``(1 − p)/#bg``.

    Images with no gt (py-faster-rcnn would crash): every max IoU is 0, so all inside anchors are
    background candidates, none is positive, targets are 0.
    """
    check_generator(generator)
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ModelError(f"anchors must be [M, 4], got {tuple(anchors.shape)}")
    n = len(gt_boxes)
    _check_info(im_info, n)
    dev = anchors.device
    m = anchors.shape[0]
    if m == 0:
        z = torch.zeros(n, 0, 4, dtype=torch.float32, device=dev)
        return AnchorTargets(torch.zeros(n, 0, dtype=torch.long, device=dev), z, z.clone(), z.clone())
    a64 = anchors.to(torch.float64)
    info = im_info.to(device=dev, dtype=torch.float64)

    # inside-the-blob anchors, per image [N, M]
    h, w = info[:, 0:1], info[:, 1:2]
    b = settings.allowed_border
    inside = (a64[:, 0] >= -b) & (a64[:, 1] >= -b) & (a64[:, 2] < w + b) & (a64[:, 3] < h + b)

    gt, _, gt_valid, _ = pad_gt(gt_boxes, dev)  # [N, G, 4], [N, G]
    overlaps = bbox_overlaps(a64.unsqueeze(0), gt)  # [N, M, G] float64
    overlaps = overlaps.masked_fill(~gt_valid.unsqueeze(1), -1.0)
    labels, argmax = _labels(overlaps, gt_valid, inside, settings)
    labels = _subsample(labels, settings, generator)

    # regression targets against each anchor's best gt, inside anchors of images with gt
    matched = gt.gather(1, argmax.unsqueeze(2).expand(n, m, 4))  # [N, M, 4]
    targets = bbox_transform(a64.unsqueeze(0).expand(n, m, 4), matched).to(torch.float32)
    has_target = inside & gt_valid.any(dim=1, keepdim=True)
    targets = torch.where(has_target.unsqueeze(2), targets, torch.zeros((), dtype=torch.float32, device=dev))
    inside_w, outside_w = _weights(labels, settings)
    return AnchorTargets(labels, targets, inside_w, outside_w)


class AnchorTargetLayer(nn.Module):
    """``forward(feat_size (H, W), gt_boxes [N × [G_i, 4]], im_info [N, 3], *, generator)`` →
    :class:`AnchorTargets` ``[N, H·W·A, ...]``; see :func:`anchor_targets`.

    ``settings``: an :class:`AnchorTargetSettings` (default: docs/REFERENCE.md §1's); ``anchor_generator``: the
    anchors (default: :class:`~frcnn_trt.anchors.AnchorSettings`'s).
    """

    def __init__(
        self, settings: AnchorTargetSettings | None = None, anchor_generator: AnchorGenerator | None = None
    ) -> None:
        super().__init__()
        self.settings = settings if settings is not None else AnchorTargetSettings()
        self.anchor_generator = anchor_generator if anchor_generator is not None else AnchorGenerator()

    @classmethod
    def from_config(cls, cfg: Config) -> AnchorTargetLayer:
        """Build from ``cfg.MODEL`` (anchors) and ``cfg.TRAIN.RPN_*`` (:meth:`AnchorTargetSettings.from_config`)."""
        return cls(AnchorTargetSettings.from_config(cfg), AnchorGenerator.from_config(cfg))

    def forward(
        self,
        feat_size: tuple[int, int],
        gt_boxes: Sequence[Tensor],
        im_info: Tensor,
        *,
        generator: torch.Generator | None,
    ) -> AnchorTargets:
        anchors = self.anchor_generator(int(feat_size[0]), int(feat_size[1]), device=im_info.device)
        return anchor_targets(anchors, gt_boxes, im_info, self.settings, generator=generator)
