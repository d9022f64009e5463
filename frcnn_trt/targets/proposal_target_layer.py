"""py-faster-rcnn's end2end ``ProposalTargetLayer`` (``lib/rpn/proposal_target_layer.py``, docs/REFERENCE.md §6): the
Fast R-CNN RoI minibatch sampled from the RPN's proposals, batched over images.

Glossary of shape letters:

- ``N``: images; ``G_i``: ground-truth boxes of image ``i`` (already multiplied by the image scale);
  ``R``: RoIs (proposals) of the whole batch; ``S``: sampled RoIs over the whole batch.
- ``K``: classes including background (index 0); per-class regression columns ``4c..4c+3`` of ``[S, 4K]``.

Random sampling: :mod:`frcnn_trt.targets.sampling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from frcnn_trt.boxes import bbox_overlaps, bbox_transform
from frcnn_trt.config import Config
from frcnn_trt.errors import ModelError
from frcnn_trt.targets.sampling import check_generator, pad_gt, sample_fg_bg

__all__ = ["ProposalTargetLayer", "ProposalTargetSettings", "RoiTargets", "proposal_targets", "regression_labels"]


class RoiTargets(NamedTuple):
    """Sampled Fast R-CNN minibatch: ``rois [S, 5]`` (batch index first), ``labels [S]`` int64,
    ``bbox_targets``, ``bbox_inside_weights``, ``bbox_outside_weights`` ``[S, 4K]`` float32.

    Rows are sorted by image, and within an image foreground first, then background (as the original).
    """

    rois: Tensor
    labels: Tensor
    bbox_targets: Tensor
    bbox_inside_weights: Tensor
    bbox_outside_weights: Tensor


@dataclass(frozen=True)
class ProposalTargetSettings:
    """The proposal target layer's settings. Defaults: docs/REFERENCE.md §1/§6 end2end values except ``bg_thresh_lo``
    (the config default 0.1; the end2end yml sets 0.0).

    ``rois_per_image``: RoIs sampled per image at most; ``fg_fraction``: of them foreground at most
    (``round``, half to even); ``fg_thresh``: IoU at or above which a RoI is foreground; background RoIs have
    IoU in ``[bg_thresh_lo, bg_thresh_hi)``; ``normalize_targets``: targets become ``(t − means) / stds``
    (``BBOX_NORMALIZE_TARGETS_PRECOMPUTED``); ``bbox_inside_weights``: of foreground rows.
    """

    rois_per_image: int = 128
    fg_fraction: float = 0.25
    fg_thresh: float = 0.5
    bg_thresh_hi: float = 0.5
    bg_thresh_lo: float = 0.1
    normalize_targets: bool = True
    bbox_normalize_means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    bbox_normalize_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    bbox_inside_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rois_per_image", int(self.rois_per_image))
        for name in ("fg_fraction", "fg_thresh", "bg_thresh_hi", "bg_thresh_lo"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "normalize_targets", bool(self.normalize_targets))
        for name in ("bbox_normalize_means", "bbox_normalize_stds", "bbox_inside_weights"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    @classmethod
    def from_config(cls, cfg: Config) -> ProposalTargetSettings:
        """From ``cfg.TRAIN``: ``rois_per_image = BATCH_SIZE // IMS_PER_BATCH``, FG/BG thresholds,
        ``normalize_targets = BBOX_NORMALIZE_TARGETS_PRECOMPUTED``, means/stds, inside weights."""
        t = cfg.TRAIN
        return cls(
            rois_per_image=int(t.BATCH_SIZE) // int(t.IMS_PER_BATCH),
            fg_fraction=t.FG_FRACTION,
            fg_thresh=t.FG_THRESH,
            bg_thresh_hi=t.BG_THRESH_HI,
            bg_thresh_lo=t.BG_THRESH_LO,
            normalize_targets=t.BBOX_NORMALIZE_TARGETS_PRECOMPUTED,
            bbox_normalize_means=t.BBOX_NORMALIZE_MEANS,
            bbox_normalize_stds=t.BBOX_NORMALIZE_STDS,
            bbox_inside_weights=t.BBOX_INSIDE_WEIGHTS,
        )


def regression_labels(
    targets: Tensor, classes: Tensor, num_classes: int, inside: Sequence[float]
) -> tuple[Tensor, Tensor, Tensor]:
    """py-faster-rcnn ``_get_bbox_regression_labels``: ``targets [S, 4]`` into columns ``4c..4c+3`` for rows
    with class ``c > 0`` → ``bbox_targets``, ``inside``, ``outside`` ``[S, 4K]`` float32."""
    s = targets.shape[0]
    dev = targets.device
    bt = torch.zeros(s, num_classes, 4, dtype=torch.float32, device=dev)
    iw = torch.zeros(s, num_classes, 4, dtype=torch.float32, device=dev)
    rows = torch.nonzero(classes > 0).squeeze(1)
    cls = classes[rows]
    bt[rows, cls] = targets[rows].to(torch.float32)
    iw[rows, cls] = torch.tensor([float(w) for w in inside], dtype=torch.float32, device=dev)
    bt = bt.reshape(s, 4 * num_classes)
    iw = iw.reshape(s, 4 * num_classes)
    return bt, iw, (iw > 0).to(torch.float32)


def _check_inputs(rpn_rois: Tensor, gt_boxes: Sequence[Tensor], gt_classes: Sequence[Tensor], num_classes: int) -> None:
    if rpn_rois.dim() != 2 or rpn_rois.shape[1] != 5:
        raise ModelError(f"rpn_rois must be [R, 5] (batch_idx, x1, y1, x2, y2), got {tuple(rpn_rois.shape)}")
    if len(gt_classes) != len(gt_boxes):
        raise ModelError(f"gt_boxes and gt_classes differ in length: {len(gt_boxes)} vs {len(gt_classes)}")
    if num_classes < 2:
        raise ModelError(f"num_classes counts the background and must be ≥ 2, got {num_classes}")


@torch.no_grad()
def proposal_targets(
    rpn_rois: Tensor,
    gt_boxes: Sequence[Tensor],
    gt_classes: Sequence[Tensor],
    settings: ProposalTargetSettings,
    *,
    num_classes: int,
    generator: torch.Generator | None,
) -> RoiTargets:
    """py-faster-rcnn's end2end ``ProposalTargetLayer`` with the :class:`ProposalTargetSettings` ``settings``.

    ``rpn_rois [R, 5]`` (batch index, x1, y1, x2, y2), ``gt_boxes`` / ``gt_classes``: ``N`` tensors
    ``[G_i, 4]`` (scaled) and ``[G_i]`` (1..K−1). Candidates per image = its proposals **+ its gt boxes**;
    IoU (+1, float64) → best gt; fg: IoU ≥ ``fg_thresh``, at most ``round(fg_fraction · rois_per_image)``
    (half to even, like ``np.round``); bg: ``bg_thresh_lo ≤ IoU < bg_thresh_hi``, at most
    ``rois_per_image − #fg`` — the total is smaller when bg is scarce. bg labels are 0. Targets =
    ``encode(roi, gt)`` (float32), then ``(t − means) / stds`` if ``normalize_targets``, written to columns
    ``4c..4c+3``; outside = inside > 0. Images with no gt: max IoU is 0, so their proposals are bg candidates
    when ``bg_thresh_lo ≤ 0``.
    """
    check_generator(generator)
    _check_inputs(rpn_rois, gt_boxes, gt_classes, num_classes)
    s = settings
    n = len(gt_boxes)
    dev = rpn_rois.device
    rois = rpn_rois.detach()
    gt, gt_cls, gt_valid, counts = pad_gt(gt_boxes, dev, gt_classes)

    # candidates = proposals + gt boxes appended (per image)
    gt_img = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    gt_flat = gt[gt_valid].to(rois.dtype)  # row-major: image order, gt order
    boxes = torch.cat([rois[:, 1:5], gt_flat])
    img = torch.cat([rois[:, 0].long(), gt_img])

    overlaps = bbox_overlaps(boxes.to(torch.float64).unsqueeze(1), gt[img]).squeeze(1)  # [T, G]
    overlaps = overlaps.masked_fill(~gt_valid[img], -1.0)
    assign = overlaps.argmax(dim=1)
    max_ov = overlaps.gather(1, assign.unsqueeze(1)).squeeze(1).clamp_min(0.0)

    fg = max_ov >= s.fg_thresh
    bg = (max_ov < s.bg_thresh_hi) & (max_ov >= s.bg_thresh_lo)
    fg_per_image = round(s.fg_fraction * s.rois_per_image)  # half to even, like np.round
    sel, sel_is_fg = sample_fg_bg(fg, bg, img, n, s.rois_per_image, fg_per_image, generator)

    s_img, s_assign, s_boxes = img[sel], assign[sel], boxes[sel]
    labels = torch.where(sel_is_fg, gt_cls[s_img, s_assign], torch.zeros_like(s_img))
    targets = bbox_transform(s_boxes, gt[s_img, s_assign].to(s_boxes.dtype))
    if s.normalize_targets:
        means = torch.tensor(s.bbox_normalize_means, dtype=torch.float64, device=dev)
        stds = torch.tensor(s.bbox_normalize_stds, dtype=torch.float64, device=dev)
        targets = (targets.to(torch.float64) - means) / stds
    bt, iw, ow = regression_labels(targets, labels, num_classes, s.bbox_inside_weights)
    out_rois = torch.cat([s_img.to(rois.dtype).unsqueeze(1), s_boxes], dim=1)
    return RoiTargets(out_rois, labels, bt, iw, ow)


class ProposalTargetLayer(nn.Module):
    """``forward(rpn_rois [R, 5], gt_boxes [N × [G_i, 4]], gt_classes [N × [G_i]], *, generator)`` →
    :class:`RoiTargets`; see :func:`proposal_targets`. ``num_classes`` counts the background;
    ``settings``: a :class:`ProposalTargetSettings` (its defaults unless given)."""

    def __init__(self, num_classes: int, settings: ProposalTargetSettings | None = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.settings = settings if settings is not None else ProposalTargetSettings()

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int) -> ProposalTargetLayer:
        """Build from ``cfg.TRAIN`` (:meth:`ProposalTargetSettings.from_config`)."""
        return cls(num_classes, ProposalTargetSettings.from_config(cfg))

    def forward(
        self,
        rpn_rois: Tensor,
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
        *,
        generator: torch.Generator | None,
    ) -> RoiTargets:
        return proposal_targets(
            rpn_rois, gt_boxes, gt_classes, self.settings, num_classes=self.num_classes, generator=generator
        )
