"""Training targets: RPN anchor labels and Fast R-CNN RoI sampling (REFERENCE §4, §6), batched over images.

Glossary of shape letters:

- ``N``: images; ``H × W``: RPN feature map; ``A``: anchors per location; ``M = H·W·A`` anchors per image in
  the order ``(h·W + w)·A + a`` (see :mod:`frcnn_trt.anchors`).
- ``G_i``: ground-truth boxes of image ``i`` (already multiplied by the image scale, as py-faster-rcnn's
  ``gt_boxes`` blob); ``R``: RoIs (proposals or roidb boxes); ``S``: sampled RoIs over the whole batch.
- ``K``: classes including background (index 0); per-class regression columns ``4c..4c+3`` of ``[S, 4K]``.
- ``im_info [N, 3]``: ``(blob_h, blob_w, im_scale)`` per image.

Random sampling (py-faster-rcnn's ``npr.choice(..., replace=False)``) is a uniformly random subset of the
candidates, drawn from an explicit ``torch.Generator``: one ``torch.randperm`` over all candidates of the
batch gives every candidate a distinct random priority, and each image keeps its highest-priority
candidates. A seeded generator repeats a run exactly. The permutation is drawn on the **generator's**
device and then moved to the data's device (``randperm`` requires the two to match): a CPU generator
therefore samples the same anchors/RoIs whether the tensors live on CPU or CUDA (at the cost of one small
host-to-device copy per call); pass a CUDA generator to draw on the GPU instead. ``generator=None`` uses
torch's default generator of the data's device (reproducible only through ``torch.manual_seed``).
The streams are torch's, not NumPy's: the same seed does not pick the same anchors as py-faster-rcnn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from frcnn_trt.anchors import AnchorGenerator
from frcnn_trt.boxes import bbox_overlaps, bbox_transform
from frcnn_trt.errors import ModelError

__all__ = [
    "AnchorTargetLayer",
    "AnchorTargets",
    "ProposalTargetLayer",
    "RoiTargets",
    "anchor_targets",
    "proposal_targets",
    "sample_rois_from_roidb",
]


class AnchorTargets(NamedTuple):
    """RPN targets in anchor order ``(h, w, a)``.

    ``labels [N, M]`` int64 (1 fg, 0 bg, −1 ignore); ``bbox_targets``, ``bbox_inside_weights``,
    ``bbox_outside_weights`` ``[N, M, 4]`` float32.
    """

    labels: Tensor
    bbox_targets: Tensor
    bbox_inside_weights: Tensor
    bbox_outside_weights: Tensor


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


# ----------------------------------------------------------------------------------------------------------
# Sampling helpers


def _priorities(t: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A uniformly random permutation of ``0..t-1`` (distinct priorities), on ``device``."""
    draw_dev = generator.device if generator is not None else device
    return torch.randperm(t, generator=generator, device=draw_dev).to(device)


def _rank_in_groups(mask: Tensor, group: Tensor, priority: Tensor) -> Tensor:
    """For each element with ``mask`` set: its rank (0, 1, ...) by ``priority`` among the masked elements of
    its ``group``. Unmasked elements get ranks too (among the unmasked); callers ``&`` with ``mask``."""
    t = mask.numel()
    if t == 0:
        return torch.zeros(0, dtype=torch.long, device=mask.device)
    block = group * 2 + (~mask).long()
    order = torch.argsort(block * t + priority)  # keys are distinct: deterministic
    sorted_block = block[order]
    rank_sorted = torch.arange(t, device=mask.device) - torch.searchsorted(sorted_block, sorted_block)
    return torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)


def _group_counts(mask: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """``[num_groups]`` number of set ``mask`` elements per group (deterministic on every device)."""
    g = torch.sort(group[mask]).values
    bounds = torch.searchsorted(g, torch.arange(num_groups + 1, device=group.device, dtype=g.dtype))
    return bounds[1:] - bounds[:-1]


def _pad_gt(
    gt_boxes: Sequence[Tensor], device: torch.device, gt_classes: Sequence[Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pad per-image gt lists → ``boxes [N, G, 4]`` float64, ``classes [N, G]`` int64, ``valid [N, G]``,
    ``counts [N]`` (``G = max(1, max G_i)``; padded rows are zero and invalid)."""
    n = len(gt_boxes)
    for i, g in enumerate(gt_boxes):
        if g.dim() != 2 or g.shape[1] < 4:
            raise ModelError(f"gt_boxes[{i}] must be [G, 4] (extra columns ignored), got {tuple(g.shape)}")
        if gt_classes is not None and gt_classes[i].shape != (g.shape[0],):
            raise ModelError(f"gt_classes[{i}] must be [G={g.shape[0]}], got {tuple(gt_classes[i].shape)}")
    counts_list = [int(g.shape[0]) for g in gt_boxes]
    g_max = max([1, *counts_list])
    counts = torch.tensor(counts_list, dtype=torch.long, device=device)
    boxes = torch.zeros(n, g_max, 4, dtype=torch.float64, device=device)
    classes = torch.zeros(n, g_max, dtype=torch.long, device=device)
    valid = torch.zeros(n, g_max, dtype=torch.bool, device=device)
    total = sum(counts_list)
    if total > 0:
        cat = torch.cat([g[:, :4].to(device=device, dtype=torch.float64) for g in gt_boxes])
        img = torch.repeat_interleave(torch.arange(n, device=device), counts)
        pos = torch.arange(total, device=device) - (torch.cumsum(counts, 0) - counts)[img]
        boxes[img, pos] = cat
        valid[img, pos] = True
        if gt_classes is not None:
            classes[img, pos] = torch.cat([c.to(device=device, dtype=torch.long) for c in gt_classes])
    return boxes, classes, valid, counts


def _regression_labels(
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


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ModelError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


# ----------------------------------------------------------------------------------------------------------
# RPN: anchor targets


@torch.no_grad()
def anchor_targets(
    anchors: Tensor,
    gt_boxes: Sequence[Tensor],
    im_info: Tensor,
    *,
    generator: torch.Generator | None,
    allowed_border: float = 0,
    positive_overlap: float = 0.7,
    negative_overlap: float = 0.3,
    clobber_positives: bool = False,
    fg_fraction: float = 0.5,
    batch_size: int = 256,
    bbox_inside_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    positive_weight: float = -1.0,
) -> AnchorTargets:
    """py-faster-rcnn's ``AnchorTargetLayer`` for ``anchors [M, 4]``, ``gt_boxes`` (``N`` tensors
    ``[G_i, 4]``, scaled) and ``im_info [N, 3]``.

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
    _check_generator(generator)
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ModelError(f"anchors must be [M, 4], got {tuple(anchors.shape)}")
    n = len(gt_boxes)
    _check_info(im_info, n)
    if not positive_weight < 0 and not 0 < positive_weight < 1:
        raise ModelError(f"RPN_POSITIVE_WEIGHT must be < 0 (uniform) or in (0, 1), got {positive_weight}")
    dev = anchors.device
    m = anchors.shape[0]
    if m == 0:
        z = torch.zeros(n, 0, 4, dtype=torch.float32, device=dev)
        return AnchorTargets(torch.zeros(n, 0, dtype=torch.long, device=dev), z, z.clone(), z.clone())
    f64 = torch.float64
    a64 = anchors.to(f64)
    info = im_info.to(device=dev, dtype=f64)

    # inside-the-blob anchors, per image [N, M]
    h, w = info[:, 0:1], info[:, 1:2]
    b = float(allowed_border)
    inside = (a64[:, 0] >= -b) & (a64[:, 1] >= -b) & (a64[:, 2] < w + b) & (a64[:, 3] < h + b)

    gt, _, gt_valid, _ = _pad_gt(gt_boxes, dev)  # [N, G, 4], [N, G]
    overlaps = bbox_overlaps(a64.unsqueeze(0), gt)  # [N, M, G] float64
    overlaps = overlaps.masked_fill(~gt_valid.unsqueeze(1), -1.0)
    argmax = overlaps.argmax(dim=2)  # [N, M]; first maximum, like np.argmax
    max_ov = overlaps.gather(2, argmax.unsqueeze(2)).squeeze(2).clamp_min(0.0)  # no gt ⇒ 0
    gt_max = overlaps.masked_fill(~inside.unsqueeze(2), -1.0).amax(dim=1)  # [N, G] over inside anchors
    attains = ((overlaps == gt_max.unsqueeze(1)) & gt_valid.unsqueeze(1)).any(dim=2) & inside

    labels = torch.full((n, m), -1, dtype=torch.long, device=dev)
    neg = inside & (max_ov < negative_overlap)
    pos = attains | (inside & (max_ov >= positive_overlap))
    if not clobber_positives:
        labels[neg] = 0
        labels[pos] = 1
    else:
        labels[pos] = 1
        labels[neg] = 0

    # subsample: one random priority per anchor of the batch, shared by the fg and the bg draw
    flat = labels.reshape(-1)
    group = torch.arange(n, device=dev).repeat_interleave(m)
    priority = _priorities(n * m, generator, dev)
    num_fg = int(fg_fraction * batch_size)
    fg = flat == 1
    flat = torch.where(fg & (_rank_in_groups(fg, group, priority) >= num_fg), -1, flat)
    num_bg = batch_size - (flat == 1).reshape(n, m).sum(dim=1)  # [N]
    bg = flat == 0
    flat = torch.where(bg & (_rank_in_groups(bg, group, priority) >= num_bg[group]), -1, flat)
    labels = flat.reshape(n, m)

    # regression targets against each anchor's best gt, inside anchors of images with gt
    matched = gt.gather(1, argmax.unsqueeze(2).expand(n, m, 4))  # [N, M, 4]
    targets = bbox_transform(a64.unsqueeze(0).expand(n, m, 4), matched).to(torch.float32)
    has_target = inside & gt_valid.any(dim=1, keepdim=True)
    targets = torch.where(has_target.unsqueeze(2), targets, torch.zeros((), dtype=torch.float32, device=dev))

    is_fg = labels == 1
    is_bg = labels == 0
    iw_row = torch.tensor([float(v) for v in bbox_inside_weights], dtype=torch.float32, device=dev)
    inside_w = torch.where(is_fg.unsqueeze(2), iw_row, torch.zeros((), dtype=torch.float32, device=dev))
    if positive_weight < 0:
        num_examples = (labels >= 0).sum(dim=1, keepdim=True).to(f64)  # [N, 1]
        pos_w = neg_w = 1.0 / num_examples
    else:
        pos_w = positive_weight / is_fg.sum(dim=1, keepdim=True).to(f64)
        neg_w = (1.0 - positive_weight) / is_bg.sum(dim=1, keepdim=True).to(f64)
    zero64 = torch.zeros((), dtype=f64, device=dev)
    out_w = torch.where(is_fg, pos_w, torch.where(is_bg, neg_w, zero64)).to(torch.float32)
    outside_w = out_w.unsqueeze(2).expand(n, m, 4).contiguous()
    return AnchorTargets(labels, targets, inside_w, outside_w)


def _check_info(im_info: Tensor, n: int) -> None:
    if im_info.dim() != 2 or im_info.shape[0] != n or im_info.shape[1] < 2:
        raise ModelError(f"im_info must be [N={n}, 3] (one row per gt list), got {tuple(im_info.shape)}")


class AnchorTargetLayer(nn.Module):
    """``forward(feat_size (H, W), gt_boxes [N × [G_i, 4]], im_info [N, 3], *, generator)`` →
    :class:`AnchorTargets` ``[N, H·W·A, ...]``; see :func:`anchor_targets`. Defaults are REFERENCE §1's.
    """

    def __init__(
        self,
        *,
        feat_stride: int = 16,
        anchor_scales: Sequence[float] = (8, 16, 32),
        anchor_ratios: Sequence[float] = (0.5, 1, 2),
        allowed_border: float = 0,
        positive_overlap: float = 0.7,
        negative_overlap: float = 0.3,
        clobber_positives: bool = False,
        fg_fraction: float = 0.5,
        batch_size: int = 256,
        bbox_inside_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        positive_weight: float = -1.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator(
            feat_stride=feat_stride, anchor_scales=anchor_scales, anchor_ratios=anchor_ratios
        )
        self.allowed_border = float(allowed_border)
        self.positive_overlap = float(positive_overlap)
        self.negative_overlap = float(negative_overlap)
        self.clobber_positives = bool(clobber_positives)
        self.fg_fraction = float(fg_fraction)
        self.batch_size = int(batch_size)
        self.bbox_inside_weights = tuple(float(v) for v in bbox_inside_weights)
        self.positive_weight = float(positive_weight)

    @classmethod
    def from_config(cls, cfg: Any) -> AnchorTargetLayer:
        """Build from ``cfg.MODEL.*`` and ``cfg.TRAIN.RPN_*``."""
        t = cfg.TRAIN
        return cls(
            feat_stride=cfg.MODEL.FEAT_STRIDE,
            anchor_scales=cfg.MODEL.ANCHOR_SCALES,
            anchor_ratios=cfg.MODEL.ANCHOR_RATIOS,
            positive_overlap=t.RPN_POSITIVE_OVERLAP,
            negative_overlap=t.RPN_NEGATIVE_OVERLAP,
            clobber_positives=t.RPN_CLOBBER_POSITIVES,
            fg_fraction=t.RPN_FG_FRACTION,
            batch_size=t.RPN_BATCHSIZE,
            bbox_inside_weights=t.RPN_BBOX_INSIDE_WEIGHTS,
            positive_weight=t.RPN_POSITIVE_WEIGHT,
        )

    def forward(
        self,
        feat_size: tuple[int, int],
        gt_boxes: Sequence[Tensor],
        im_info: Tensor,
        *,
        generator: torch.Generator | None,
    ) -> AnchorTargets:
        anchors = self.anchor_generator(int(feat_size[0]), int(feat_size[1]), device=im_info.device)
        return anchor_targets(
            anchors, gt_boxes, im_info, generator=generator, allowed_border=self.allowed_border,
            positive_overlap=self.positive_overlap, negative_overlap=self.negative_overlap,
            clobber_positives=self.clobber_positives, fg_fraction=self.fg_fraction,
            batch_size=self.batch_size, bbox_inside_weights=self.bbox_inside_weights,
            positive_weight=self.positive_weight,
        )


# ----------------------------------------------------------------------------------------------------------
# Fast R-CNN: RoI sampling


def _sample_fg_bg(
    fg: Tensor,
    bg: Tensor,
    group: Tensor,
    num_groups: int,
    rois_per_image: int,
    fg_rois_per_image: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """py-faster-rcnn ``_sample_rois`` selection over flat candidates with image ``group``: at most
    ``fg_rois_per_image`` fg, then at most ``rois_per_image − #fg`` bg per image. Returns (selected
    candidate indices in output order [S], is-fg flag [S])."""
    dev = fg.device
    t = fg.numel()
    priority = _priorities(t, generator, dev)
    sel_fg = fg & (_rank_in_groups(fg, group, priority) < fg_rois_per_image)
    n_fg = _group_counts(sel_fg, group, num_groups)
    bg = bg & ~sel_fg  # a RoI is never sampled twice (only possible when FG_THRESH < BG_THRESH_HI)
    sel_bg = bg & (_rank_in_groups(bg, group, priority) < (rois_per_image - n_fg)[group])
    sel = torch.nonzero(sel_fg | sel_bg).squeeze(1)
    key = (group[sel] * 2 + (~sel_fg[sel]).long()) * t + priority[sel]
    sel = sel[torch.argsort(key)]
    return sel, sel_fg[sel]


@torch.no_grad()
def proposal_targets(
    rpn_rois: Tensor,
    gt_boxes: Sequence[Tensor],
    gt_classes: Sequence[Tensor],
    *,
    num_classes: int,
    generator: torch.Generator | None,
    rois_per_image: int = 128,
    fg_fraction: float = 0.25,
    fg_thresh: float = 0.5,
    bg_thresh_hi: float = 0.5,
    bg_thresh_lo: float = 0.1,
    normalize_targets: bool = True,
    bbox_normalize_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    bbox_normalize_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
    bbox_inside_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> RoiTargets:
    """py-faster-rcnn's end2end ``ProposalTargetLayer``.

    ``rpn_rois [R, 5]`` (batch index, x1, y1, x2, y2), ``gt_boxes`` / ``gt_classes``: ``N`` tensors
    ``[G_i, 4]`` (scaled) and ``[G_i]`` (1..K−1). Candidates per image = its proposals **+ its gt boxes**;
    IoU (+1, float64) → best gt; fg: IoU ≥ ``fg_thresh``, at most ``round(fg_fraction · rois_per_image)``
    (half to even, like ``np.round``); bg: ``bg_thresh_lo ≤ IoU < bg_thresh_hi``, at most
    ``rois_per_image − #fg`` — the total is smaller when bg is scarce. bg labels are 0. Targets =
    ``encode(roi, gt)`` (float32), then ``(t − means) / stds`` if ``normalize_targets``
    (``BBOX_NORMALIZE_TARGETS_PRECOMPUTED``), written to columns ``4c..4c+3``; outside = inside > 0.
    Images with no gt: max IoU is 0, so their proposals are bg candidates when ``bg_thresh_lo ≤ 0``.
    """
    _check_generator(generator)
    if rpn_rois.dim() != 2 or rpn_rois.shape[1] != 5:
        raise ModelError(f"rpn_rois must be [R, 5] (batch_idx, x1, y1, x2, y2), got {tuple(rpn_rois.shape)}")
    if len(gt_classes) != len(gt_boxes):
        raise ModelError(f"gt_boxes and gt_classes differ in length: {len(gt_boxes)} vs {len(gt_classes)}")
    if num_classes < 2:
        raise ModelError(f"num_classes counts the background and must be ≥ 2, got {num_classes}")
    n = len(gt_boxes)
    dev = rpn_rois.device
    rois = rpn_rois.detach()
    gt, gt_cls, gt_valid, counts = _pad_gt(gt_boxes, dev, gt_classes)

    # candidates = proposals + gt boxes appended (per image)
    gt_img = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    gt_flat = gt[gt_valid].to(rois.dtype)  # row-major: image order, gt order
    boxes = torch.cat([rois[:, 1:5], gt_flat])
    img = torch.cat([rois[:, 0].long(), gt_img])

    overlaps = bbox_overlaps(boxes.to(torch.float64).unsqueeze(1), gt[img]).squeeze(1)  # [T, G]
    overlaps = overlaps.masked_fill(~gt_valid[img], -1.0)
    assign = overlaps.argmax(dim=1)
    max_ov = overlaps.gather(1, assign.unsqueeze(1)).squeeze(1).clamp_min(0.0)

    fg = max_ov >= fg_thresh
    bg = (max_ov < bg_thresh_hi) & (max_ov >= bg_thresh_lo)
    fg_per_image = round(fg_fraction * rois_per_image)  # half to even, like np.round
    sel, sel_is_fg = _sample_fg_bg(fg, bg, img, n, int(rois_per_image), fg_per_image, generator)

    s_img, s_assign, s_boxes = img[sel], assign[sel], boxes[sel]
    labels = torch.where(sel_is_fg, gt_cls[s_img, s_assign], torch.zeros_like(s_img))
    targets = bbox_transform(s_boxes, gt[s_img, s_assign].to(s_boxes.dtype))
    if normalize_targets:
        means = torch.tensor([float(v) for v in bbox_normalize_means], dtype=torch.float64, device=dev)
        stds = torch.tensor([float(v) for v in bbox_normalize_stds], dtype=torch.float64, device=dev)
        targets = (targets.to(torch.float64) - means) / stds
    bt, iw, ow = _regression_labels(targets, labels, num_classes, bbox_inside_weights)
    out_rois = torch.cat([s_img.to(rois.dtype).unsqueeze(1), s_boxes], dim=1)
    return RoiTargets(out_rois, labels, bt, iw, ow)


class ProposalTargetLayer(nn.Module):
    """``forward(rpn_rois [R, 5], gt_boxes [N × [G_i, 4]], gt_classes [N × [G_i]], *, generator)`` →
    :class:`RoiTargets`; see :func:`proposal_targets`. Defaults: REFERENCE §1/§6 end2end values except
    ``bg_thresh_lo`` (the config default 0.1; the end2end yml sets 0.0)."""

    def __init__(
        self,
        *,
        num_classes: int,
        rois_per_image: int = 128,
        fg_fraction: float = 0.25,
        fg_thresh: float = 0.5,
        bg_thresh_hi: float = 0.5,
        bg_thresh_lo: float = 0.1,
        normalize_targets: bool = True,
        bbox_normalize_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        bbox_normalize_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        bbox_inside_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.rois_per_image = int(rois_per_image)
        self.fg_fraction = float(fg_fraction)
        self.fg_thresh = float(fg_thresh)
        self.bg_thresh_hi = float(bg_thresh_hi)
        self.bg_thresh_lo = float(bg_thresh_lo)
        self.normalize_targets = bool(normalize_targets)
        self.bbox_normalize_means = tuple(float(v) for v in bbox_normalize_means)
        self.bbox_normalize_stds = tuple(float(v) for v in bbox_normalize_stds)
        self.bbox_inside_weights = tuple(float(v) for v in bbox_inside_weights)

    @classmethod
    def from_config(cls, cfg: Any, num_classes: int) -> ProposalTargetLayer:
        """Build from ``cfg.TRAIN``: ``rois_per_image = BATCH_SIZE // IMS_PER_BATCH``, FG/BG thresholds,
        ``normalize_targets = BBOX_NORMALIZE_TARGETS_PRECOMPUTED``, means/stds, inside weights."""
        t = cfg.TRAIN
        return cls(
            num_classes=num_classes,
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

    def forward(
        self,
        rpn_rois: Tensor,
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
        *,
        generator: torch.Generator | None,
    ) -> RoiTargets:
        return proposal_targets(
            rpn_rois, gt_boxes, gt_classes, num_classes=self.num_classes, generator=generator,
            rois_per_image=self.rois_per_image, fg_fraction=self.fg_fraction, fg_thresh=self.fg_thresh,
            bg_thresh_hi=self.bg_thresh_hi, bg_thresh_lo=self.bg_thresh_lo,
            normalize_targets=self.normalize_targets, bbox_normalize_means=self.bbox_normalize_means,
            bbox_normalize_stds=self.bbox_normalize_stds, bbox_inside_weights=self.bbox_inside_weights,
        )


@torch.no_grad()
def sample_rois_from_roidb(
    rois: Sequence[Tensor],
    max_overlaps: Sequence[Tensor],
    max_classes: Sequence[Tensor],
    bbox_targets: Sequence[Tensor],
    *,
    num_classes: int,
    generator: torch.Generator | None,
    rois_per_image: int = 64,
    fg_fraction: float = 0.25,
    fg_thresh: float = 0.5,
    bg_thresh_hi: float = 0.5,
    bg_thresh_lo: float = 0.1,
    bbox_inside_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> RoiTargets:
    """Alt-opt Fast R-CNN minibatch sampling (``roi_data_layer/minibatch.py`` ``_sample_rois``).

    Per image ``i`` (all lists of length ``N``): ``rois[i] [R_i, 4]`` already multiplied by the image scale
    (gt boxes first, then proposals, as the roidb), ``max_overlaps[i] [R_i]``, ``max_classes[i] [R_i]`` and
    the roidb's already-normalised ``bbox_targets[i]``: ``[R_i, 5]`` in py-faster-rcnn's layout (column 0 =
    regression class, used as the class as in the original) or ``[R_i, 4]`` (the class is then the sampled
    label — identical whenever ``TRAIN.BBOX_THRESH == TRAIN.FG_THRESH``, the default). Samples at most
    ``round(fg_fraction · rois_per_image)`` fg (overlap ≥ ``fg_thresh``) and bg in ``[lo, hi)`` up to
    ``rois_per_image`` in all (16 / 64 per image by default).
    """
    _check_generator(generator)
    n = len(rois)
    if not (len(max_overlaps) == len(max_classes) == len(bbox_targets) == n) or n == 0:
        raise ModelError(f"rois, max_overlaps, max_classes, bbox_targets must be non-empty lists of equal "
                         f"length, got {len(rois)}, {len(max_overlaps)}, {len(max_classes)}, "
                         f"{len(bbox_targets)}")
    for i in range(n):
        r = rois[i].shape[0] if rois[i].dim() == 2 else -1
        if (rois[i].dim() != 2 or rois[i].shape[1] != 4 or max_overlaps[i].shape != (r,)
                or max_classes[i].shape != (r,) or bbox_targets[i].dim() != 2
                or bbox_targets[i].shape[0] != r or bbox_targets[i].shape[1] not in (4, 5)):
            raise ModelError(f"image {i}: need rois [R, 4], max_overlaps [R], max_classes [R], bbox_targets "
                             f"[R, 4 or 5], got {tuple(rois[i].shape)}, {tuple(max_overlaps[i].shape)}, "
                             f"{tuple(max_classes[i].shape)}, {tuple(bbox_targets[i].shape)}")
    if num_classes < 2:
        raise ModelError(f"num_classes counts the background and must be ≥ 2, got {num_classes}")
    widths = {int(t.shape[1]) for t in bbox_targets}
    if len(widths) != 1:
        raise ModelError(f"bbox_targets mix [R, 4] and [R, 5] layouts: {sorted(widths)}")
    dev = rois[0].device
    counts = torch.tensor([int(r.shape[0]) for r in rois], dtype=torch.long, device=dev)
    img = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    boxes = torch.cat([r.to(dev) for r in rois])
    ov = torch.cat([o.to(dev) for o in max_overlaps])
    cls = torch.cat([c.to(device=dev, dtype=torch.long) for c in max_classes])
    tg = torch.cat([t.to(dev) for t in bbox_targets])

    fg = ov >= fg_thresh
    bg = (ov < bg_thresh_hi) & (ov >= bg_thresh_lo)
    fg_per_image = round(fg_fraction * rois_per_image)  # half to even, like np.round
    sel, sel_is_fg = _sample_fg_bg(fg, bg, img, n, int(rois_per_image), fg_per_image, generator)

    labels = torch.where(sel_is_fg, cls[sel], torch.zeros_like(sel))
    t_sel = tg[sel]
    if t_sel.shape[1] == 5:
        reg_cls, t_sel = t_sel[:, 0].long(), t_sel[:, 1:]
    else:
        reg_cls = labels
    bt, iw, ow = _regression_labels(t_sel, reg_cls, num_classes, bbox_inside_weights)
    s_boxes = boxes[sel]
    out_rois = torch.cat([img[sel].to(s_boxes.dtype).unsqueeze(1), s_boxes], dim=1)
    return RoiTargets(out_rois, labels, bt, iw, ow)
