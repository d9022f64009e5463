"""Alt-opt Fast R-CNN minibatch sampling from the roidb (``lib/roi_data_layer/minibatch.py`` ``_sample_rois``,
docs/REFERENCE.md §6), batched over images.

Glossary: ``N`` images; ``R_i`` RoIs of image ``i`` (its gt boxes first, then its stored proposals, as the
roidb); ``S`` sampled RoIs over the whole batch; ``K`` classes including background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from frcnn_trt.errors import ModelError
from frcnn_trt.targets.proposal_target_layer import RoiTargets, regression_labels
from frcnn_trt.targets.sampling import check_generator, sample_fg_bg

__all__ = ["sample_rois_from_roidb"]


def _check_lists(
    rois: Sequence[Tensor],
    max_overlaps: Sequence[Tensor],
    max_classes: Sequence[Tensor],
    bbox_targets: Sequence[Tensor],
    num_classes: int,
) -> None:
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
    check_generator(generator)
    _check_lists(rois, max_overlaps, max_classes, bbox_targets, num_classes)
    n = len(rois)
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
    sel, sel_is_fg = sample_fg_bg(fg, bg, img, n, int(rois_per_image), fg_per_image, generator)

    labels = torch.where(sel_is_fg, cls[sel], torch.zeros_like(sel))
    t_sel = tg[sel]
    if t_sel.shape[1] == 5:
        reg_cls, t_sel = t_sel[:, 0].long(), t_sel[:, 1:]
    else:
        reg_cls = labels
    bt, iw, ow = regression_labels(t_sel, reg_cls, num_classes, bbox_inside_weights)
    s_boxes = boxes[sel]
    out_rois = torch.cat([img[sel].to(s_boxes.dtype).unsqueeze(1), s_boxes], dim=1)
    return RoiTargets(out_rois, labels, bt, iw, ow)
