"""Anchor targets (docs/REFERENCE.md §4) and RoI sampling (§6): hand cases, a loop reference, sampling counts."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from frcnn_trt.anchors import shifted_anchors
from frcnn_trt.boxes import bbox_overlaps, bbox_transform, generate_anchors
from frcnn_trt.errors import ModelError
from frcnn_trt.targets import (
    AnchorTargetLayer,
    AnchorTargets,
    AnchorTargetSettings,
    ProposalTargetLayer,
    ProposalTargetSettings,
    RoiTargets,
    anchor_targets,
    proposal_targets,
    sample_rois_from_roidb,
)

# ---------------------------------------------------------------------------------------------- anchors

HAND_ANCHORS = torch.tensor(
    [
        [0, 0, 9, 9],  # 0: IoU 1 with gt A -> fg
        [0, 0, 9, 9],  # 1: duplicate -> fg too
        [20, 20, 29, 39],  # 2: IoU 0.5 with gt B, ties with #3 for B's maximum -> fg although < 0.7
        [30, 20, 39, 39],  # 3: IoU 0.5 with gt B -> fg
        [20, 20, 24, 39],  # 4: IoU 0.25 -> bg
        [20, 20, 27, 39],  # 5: IoU 0.4 -> ignored (-1)
        [45, 45, 54, 54],  # 6: crosses the 50 x 50 blob border -> outside
        [-1, 0, 8, 9],  # 7: x1 < 0 -> outside although IoU 0.8 with gt A
    ],
    dtype=torch.float32,
)
GT_A = [0.0, 0.0, 9.0, 9.0]
GT_B = [20.0, 20.0, 39.0, 39.0]


def run_hand(gt: list[list[list[float]]], info: list[list[float]], **kw: Any) -> AnchorTargets:
    gts = [torch.tensor(g, dtype=torch.float32).reshape(-1, 4) for g in gt]
    g = torch.Generator().manual_seed(0)
    return anchor_targets(HAND_ANCHORS, gts, torch.tensor(info), AnchorTargetSettings(**kw), generator=g)


def test_anchor_targets_hand_case_labels_targets_weights() -> None:
    t = run_hand([[GT_A, GT_B]], [[50.0, 50.0, 1.0]])
    assert t.labels.tolist() == [[1, 1, 1, 1, 0, -1, -1, -1]]
    assert t.labels.dtype == torch.int64
    # targets for every inside anchor against its best gt (fg and bg alike), 0 outside
    exp2 = [0.5, 0.0, math.log(2.0), 0.0]  # [20,20,29,39] -> [20,20,39,39]
    assert torch.allclose(t.bbox_targets[0, 2], torch.tensor(exp2))
    exp4 = bbox_transform(HAND_ANCHORS[4:5].double(), torch.tensor([GT_B], dtype=torch.float64))[0].float()
    assert torch.equal(t.bbox_targets[0, 4], exp4)
    assert torch.equal(t.bbox_targets[0, 0], torch.zeros(4))
    assert t.bbox_targets[0, 6:].abs().sum() == 0
    assert t.bbox_inside_weights[0, :, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    # uniform mode: 1 / num_examples (5 labelled anchors) for fg and bg
    assert t.bbox_outside_weights[0, :, 0].tolist() == pytest.approx([0.2] * 5 + [0.0] * 3)
    assert t.bbox_outside_weights.dtype == torch.float32


def test_anchor_targets_positive_weight_mode() -> None:
    t = run_hand([[GT_A, GT_B]], [[50.0, 50.0, 1.0]], positive_weight=0.25)
    w = t.bbox_outside_weights[0, :, 0].tolist()
    assert w[:4] == pytest.approx([0.25 / 4] * 4) and w[4] == pytest.approx(0.75) and w[5:] == [0, 0, 0]
    with pytest.raises(ModelError):
        run_hand([[GT_A]], [[50.0, 50.0, 1.0]], positive_weight=1.5)


def test_anchor_targets_zero_iou_gt_quirk_and_clobber() -> None:
    # a gt no inside anchor touches: its max IoU is 0, so every inside anchor with 0 IoU becomes fg
    far = [[150.0, 150.0, 159.0, 159.0]]
    t = run_hand([far], [[200.0, 200.0, 1.0]])
    assert t.labels.tolist() == [[1, 1, 1, 1, 1, 1, 1, -1]]  # #7 is outside (x1 = -1)
    # with clobber_positives the bg rule (max IoU < 0.3) is applied last and wins
    t = run_hand([far], [[200.0, 200.0, 1.0]], clobber_positives=True)
    assert t.labels.tolist() == [[0, 0, 0, 0, 0, 0, 0, -1]]


def test_anchor_targets_no_gt_image_and_batch() -> None:
    t = run_hand([[GT_A, GT_B], [], [GT_A]], [[50.0, 50.0, 1.0], [50.0, 50.0, 1.0], [20.0, 20.0, 1.0]])
    assert t.labels.shape == (3, 8)
    assert t.labels[0].tolist() == [1, 1, 1, 1, 0, -1, -1, -1]
    assert t.labels[1].tolist() == [0, 0, 0, 0, 0, 0, -1, -1]  # no gt: every inside anchor is bg
    assert t.bbox_targets[1].abs().sum() == 0 and t.bbox_inside_weights[1].sum() == 0
    assert t.bbox_outside_weights[1, :6, 0].tolist() == pytest.approx([1 / 6] * 6)
    # image 2 is 20 x 20: only #0, #1 lie inside
    assert t.labels[2].tolist() == [1, 1, -1, -1, -1, -1, -1, -1]


def loop_anchor_labels(anchors: torch.Tensor, gt: torch.Tensor, info: list[float]) -> list[int]:
    """docs/REFERENCE.md §4 steps 2-3 anchor by anchor (no subsampling)."""
    inside = [i for i in range(anchors.shape[0])
              if anchors[i, 0] >= 0 and anchors[i, 1] >= 0 and anchors[i, 2] < info[1] and anchors[i, 3] < info[0]]
    ov = bbox_overlaps(anchors[inside].double(), gt.double()).tolist()
    labels = [-1] * anchors.shape[0]
    gt_max = [max(row[j] for row in ov) for j in range(gt.shape[0])]
    for k, i in enumerate(inside):
        if max(ov[k]) < 0.3:
            labels[i] = 0
    for k, i in enumerate(inside):
        if any(ov[k][j] == gt_max[j] for j in range(gt.shape[0])) or max(ov[k]) >= 0.7:
            labels[i] = 1
    return labels


def test_anchor_targets_match_loop_reference_without_subsampling() -> None:
    gen = torch.Generator().manual_seed(5)
    anchors = shifted_anchors(generate_anchors(16, (0.5, 1, 2), (1, 2, 4)), 8, 9)
    infos = [[128.0, 144.0, 1.0], [100.0, 120.0, 1.0]]
    gts = []
    for _ in infos:
        xy = torch.rand(4, 2, generator=gen) * 70
        wh = 10 + torch.rand(4, 2, generator=gen) * 50
        gts.append(torch.cat([xy, xy + wh], dim=1).round())
    t = anchor_targets(anchors, gts, torch.tensor(infos), AnchorTargetSettings(batch_size=100000), generator=gen)
    for i, info in enumerate(infos):
        ref = loop_anchor_labels(anchors, gts[i], info)
        assert t.labels[i].tolist() == ref
        assert 0 < ref.count(1) < ref.count(0)


def test_anchor_target_layer_subsampling_and_determinism() -> None:
    layer = AnchorTargetLayer(AnchorTargetSettings(batch_size=16, fg_fraction=0.5))
    gts = [torch.tensor([[130.0, 10.0, 390.0, 250.0], [0.0, 100.0, 140.0, 230.0], [20, 200, 120, 300]]),
           torch.tensor([[50.0, 40.0, 250.0, 230.0]])]
    info = torch.tensor([[320.0, 400.0, 1.0], [300.0, 400.0, 1.0]])
    full = AnchorTargetLayer(AnchorTargetSettings(batch_size=10**6))((20, 25), gts, info,
                                                                     generator=torch.Generator().manual_seed(0))
    t1 = layer((20, 25), gts, info, generator=torch.Generator().manual_seed(1))
    t2 = layer((20, 25), gts, info, generator=torch.Generator().manual_seed(1))
    t3 = layer((20, 25), gts, info, generator=torch.Generator().manual_seed(2))
    assert t1.labels.shape == (2, 20 * 25 * 9)
    for a, b in zip(t1, t2, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(t1.labels, t3.labels)
    for i in range(2):
        n_fg_full = int((full.labels[i] == 1).sum())
        n_fg = int((t1.labels[i] == 1).sum())
        n_bg = int((t1.labels[i] == 0).sum())
        assert n_fg == min(8, n_fg_full) and n_fg + n_bg == 16
        # sampled labels are a subset of the unsampled ones
        kept = t1.labels[i] >= 0
        assert torch.equal(t1.labels[i][kept], full.labels[i][kept])
        assert t1.bbox_outside_weights[i, kept, 0].tolist() == pytest.approx([1 / 16] * 16)
        assert torch.equal(t1.bbox_targets[i], full.bbox_targets[i])
        assert n_fg_full > 8  # the fg cap was exercised


def test_anchor_subsampling_is_uniform() -> None:
    anchors = torch.tensor([[0.0, 0.0, 9.0, 9.0]] * 12 + [[30.0, 30.0, 39.0, 39.0]] * 4)
    gts = [torch.tensor([[0.0, 0.0, 9.0, 9.0]])]
    info = torch.tensor([[100.0, 100.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(16)
    for _ in range(200):
        t = anchor_targets(anchors, gts, info, AnchorTargetSettings(batch_size=6, fg_fraction=0.5), generator=gen)
        assert int((t.labels == 1).sum()) == 3 and int((t.labels == 0).sum()) == 3
        counts += (t.labels[0] >= 0).float()
    assert torch.allclose(counts[:12] / 200, torch.full((12,), 0.25), atol=0.09)
    assert torch.allclose(counts[12:] / 200, torch.full((4,), 0.75), atol=0.12)


def test_anchor_target_layer_from_config() -> None:
    cfg = SimpleNamespace(
        MODEL=SimpleNamespace(FEAT_STRIDE=16, ANCHOR_SCALES=(8, 16, 32), ANCHOR_RATIOS=(0.5, 1, 2)),
        TRAIN=SimpleNamespace(RPN_POSITIVE_OVERLAP=0.7, RPN_NEGATIVE_OVERLAP=0.3, RPN_CLOBBER_POSITIVES=False,
                              RPN_FG_FRACTION=0.5, RPN_BATCHSIZE=256, RPN_BBOX_INSIDE_WEIGHTS=(1.0, 1, 1, 1),
                              RPN_POSITIVE_WEIGHT=-1.0),
    )
    layer = AnchorTargetLayer.from_config(cfg)
    assert layer.settings.batch_size == 256 and layer.anchor_generator.num_anchors == 9


# ---------------------------------------------------------------------------------------------- RoIs

MEANS = torch.tensor([0.0, 0.0, 0.0, 0.0])
STDS = torch.tensor([0.1, 0.1, 0.2, 0.2])


def jittered(gt: torch.Tensor, n: int, gen: torch.Generator, spread: float) -> torch.Tensor:
    base = gt[torch.randint(0, gt.shape[0], (n,), generator=gen)]
    return (base + (torch.rand(n, 4, generator=gen) - 0.5) * spread).round().clamp_min(0)


def make_rois(gts: list[torch.Tensor], counts: list[int], gen: torch.Generator) -> torch.Tensor:
    rows = []
    for i, (gt, n) in enumerate(zip(gts, counts, strict=True)):
        near = jittered(gt, n // 2, gen, 30.0)
        xy = torch.rand(n - n // 2, 2, generator=gen) * 400
        rand = torch.cat([xy, xy + 20 + torch.rand(n - n // 2, 2, generator=gen) * 100], dim=1)
        rows.append(torch.cat([torch.full((n, 1), float(i)), torch.cat([near, rand])], dim=1))
    return torch.cat(rows)


def check_roi_targets(t: RoiTargets, gts: list[torch.Tensor], classes: list[torch.Tensor], k: int,
                      lo: float, normalized: bool = True) -> list[tuple[int, int]]:
    rois, labels, bt, iw, ow = t
    assert rois.shape[1] == 5 and bt.shape == iw.shape == ow.shape == (rois.shape[0], 4 * k)
    assert torch.all(rois[:-1, 0] <= rois[1:, 0])
    assert torch.equal(ow, (iw > 0).float())
    counts = []
    for i, gt in enumerate(gts):
        sel = rois[:, 0] == i
        r, lab = rois[sel, 1:], labels[sel]
        ov = bbox_overlaps(r.double(), gt.double()) if gt.shape[0] else torch.zeros(r.shape[0], 1).double()
        best, arg = ov.max(dim=1)
        fg = lab > 0
        n_fg = int(fg.sum())
        assert torch.all(fg[:n_fg]) and not torch.any(fg[n_fg:])  # fg first, then bg
        assert torch.all(best[fg] >= 0.5) and torch.all((best[~fg] < 0.5) & (best[~fg] >= lo))
        if gt.shape[0]:
            assert torch.equal(lab[fg], classes[i][arg[fg]])
        b_rows, i_rows = bt[sel], iw[sel]
        for row in range(r.shape[0]):
            c = int(lab[row])
            if c == 0:
                assert b_rows[row].abs().sum() == 0 and i_rows[row].sum() == 0
                continue
            expect = bbox_transform(r[row:row + 1], gt[arg[row]:arg[row] + 1])[0]
            if normalized:
                expect = (expect - MEANS) / STDS
            assert torch.allclose(b_rows[row, 4 * c: 4 * c + 4], expect, atol=1e-5)
            assert i_rows[row, 4 * c: 4 * c + 4].tolist() == [1, 1, 1, 1] and i_rows[row].sum() == 4
        counts.append((n_fg, int((~fg).sum())))
    return counts


def test_proposal_targets_counts_columns_and_normalisation() -> None:
    gen = torch.Generator().manual_seed(11)
    gts = [torch.tensor([[50.0, 60.0, 200.0, 220.0], [220.0, 30.0, 380.0, 150.0]]),
           torch.tensor([[10.0, 10.0, 300.0, 300.0]])]
    classes = [torch.tensor([3, 7]), torch.tensor([20])]
    rois = make_rois(gts, [400, 300], gen)
    layer = ProposalTargetLayer(21, ProposalTargetSettings(bg_thresh_lo=0.0))
    t = layer(rois, gts, classes, generator=torch.Generator().manual_seed(0))
    counts = check_roi_targets(t, gts, classes, 21, 0.0)
    for i, (n_fg, n_bg) in enumerate(counts):
        cand = torch.cat([rois[rois[:, 0] == i, 1:], gts[i]])
        best = bbox_overlaps(cand.double(), gts[i].double()).max(dim=1).values
        assert n_fg == min(32, int((best >= 0.5).sum()))
        assert n_bg == min(128 - n_fg, int((best < 0.5).sum()))
    assert counts[0][0] == 32 and sum(counts[0]) == 128  # fg cap and full minibatch exercised
    again = layer(rois, gts, classes, generator=torch.Generator().manual_seed(0))
    for a, b in zip(t, again, strict=True):
        assert torch.equal(a, b)


def test_proposal_targets_scarce_bg_gt_appended_and_no_gt() -> None:
    gts = [torch.tensor([[0.0, 0.0, 99.0, 99.0]]), torch.zeros(0, 4), torch.tensor([[10.0, 10.0, 50.0, 50.0]])]
    classes = [torch.tensor([5]), torch.zeros(0, dtype=torch.long), torch.tensor([2])]
    rois = torch.tensor([
        [0, 0, 0, 98, 98],  # fg
        [0, 200, 200, 260, 260],  # bg (IoU 0)
        [1, 0, 0, 20, 20],  # image without gt: IoU 0 -> bg when lo = 0
        [1, 30, 30, 60, 60],
    ])  # image 2 has no proposal at all: only its gt (appended) is sampled
    t = proposal_targets(rois, gts, classes, ProposalTargetSettings(bg_thresh_lo=0.0), num_classes=6,
                         generator=torch.Generator().manual_seed(0))
    counts = check_roi_targets(t, gts, classes, 6, 0.0)
    assert counts == [(2, 1), (0, 2), (1, 0)]  # total < 128: bg is scarce
    last = t.rois[-1].tolist()
    assert last == [2, 10, 10, 50, 50] and t.labels[-1] == 2
    assert t.bbox_targets[-1, 8:12].tolist() == [0, 0, 0, 0] and t.bbox_inside_weights[-1, 8:12].sum() == 4
    t = proposal_targets(rois, gts, classes, ProposalTargetSettings(bg_thresh_lo=0.1), num_classes=6,
                         generator=torch.Generator().manual_seed(0))
    assert check_roi_targets(t, gts, classes, 6, 0.1) == [(2, 0), (0, 0), (1, 0)]


def test_proposal_targets_fg_rounding_and_config() -> None:
    gts = [torch.tensor([[0.0, 0.0, 99.0, 99.0]])]
    rois = torch.cat([torch.zeros(20, 1), torch.tensor([[0.0, 0.0, 99.0, 99.0]]).expand(20, 4)], dim=1)
    t = proposal_targets(rois, gts, [torch.tensor([1])], ProposalTargetSettings(rois_per_image=10, fg_fraction=0.25),
                         num_classes=2, generator=torch.Generator())
    assert int((t.labels > 0).sum()) == 2  # round(2.5) = 2, half to even like np.round
    t = proposal_targets(rois, gts, [torch.tensor([1])], ProposalTargetSettings(rois_per_image=14, fg_fraction=0.25),
                         num_classes=2, generator=torch.Generator())
    assert int((t.labels > 0).sum()) == 4  # round(3.5) = 4
    cfg = SimpleNamespace(TRAIN=SimpleNamespace(
        BATCH_SIZE=128, IMS_PER_BATCH=1, FG_FRACTION=0.25, FG_THRESH=0.5, BG_THRESH_HI=0.5, BG_THRESH_LO=0.0,
        BBOX_NORMALIZE_TARGETS_PRECOMPUTED=True, BBOX_NORMALIZE_MEANS=(0.0,) * 4,
        BBOX_NORMALIZE_STDS=(0.1, 0.1, 0.2, 0.2), BBOX_INSIDE_WEIGHTS=(1.0,) * 4))
    layer = ProposalTargetLayer.from_config(cfg, num_classes=21)
    s = layer.settings
    assert s.rois_per_image == 128 and s.bg_thresh_lo == 0.0 and s.normalize_targets


def test_proposal_targets_unnormalised() -> None:
    gen = torch.Generator().manual_seed(3)
    gts = [torch.tensor([[40.0, 40.0, 160.0, 200.0]])]
    rois = make_rois(gts, [60], gen)
    settings = ProposalTargetSettings(normalize_targets=False, bg_thresh_lo=0.0)
    t = proposal_targets(rois, gts, [torch.tensor([4])], settings, num_classes=5, generator=gen)
    check_roi_targets(t, gts, [torch.tensor([4])], 5, 0.0, normalized=False)


def test_sample_rois_from_roidb_counts_and_columns() -> None:
    gen = torch.Generator().manual_seed(4)
    n_rois = [150, 6]
    rois = [torch.rand(n, 4, generator=gen) * 100 for n in n_rois]
    rois = [torch.cat([r[:, :2], r[:, :2] + r[:, 2:] + 1], dim=1) for r in rois]
    ov0 = torch.cat([torch.full((30,), 0.8), torch.full((100,), 0.3), torch.full((20,), 0.05)])
    ov1 = torch.tensor([1.0, 0.6, 0.55, 0.2, 0.49, 0.0])
    classes = [torch.where(ov0 > 0, 3, 0), torch.tensor([2, 2, 1, 1, 2, 0])]
    targets = [torch.randn(n, 4, generator=gen) for n in n_rois]
    t = sample_rois_from_roidb(rois, [ov0, ov1], classes, targets, num_classes=4, generator=gen)
    img = t.rois[:, 0]
    fg0, bg0 = (t.labels[img == 0] > 0).sum(), (t.labels[img == 0] == 0).sum()
    assert (int(fg0), int(bg0)) == (16, 48)  # 64 RoIs / image, round(0.25 · 64) = 16 fg
    lab1 = t.labels[img == 1].tolist()  # 3 fg (random order) + 2 bg in [0.1, 0.5): total 5 < 64
    assert sorted(lab1[:3]) == [1, 2, 2] and lab1[3:] == [0, 0]
    # every sampled row carries its own roidb target in its class's columns
    for row in range(t.rois.shape[0]):
        i = int(t.rois[row, 0])
        src = int(torch.nonzero((rois[i] == t.rois[row, 1:]).all(dim=1))[0])
        c = int(t.labels[row])
        assert (ov0 if i == 0 else ov1)[src] >= (0.5 if c else 0.1)
        if c:
            assert torch.equal(t.bbox_targets[row, 4 * c: 4 * c + 4], targets[i][src])
            assert t.bbox_inside_weights[row].sum() == 4
        else:
            assert t.bbox_targets[row].abs().sum() == 0
    # py-faster-rcnn's [R, 5] layout: the regression class comes from column 0
    t5 = [torch.cat([torch.where(o >= 0.5, 1, 0).float()[:, None], tg], dim=1)
          for o, tg in zip([ov0, ov1], targets, strict=True)]
    s = sample_rois_from_roidb(rois, [ov0, ov1], classes, t5, num_classes=4,
                               generator=torch.Generator().manual_seed(0))
    fg = s.labels > 0
    assert torch.all(s.bbox_inside_weights[fg, 4:8] == 1) and s.bbox_inside_weights[:, 8:].sum() == 0
    with pytest.raises(ModelError):
        sample_rois_from_roidb(rois, [ov0], classes, targets, num_classes=4, generator=gen)


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.mark.gpu
@requires_gpu
def test_cuda_matches_cpu_with_a_cpu_generator() -> None:
    """A CPU generator draws the same permutation for CUDA data: identical samples on both devices."""
    gts = [torch.tensor([[130.0, 10.0, 390.0, 250.0], [0.0, 100.0, 140.0, 230.0]]),
           torch.tensor([[50.0, 40.0, 250.0, 230.0]])]
    info = torch.tensor([[320.0, 400.0, 1.0], [300.0, 400.0, 1.0]])
    layer = AnchorTargetLayer(AnchorTargetSettings(batch_size=16))
    cpu = layer((20, 25), gts, info, generator=torch.Generator().manual_seed(5))
    gpu = layer((20, 25), [g.cuda() for g in gts], info.cuda(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(cpu.labels, gpu.labels.cpu())
    assert torch.allclose(cpu.bbox_targets, gpu.bbox_targets.cpu(), atol=1e-6)
    assert torch.equal(cpu.bbox_outside_weights, gpu.bbox_outside_weights.cpu())
    gen = torch.Generator().manual_seed(11)
    rois = make_rois(gts, [200, 150], gen)
    classes = [torch.tensor([3, 7]), torch.tensor([1])]
    layer2 = ProposalTargetLayer(21, ProposalTargetSettings(bg_thresh_lo=0.0))
    c = layer2(rois, gts, classes, generator=torch.Generator().manual_seed(0))
    g = layer2(rois.cuda(), [x.cuda() for x in gts], [x.cuda() for x in classes],
               generator=torch.Generator().manual_seed(0))
    assert torch.equal(c.rois, g.rois.cpu()) and torch.equal(c.labels, g.labels.cpu())
    assert torch.allclose(c.bbox_targets, g.bbox_targets.cpu(), atol=1e-5)
    # a CUDA generator works too (draws on the GPU)
    layer((20, 25), [x.cuda() for x in gts], info.cuda(), generator=torch.Generator("cuda").manual_seed(0))
