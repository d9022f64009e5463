"""Test-time detection post-processing (``lib/fast_rcnn/test.py``, docs/REFERENCE.md §11).

Glossary of shape letters:

- ``N``: images; ``R``: RoIs (over the batch, each with its image index); ``K``: classes including
  background (class 0 is never reported); ``D``: detections kept.
- ``[R, 4K]``: one box per class, columns ``4k..4k+3``.

:func:`im_detect_postprocess` is ``im_detect``'s tail: boxes = rois / im_scale, decode the raw (already
un-normalised) deltas, clip to the original image. :func:`detections_from_scores` is ``test_net``'s loop over
classes, vectorised: every (RoI, class ≥ 1) pair with score **> score_thresh** (strict), NMS per class
(IoU > ``nms_thresh`` suppressed, +1 geometry), then over all classes keep the detections whose score is
**≥** the ``max_per_image``-th largest — ties at that score can leave more than ``max_per_image``, as in the
original.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from frcnn_trt.boxes import batched_nms, bbox_transform_inv, clip_boxes
from frcnn_trt.errors import ModelError

__all__ = ["batched_detections_from_scores", "detections_from_scores", "im_detect_postprocess"]


@torch.no_grad()
def im_detect_postprocess(
    rois_scaled: Tensor,
    cls_prob: Tensor,
    bbox_pred: Tensor,
    im_scale: float | Tensor,
    orig_hw: Sequence[float] | Tensor,
    bbox_reg: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(scores [R, K], pred_boxes [R, 4K])`` in original-image coordinates.

    ``rois_scaled``: ``[R, 4]`` or ``[R, 5]`` (batch index first) in blob coordinates; ``cls_prob [R, K]``
    (softmax); ``bbox_pred [R, 4K]`` raw deltas. ``im_scale``: a number, or ``Tensor[N]`` indexed by each
    RoI's batch index; ``orig_hw``: one ``(H, W)`` or ``Tensor[N, 2]`` likewise. With ``bbox_reg=False``
    the RoI box is repeated for every class, unclipped (as the original).
    """
    if rois_scaled.dim() != 2 or rois_scaled.shape[1] not in (4, 5):
        raise ModelError(f"rois_scaled must be [R, 4] or [R, 5], got {tuple(rois_scaled.shape)}")
    r = rois_scaled.shape[0]
    if cls_prob.dim() != 2 or cls_prob.shape[0] != r:
        raise ModelError(f"cls_prob must be [R={r}, K], got {tuple(cls_prob.shape)}")
    k = cls_prob.shape[1]
    if bbox_reg and bbox_pred.shape != (r, 4 * k):
        raise ModelError(f"bbox_pred must be [R={r}, 4K={4 * k}], got {tuple(bbox_pred.shape)}")
    dev = rois_scaled.device
    if rois_scaled.shape[1] == 5:
        img, boxes = rois_scaled[:, 0].long(), rois_scaled[:, 1:5]
    else:
        img, boxes = torch.zeros(r, dtype=torch.long, device=dev), rois_scaled
    # Divide by a tensor, not a Python number: CUDA turns division by a scalar into a multiplication by
    # its reciprocal, which is not always the same float32 value.
    scale = torch.as_tensor(im_scale, dtype=boxes.dtype, device=dev)
    if scale.dim() == 1:
        scale = scale[img].unsqueeze(1)
    elif scale.dim() != 0:
        raise ModelError(f"im_scale must be a number or Tensor[N], got shape {tuple(scale.shape)}")
    boxes = boxes / scale
    if not bbox_reg:
        return cls_prob, boxes.repeat(1, k)
    pred = bbox_transform_inv(boxes, bbox_pred)
    hw = torch.as_tensor(orig_hw, device=dev)
    if hw.dim() == 2:
        hw = hw[img]
    elif hw.shape != (2,):
        raise ModelError(f"orig_hw must be (H, W) or [N, 2], got {tuple(hw.shape)}")
    return cls_prob, clip_boxes(pred, hw)


def _select(
    scores: Tensor, boxes: Tensor, img: Tensor, num_images: int, score_thresh: float, nms_thresh: float,
    max_per_image: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r, k = scores.shape
    if boxes.shape != (r, 4 * k):
        raise ModelError(f"boxes must be [R={r}, 4K={4 * k}], got {tuple(boxes.shape)}")
    dev = scores.device
    # (roi, class ≥ 1) pairs above the threshold; comparison in the scores' dtype, like numpy's float32
    above = scores[:, 1:] > score_thresh
    roi_idx, cls_idx = torch.nonzero(above, as_tuple=True)
    cls_idx = cls_idx + 1
    det_scores = scores[roi_idx, cls_idx]
    det_boxes = boxes.reshape(r, k, 4)[roi_idx, cls_idx]
    det_img = img[roi_idx]
    keep = batched_nms(det_boxes, det_scores, det_img * k + cls_idx, nms_thresh)  # descending score
    det_boxes, det_scores, cls_idx, det_img = det_boxes[keep], det_scores[keep], cls_idx[keep], det_img[keep]

    if max_per_image > 0 and det_scores.numel() > 0:
        # per image: threshold = max_per_image-th largest score (−inf if fewer); keep score ≥ threshold
        by_img = torch.sort(det_img, stable=True).indices  # keeps descending score within an image
        s_sorted, i_sorted = det_scores[by_img], det_img[by_img]
        rank = torch.arange(s_sorted.numel(), device=dev) - torch.searchsorted(i_sorted, i_sorted)
        at_k = rank == max_per_image - 1
        thresh = torch.full((num_images,), float("-inf"), dtype=det_scores.dtype, device=dev)
        thresh[i_sorted[at_k]] = s_sorted[at_k]
        ok = det_scores >= thresh[det_img]
        det_boxes, det_scores, cls_idx, det_img = det_boxes[ok], det_scores[ok], cls_idx[ok], det_img[ok]

    # output order: image, class, descending score (the original's all_boxes[class][image] lists)
    order = torch.sort(det_img * k + cls_idx, stable=True).indices
    return det_boxes[order], det_scores[order], cls_idx[order], det_img[order]


@torch.no_grad()
def detections_from_scores(
    scores: Tensor,
    boxes: Tensor,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.3,
    max_per_image: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image: ``scores [R, K]``, ``boxes [R, 4K]`` (decoded, clipped) → ``(boxes [D, 4], scores [D],
    labels [D])``, sorted by class then descending score. ``max_per_image ≤ 0`` disables the cap."""
    if scores.dim() != 2:
        raise ModelError(f"scores must be [R, K], got {tuple(scores.shape)}")
    img = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    b, s, c, _ = _select(scores, boxes, img, 1, score_thresh, nms_thresh, max_per_image)
    return b, s, c


@torch.no_grad()
def batched_detections_from_scores(
    scores: Tensor,
    boxes: Tensor,
    batch_idx: Tensor,
    num_images: int,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.3,
    max_per_image: int = 100,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`detections_from_scores` for RoIs of several images (``batch_idx [R]`` in ``0..N-1``), in one
    pass → ``(boxes [D, 4], scores [D], labels [D], image_idx [D])`` sorted by image, class, score."""
    if scores.dim() != 2 or batch_idx.shape != (scores.shape[0],):
        raise ModelError(f"need scores [R, K] and batch_idx [R], got {tuple(scores.shape)} and "
                         f"{tuple(batch_idx.shape)}")
    return _select(scores, boxes, batch_idx.long(), int(num_images), score_thresh, nms_thresh, max_per_image)
