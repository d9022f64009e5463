"""py-faster-rcnn's proposal layer (``lib/rpn/proposal_layer.py``, docs/REFERENCE.md §5), batched over images.

Glossary of shape letters:

- ``N``: images; ``H × W``: RPN feature map; ``A``: anchors per location; ``M = H·W·A`` anchors per image,
  in the order ``(h·W + w)·A + a`` (see :mod:`frcnn_trt.anchors`).
- ``R``: proposals kept over the whole batch (sorted by image, then by descending score).
- ``im_info [N, 3]``: ``(blob_h, blob_w, im_scale)`` of each image (the scaled, unpadded image size).

Per image, exactly as the original (the settings are a :class:`ProposalSettings`): decode every anchor
(float32) → clip to ``(blob_h, blob_w)`` → drop boxes narrower or shorter than ``min_size · im_scale`` (+1
widths) → sort by foreground score, descending → keep the first ``pre_nms_top_n`` if it is > 0 → NMS (IoU >
``nms_thresh`` suppressed, +1 geometry) → keep the first ``post_nms_top_n`` if it is > 0. Output rois
``[R, 5]`` = ``(batch_idx, x1, y1, x2, y2)`` and scores ``[R, 1]``, both float32.

Vectorised: one row-wise sort for all images, one batched NMS with the image index as the group (run on a
growing prefix of each image's ranking when ``post_nms_top_n`` caps the output — exact, see
:func:`_nms_prefix`); no Python loop over boxes or images. Ties in score are ordered by anchor index (the original's
``argsort()[::-1]`` leaves their order unspecified). No gradient flows (the original has no backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from frcnn_trt.anchors import (
    AnchorGenerator,
    AnchorSettings,
    rpn_bbox_to_anchor_order,
    rpn_fg_scores_to_anchor_order,
)
from frcnn_trt.boxes import _nms_in_order, bbox_transform_inv, clip_boxes
from frcnn_trt.config import Config
from frcnn_trt.errors import ModelError

__all__ = ["ProposalLayer", "ProposalSettings", "decode_proposals", "proposal_layer"]

PHASES = ("TRAIN", "TEST")


@dataclass(frozen=True)
class ProposalSettings:
    """The proposal layer's settings; the defaults are py-faster-rcnn's TEST block (6000 / 300 / 0.7 / 16).

    ``pre_nms_top_n`` / ``post_nms_top_n``: candidates kept before / after NMS per image (≤ 0: no cap);
    ``nms_thresh``: IoU above which NMS suppresses; ``min_size``: least box side, in original-image pixels
    (multiplied by each image's scale).
    """

    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    nms_thresh: float = 0.7
    min_size: float = 16.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pre_nms_top_n", int(self.pre_nms_top_n))
        object.__setattr__(self, "post_nms_top_n", int(self.post_nms_top_n))
        object.__setattr__(self, "nms_thresh", float(self.nms_thresh))
        object.__setattr__(self, "min_size", float(self.min_size))

    @classmethod
    def from_config(cls, cfg: Config, phase: str = "TEST") -> ProposalSettings:
        """From ``cfg.<phase>.RPN_{PRE,POST}_NMS_TOP_N``, ``RPN_NMS_THRESH``, ``RPN_MIN_SIZE``; ``phase`` is
        ``"TRAIN"`` or ``"TEST"`` (the original's ``str(self.phase)``)."""
        if phase not in PHASES:
            raise ModelError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
        block = cfg.TRAIN if phase == "TRAIN" else cfg.TEST
        return cls(block.RPN_PRE_NMS_TOP_N, block.RPN_POST_NMS_TOP_N, block.RPN_NMS_THRESH, block.RPN_MIN_SIZE)


def _check_im_info(im_info: Tensor, n: int) -> None:
    if im_info.dim() != 2 or im_info.shape[0] != n or im_info.shape[1] < 3:
        raise ModelError(f"im_info must be [N={n}, 3] (blob_h, blob_w, im_scale), got {tuple(im_info.shape)}")


@torch.no_grad()
def decode_proposals(
    scores_fg: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    im_info: Tensor,
    settings: ProposalSettings,
) -> tuple[Tensor, Tensor]:
    """Proposals from per-anchor outputs in anchor order.

    ``scores_fg [N, M]`` (foreground probability), ``deltas [N, M, 4]``, ``anchors [M, 4]``,
    ``im_info [N, 3]`` → ``(rois [R, 5], scores [R, 1])`` float32 on the inputs' device. This is the
    post-processing every backend shares (an exported RPN's outputs go through here too).
    """
    if scores_fg.dim() != 2:
        raise ModelError(f"scores_fg must be [N, M], got {tuple(scores_fg.shape)}")
    n, m = scores_fg.shape
    if deltas.shape != (n, m, 4):
        raise ModelError(f"deltas must be [N={n}, M={m}, 4], got {tuple(deltas.shape)}")
    if anchors.shape != (m, 4):
        raise ModelError(f"anchors must be [M={m}, 4], got {tuple(anchors.shape)}")
    _check_im_info(im_info, n)
    dev = scores_fg.device
    f32 = torch.float32
    scores = scores_fg.detach().to(f32)
    info = im_info.detach().to(device=dev, dtype=f32)

    # 1-2. decode in float32 and clip to each image's blob size
    anchors32 = anchors.detach().to(device=dev, dtype=f32)
    boxes = bbox_transform_inv(anchors32, deltas.detach().to(f32))  # [N, M, 4]
    boxes = clip_boxes(boxes, info[:, None, :2])

    # 3. min-size filter (+1 widths), threshold min_size · im_scale in float32 like the original
    ws = boxes[..., 2] - boxes[..., 0] + 1
    hs = boxes[..., 3] - boxes[..., 1] + 1
    min_sz = (info[:, 2] * settings.min_size).unsqueeze(1)  # [N, 1]
    valid = (ws >= min_sz) & (hs >= min_sz)  # [N, M]

    # 4. sort by score (stable, descending), valid boxes first
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    valid_sorted = valid.gather(1, order).to(torch.int8)
    valid_first = torch.sort(valid_sorted, dim=1, descending=True, stable=True).indices
    order = order.gather(1, valid_first)
    n_cand = valid.sum(dim=1)  # [N]

    # 5. pre-NMS cap
    pre_nms_top_n, post_nms_top_n = settings.pre_nms_top_n, settings.post_nms_top_n
    if pre_nms_top_n > 0:
        order = order[:, : min(pre_nms_top_n, m)]
        n_cand = n_cand.clamp(max=pre_nms_top_n)
    t = order.shape[1]
    cand = torch.arange(t, device=dev).unsqueeze(0) < n_cand.unsqueeze(1)  # [N, T]
    img = torch.arange(n, device=dev).unsqueeze(1).expand(n, t)[cand]  # flattened (image, rank) order
    idx = order[cand]
    cand_boxes = boxes[img, idx]
    cand_scores = scores[img, idx]

    # 6. NMS per image (rows are already in priority order within each image)
    if post_nms_top_n > 0:
        rank = torch.arange(t, device=dev).unsqueeze(0).expand(n, t)[cand]
        keep = _nms_prefix(cand_boxes, img, rank, n_cand, n, settings.nms_thresh, post_nms_top_n)
    else:
        keep = _nms_in_order(cand_boxes, settings.nms_thresh, img)  # ascending: still (image, rank) order

    # 7. post-NMS cap: position of each kept box within its image
    if post_nms_top_n > 0 and keep.numel() > 0:
        kimg = img[keep]
        pos = torch.arange(keep.numel(), device=dev) - torch.searchsorted(kimg, kimg)
        keep = keep[pos < post_nms_top_n]

    rois = torch.cat([img[keep].to(f32).unsqueeze(1), cand_boxes[keep]], dim=1)
    return rois, cand_scores[keep].unsqueeze(1)


def _nms_prefix(
    boxes: Tensor, img: Tensor, rank: Tensor, n_cand: Tensor, n: int, thresh: float, post: int
) -> Tensor:
    """Greedy NMS over each image's ranked candidates in consecutive chunks, stopping once every image has
    ``post`` survivors (or has run out of candidates).

    Exact: whether a box survives greedy NMS depends only on the survivors ranked before it, and survivors
    never suppress each other. So each chunk runs through NMS together with the survivors so far (first in
    the order; the boxes they suppressed earlier are gone): the result is those survivors plus the chunk's.
    Saves most of the O(R²) NMS work when ``pre_nms_top_n`` is large (``rpn_generate``: ~15k candidates,
    2000 kept). Rows are in (image, rank) order; returns ascending indices.
    """
    most = int(n_cand.max()) if n > 0 else 0
    kept = torch.zeros(0, dtype=torch.long, device=boxes.device)
    done = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    lo, hi = 0, min(max(post, 512), most)
    while True:
        chunk = torch.nonzero((rank >= lo) & (rank < hi) & ~done[img]).squeeze(1)
        finished = done[img[kept]]  # images already at `post` stay out of the NMS call
        sub = torch.sort(torch.cat([kept[~finished], chunk])).values
        kept = torch.sort(torch.cat([kept[finished], sub[_nms_in_order(boxes[sub], thresh, img[sub])]])).values
        if hi >= most:
            return kept
        per_image = torch.bincount(img[kept], minlength=n)
        done = (per_image >= post) | (n_cand <= hi)
        if bool(done.all()):
            return kept
        # the next chunk: where the slowest image should reach `post` at its survival rate so far (+20 %)
        rate = max(float((per_image[~done].float() / hi).min()), 0.05)
        need = post - int(per_image[~done].min())
        lo, hi = hi, min(hi + max(int(need / rate * 1.2), 512), most)


def proposal_layer(
    rpn_cls_prob: Tensor,
    rpn_bbox_pred: Tensor,
    im_info: Tensor,
    settings: ProposalSettings,
    anchors: AnchorSettings | None = None,
) -> tuple[Tensor, Tensor]:
    """Proposals from py-faster-rcnn blob layouts.

    ``rpn_cls_prob (N, 2A, H, W)`` (softmax output, fg in channels ``A..2A-1``), ``rpn_bbox_pred
    (N, 4A, H, W)`` (channel ``4a + k``), ``im_info [N, 3]`` → ``(rois [R, 5], scores [R, 1])``.
    Builds the anchors (default :class:`~frcnn_trt.anchors.AnchorSettings`) on every call; :class:`ProposalLayer`
    caches them.
    """
    return _blobs_to_proposals(AnchorGenerator(anchors), rpn_cls_prob, rpn_bbox_pred, im_info, settings)


def _blobs_to_proposals(
    gen: AnchorGenerator, rpn_cls_prob: Tensor, rpn_bbox_pred: Tensor, im_info: Tensor, settings: ProposalSettings
) -> tuple[Tensor, Tensor]:
    a = gen.num_anchors
    if rpn_cls_prob.dim() != 4 or rpn_cls_prob.shape[1] != 2 * a:
        raise ModelError(f"rpn_cls_prob must be (N, 2A={2 * a}, H, W), got {tuple(rpn_cls_prob.shape)}")
    n, _, h, w = rpn_cls_prob.shape
    if rpn_bbox_pred.shape != (n, 4 * a, h, w):
        raise ModelError(f"rpn_bbox_pred must be (N={n}, 4A={4 * a}, H={h}, W={w}), got "
                         f"{tuple(rpn_bbox_pred.shape)}")
    anchors = gen(h, w, device=rpn_cls_prob.device)
    return decode_proposals(
        rpn_fg_scores_to_anchor_order(rpn_cls_prob), rpn_bbox_to_anchor_order(rpn_bbox_pred), anchors, im_info,
        settings,
    )


class ProposalLayer(nn.Module):
    """``forward(rpn_cls_prob (N, 2A, H, W), rpn_bbox_pred (N, 4A, H, W), im_info [N, 3])`` →
    ``(rois [R, 5], scores [R, 1])``; see the module docstring.

    ``settings``: a :class:`ProposalSettings` (default: py-faster-rcnn's TEST block); ``anchor_generator``:
    the anchors, cached per map size (default: :class:`~frcnn_trt.anchors.AnchorSettings`'s). :meth:`from_config`
    picks the TRAIN or TEST block like the original's ``str(self.phase)``.
    """

    def __init__(
        self, settings: ProposalSettings | None = None, anchor_generator: AnchorGenerator | None = None
    ) -> None:
        super().__init__()
        self.settings = settings if settings is not None else ProposalSettings()
        self.anchor_generator = anchor_generator if anchor_generator is not None else AnchorGenerator()

    @classmethod
    def from_config(cls, cfg: Config, phase: str = "TEST") -> ProposalLayer:
        """Build from ``cfg.MODEL`` (anchors) and ``cfg.<phase>`` (:meth:`ProposalSettings.from_config`)."""
        return cls(ProposalSettings.from_config(cfg, phase), AnchorGenerator.from_config(cfg))

    def with_settings(self, settings: ProposalSettings) -> ProposalLayer:
        """A layer with other settings that shares this one's anchors (and their cache)."""
        return ProposalLayer(settings, self.anchor_generator)

    def forward(self, rpn_cls_prob: Tensor, rpn_bbox_pred: Tensor, im_info: Tensor) -> tuple[Tensor, Tensor]:
        return _blobs_to_proposals(self.anchor_generator, rpn_cls_prob, rpn_bbox_pred, im_info, self.settings)

    def extra_repr(self) -> str:
        s = self.settings
        return (f"pre_nms_top_n={s.pre_nms_top_n}, post_nms_top_n={s.post_nms_top_n}, nms_thresh={s.nms_thresh}, "
                f"min_size={s.min_size}")
