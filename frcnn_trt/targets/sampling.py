"""How the target layers work on a whole batch at once: padded ground truth and per-image random subsets.

Glossary: ``N`` images; ``G_i`` ground-truth boxes of image ``i``, ``G = max(1, max G_i)``; ``T`` candidates
(anchors or RoIs) of the whole batch, each with its image index as its ``group``.

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

import torch
from torch import Tensor

from frcnn_trt.errors import ModelError

__all__ = ["check_generator", "group_counts", "pad_gt", "priorities", "rank_in_groups", "sample_fg_bg"]


def check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ModelError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def priorities(t: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A uniformly random permutation of ``0..t-1`` (distinct priorities), on ``device``."""
    draw_dev = generator.device if generator is not None else device
    return torch.randperm(t, generator=generator, device=draw_dev).to(device)


def rank_in_groups(mask: Tensor, group: Tensor, priority: Tensor) -> Tensor:
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


def group_counts(mask: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """``[num_groups]`` number of set ``mask`` elements per group (deterministic on every device)."""
    g = torch.sort(group[mask]).values
    bounds = torch.searchsorted(g, torch.arange(num_groups + 1, device=group.device, dtype=g.dtype))
    return bounds[1:] - bounds[:-1]


def sample_fg_bg(
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
    priority = priorities(t, generator, dev)
    sel_fg = fg & (rank_in_groups(fg, group, priority) < fg_rois_per_image)
    n_fg = group_counts(sel_fg, group, num_groups)
    bg = bg & ~sel_fg  # a RoI is never sampled twice (only possible when FG_THRESH < BG_THRESH_HI)
    sel_bg = bg & (rank_in_groups(bg, group, priority) < (rois_per_image - n_fg)[group])
    sel = torch.nonzero(sel_fg | sel_bg).squeeze(1)
    key = (group[sel] * 2 + (~sel_fg[sel]).long()) * t + priority[sel]
    sel = sel[torch.argsort(key)]
    return sel, sel_fg[sel]


def pad_gt(
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
