"""py-faster-rcnn's four training losses with Caffe's normalisations (docs/REFERENCE.md §4, §6).

Glossary of shape letters:

- ``N``: images; ``M = H·W·A``: anchors per image in anchor order ``(h·W + w)·A + a``
  (:mod:`frcnn_trt.anchors` turns the RPN head's blobs into it).
- ``R``: sampled RoIs; ``K``: classes including background (bbox columns ``4c..4c+3`` of ``[R, 4K]``).

- ``rpn_loss_cls``: ``SoftmaxWithLoss`` with ``ignore_label −1``, ``normalize: true`` ⇒ mean cross-entropy
  over the non-ignored anchors of the whole batch (≈ 256 per image). If every anchor is ignored the loss
  is 0 (Caffe of that era would divide by 0; later Caffe clamps the count to 1, as done here).
- ``rpn_loss_bbox``: ``SmoothL1Loss`` σ = 3, ``Σ outside·f(inside·(pred − target)) / N`` (N = images; the
  outside weights 1/256 make it ≈ Σ_fg f / 256 per image).
- ``loss_cls``: ``SoftmaxWithLoss`` ⇒ mean cross-entropy over the R RoIs.
- ``loss_bbox``: ``SmoothL1Loss`` σ = 1, divided by R.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from frcnn_trt.errors import ModelError

__all__ = ["fast_rcnn_losses", "rpn_losses", "smooth_l1_loss"]


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    inside_weights: Tensor,
    outside_weights: Tensor,
    sigma: float = 1.0,
    normalizer: float | Tensor = 1.0,
) -> Tensor:
    """Caffe (fast-rcnn) ``SmoothL1Loss``: ``Σ outside · f(inside · (pred − target)) / normalizer``.

    ``f(x) = 0.5 · σ² · x²`` if ``|x| < 1/σ²``, else ``|x| − 0.5/σ²`` (its gradient at ``|x| = 1/σ²`` is
    ``sign(x)``, as Caffe's). All four tensors have the same shape; returns a scalar.
    """
    if not (pred.shape == target.shape == inside_weights.shape == outside_weights.shape):
        raise ModelError(f"smooth_l1_loss shapes differ: pred {tuple(pred.shape)}, "
                         f"target {tuple(target.shape)}, "
                         f"inside {tuple(inside_weights.shape)}, outside {tuple(outside_weights.shape)}")
    sigma2 = float(sigma) * float(sigma)
    x = inside_weights * (pred - target)
    ax = x.abs()
    f = torch.where(ax < 1.0 / sigma2, 0.5 * sigma2 * x * x, ax - 0.5 / sigma2)
    return (outside_weights * f).sum() / normalizer


def _softmax_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over entries with ``label ≥ 0`` (``−1`` ignored); 0 when none counts."""
    valid = labels >= 0
    ce = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    ce = torch.where(valid, ce, torch.zeros((), dtype=ce.dtype, device=ce.device))
    return ce.sum() / valid.sum().clamp_min(1).to(ce.dtype)


def rpn_losses(
    cls_logits: Tensor,
    bbox_pred: Tensor,
    labels: Tensor,
    bbox_targets: Tensor,
    bbox_inside_weights: Tensor,
    bbox_outside_weights: Tensor,
    *,
    sigma: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """``(rpn_loss_cls, rpn_loss_bbox)`` from anchor-order tensors.

    ``cls_logits [N, M, 2]`` (``[bg, fg]`` scores before softmax), ``bbox_pred [N, M, 4]``,
    ``labels [N, M]`` (1 / 0 / −1), targets and weights ``[N, M, 4]``
    (:class:`~frcnn_trt.targets.AnchorTargets`).
    """
    if cls_logits.dim() != 3 or cls_logits.shape[2] != 2:
        raise ModelError(f"cls_logits must be [N, M, 2], got {tuple(cls_logits.shape)}")
    n, m = cls_logits.shape[:2]
    if labels.shape != (n, m) or bbox_pred.shape != (n, m, 4):
        raise ModelError(f"rpn_losses needs labels [N={n}, M={m}] and bbox_pred [N, M, 4], got "
                         f"{tuple(labels.shape)} and {tuple(bbox_pred.shape)}")
    loss_cls = _softmax_loss(cls_logits.reshape(n * m, 2), labels.reshape(-1).long())
    loss_bbox = smooth_l1_loss(
        bbox_pred, bbox_targets, bbox_inside_weights, bbox_outside_weights, sigma, max(n, 1)
    )
    return loss_cls, loss_bbox


def fast_rcnn_losses(
    cls_score: Tensor,
    bbox_pred: Tensor,
    labels: Tensor,
    bbox_targets: Tensor,
    bbox_inside_weights: Tensor,
    bbox_outside_weights: Tensor,
    *,
    sigma: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``(loss_cls, loss_bbox)``: ``cls_score [R, K]`` (logits), ``bbox_pred [R, 4K]``, ``labels [R]``,
    targets and weights ``[R, 4K]`` (:class:`~frcnn_trt.targets.RoiTargets`). Both averaged over R."""
    if cls_score.dim() != 2:
        raise ModelError(f"cls_score must be [R, K], got {tuple(cls_score.shape)}")
    r, k = cls_score.shape
    if labels.shape != (r,) or bbox_pred.shape != (r, 4 * k):
        raise ModelError(f"fast_rcnn_losses needs labels [R={r}] and bbox_pred [R, 4K={4 * k}], got "
                         f"{tuple(labels.shape)} and {tuple(bbox_pred.shape)}")
    loss_cls = _softmax_loss(cls_score, labels.long())
    loss_bbox = smooth_l1_loss(
        bbox_pred, bbox_targets, bbox_inside_weights, bbox_outside_weights, sigma, max(r, 1)
    )
    return loss_cls, loss_bbox
