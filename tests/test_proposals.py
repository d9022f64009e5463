"""Proposal layer (docs/REFERENCE.md §5): a hand-built case and a per-image NumPy loop reference."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from frcnn_trt.anchors import AnchorSettings, shifted_anchors
from frcnn_trt.boxes import generate_anchors
from frcnn_trt.errors import ModelError
from frcnn_trt.proposals import ProposalLayer, ProposalSettings, decode_proposals, proposal_layer

HAND_ANCHORS = torch.tensor(
    [
        [0, 0, 19, 19],  # decodes (zero deltas) to [0, 0, 20, 20]
        [1, 1, 20, 20],  # IoU 0.83 with #0 -> suppressed
        [30, 30, 39, 39],  # 11 px after decoding < 16 -> filtered (although its score is the highest)
        [40, 0, 79, 39],  # clipped to [40, 0, 79, 40]; IoU 0.75 with #4 -> suppressed
        [50, 0, 89, 39],  # clipped to [50, 0, 79, 40]
    ],
    dtype=torch.float32,
)
HAND_SCORES = torch.tensor([0.9, 0.8, 0.95, 0.5, 0.6])


def hand(
    im_info: list[list[float]], scores: torch.Tensor | None = None, *, pre_nms_top_n: int = -1,
    post_nms_top_n: int = -1, nms_thresh: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(im_info)
    s = HAND_SCORES.expand(n, 5) if scores is None else scores
    return decode_proposals(s, torch.zeros(n, 5, 4), HAND_ANCHORS, torch.tensor(im_info),
                            ProposalSettings(pre_nms_top_n, post_nms_top_n, nms_thresh, min_size=16))


def test_hand_case_filter_clip_sort_nms() -> None:
    rois, scores = hand([[60.0, 80.0, 1.0]])
    assert rois.dtype == torch.float32 and scores.shape == (2, 1)
    assert rois.tolist() == [[0, 0, 0, 20, 20], [0, 50, 0, 79, 40]]
    assert scores[:, 0].tolist() == pytest.approx([0.9, 0.6])


def test_hand_case_caps_and_scaled_min_size() -> None:
    assert hand([[60.0, 80.0, 1.0]], pre_nms_top_n=1)[0][:, 1].tolist() == [0]
    # pre 3 -> candidates #0, #1, #4 (the filtered #2 does not count) -> keep #0, #4
    assert hand([[60.0, 80.0, 1.0]], pre_nms_top_n=3)[0][:, 1].tolist() == [0, 50]
    assert hand([[60.0, 80.0, 1.0]], post_nms_top_n=1)[0][:, 1].tolist() == [0]
    assert hand([[60.0, 80.0, 1.0]], pre_nms_top_n=0, post_nms_top_n=0)[0].shape == (2, 5)
    # im_scale 2 -> min size 32: only #3 (40 x 41) survives the filter
    rois, _ = hand([[60.0, 80.0, 2.0]])
    assert rois.tolist() == [[0, 40, 0, 79, 40]]
    # a lower NMS threshold keeps #1? IoU(#0, #1) = 400/482 -> suppressed at 0.7, kept at 0.9
    assert hand([[60.0, 80.0, 1.0]], nms_thresh=0.9)[0].shape[0] == 4


def test_hand_case_batched_images_are_independent() -> None:
    scores = torch.stack([HAND_SCORES, torch.tensor([0.1, 0.2, 0.3, 0.9, 0.4])])
    rois, sc = hand([[60.0, 80.0, 1.0], [60.0, 60.0, 1.0]], scores=scores, post_nms_top_n=5)
    # image 1 is 60 wide: #3 -> [40, 0, 59, 40] (20 wide, kept), #4 -> [50, 0, 59, 40] (10 wide, filtered);
    # by its own scores: #3 (0.9), #1 (0.2), #0 (0.1, IoU 0.83 with #1 -> suppressed)
    assert rois[:, 0].tolist() == [0, 0, 1, 1]
    assert rois[2:].tolist() == [[1, 40, 0, 59, 40], [1, 1, 1, 21, 21]]
    assert sc[2:, 0].tolist() == pytest.approx([0.9, 0.2])


def test_hand_case_post_cap_per_image() -> None:
    scores = torch.stack([HAND_SCORES, torch.tensor([0.1, 0.2, 0.3, 0.9, 0.4])])
    rois, _ = hand([[60.0, 80.0, 1.0], [60.0, 60.0, 1.0]], scores=scores, post_nms_top_n=1)
    assert rois.tolist() == [[0, 0, 0, 20, 20], [1, 40, 0, 59, 40]]


# ---------------------------------------------------------------------------------------------- reference


def reference_one_image(
    fg: np.ndarray, deltas: np.ndarray, anchors: np.ndarray, info: np.ndarray, pre: int, post: int,
    thresh: float, min_size: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image NumPy float32 version of lib/rpn/proposal_layer.py forward (written from docs/REFERENCE.md §3/§5)."""
    boxes = np.zeros_like(deltas)
    for i in range(anchors.shape[0]):
        w = anchors[i, 2] - anchors[i, 0] + np.float32(1)
        h = anchors[i, 3] - anchors[i, 1] + np.float32(1)
        cx = anchors[i, 0] + np.float32(0.5) * w
        cy = anchors[i, 1] + np.float32(0.5) * h
        pcx = deltas[i, 0] * w + cx
        pcy = deltas[i, 1] * h + cy
        pw = np.exp(deltas[i, 2]) * w
        ph = np.exp(deltas[i, 3]) * h
        b = [pcx - np.float32(0.5) * pw, pcy - np.float32(0.5) * ph, pcx + np.float32(0.5) * pw,
             pcy + np.float32(0.5) * ph]
        lim = [info[1] - 1, info[0] - 1, info[1] - 1, info[0] - 1]
        boxes[i] = [max(min(v, m), np.float32(0)) for v, m in zip(b, lim, strict=True)]
    ms = np.float32(min_size) * info[2]
    keep = [i for i in range(len(boxes))
            if boxes[i, 2] - boxes[i, 0] + 1 >= ms and boxes[i, 3] - boxes[i, 1] + 1 >= ms]
    order = sorted(keep, key=lambda i: (-fg[i], i))
    if pre > 0:
        order = order[:pre]
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1
            if iw > 0 and ih > 0:
                inter = float(iw) * float(ih)
                ai = float(boxes[i, 2] - boxes[i, 0] + 1) * float(boxes[i, 3] - boxes[i, 1] + 1)
                aj = float(boxes[j, 2] - boxes[j, 0] + 1) * float(boxes[j, 3] - boxes[j, 1] + 1)
                if inter / (ai + aj - inter) > thresh:
                    ok = False
                    break
        if ok:
            kept.append(i)
    if post > 0:
        kept = kept[:post]
    return boxes[kept], fg[kept]


@pytest.mark.parametrize("pre,post,thresh", [(-1, -1, 0.7), (60, 15, 0.7), (40, -1, 0.7), (0, 25, 0.5), (1000, 0, 0.6)])
def test_proposal_layer_matches_reference_two_images(pre: int, post: int, thresh: float) -> None:
    gen = torch.Generator().manual_seed(7)
    scales = (1, 2, 4)
    a, h, w = 9, 6, 7
    cls_prob = torch.rand(2, 2 * a, h, w, generator=gen)
    bbox_pred = torch.randn(2, 4 * a, h, w, generator=gen) * 0.3
    im_info = torch.tensor([[96.0, 112.0, 1.0], [80.0, 100.0, 0.8]])
    rois, scores = proposal_layer(
        cls_prob, bbox_pred, im_info, ProposalSettings(pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=thresh,
                                                       min_size=16), AnchorSettings(scales=scales),
    )
    anchors = shifted_anchors(generate_anchors(16, (0.5, 1, 2), scales), h, w).numpy()
    total = 0
    for i in range(2):
        fg = cls_prob[i, a:].permute(1, 2, 0).reshape(-1).numpy()
        deltas = bbox_pred[i].permute(1, 2, 0).reshape(-1, 4).numpy()
        ref_boxes, ref_scores = reference_one_image(
            fg, deltas, anchors, im_info[i].numpy(), pre, post, thresh, 16
        )
        mine = rois[rois[:, 0] == i]
        assert mine.shape[0] == ref_boxes.shape[0] > 3
        assert np.allclose(mine[:, 1:].numpy(), ref_boxes, atol=1e-4)
        assert np.array_equal(scores[rois[:, 0] == i, 0].numpy(), ref_scores)
        total += ref_boxes.shape[0]
    assert rois.shape == (total, 5)
    assert torch.all(rois[:-1, 0] <= rois[1:, 0])  # sorted by image


def test_proposal_layer_module_and_config() -> None:
    cfg = SimpleNamespace(
        MODEL=SimpleNamespace(FEAT_STRIDE=16, ANCHOR_SCALES=(8, 16, 32), ANCHOR_RATIOS=(0.5, 1, 2)),
        TRAIN=SimpleNamespace(RPN_PRE_NMS_TOP_N=12000, RPN_POST_NMS_TOP_N=2000, RPN_NMS_THRESH=0.7,
                              RPN_MIN_SIZE=16),
        TEST=SimpleNamespace(RPN_PRE_NMS_TOP_N=6000, RPN_POST_NMS_TOP_N=300, RPN_NMS_THRESH=0.7,
                             RPN_MIN_SIZE=16),
    )
    train = ProposalLayer.from_config(cfg, "TRAIN")
    test = ProposalLayer.from_config(cfg)
    assert (train.settings.pre_nms_top_n, train.settings.post_nms_top_n) == (12000, 2000)
    assert (test.settings.pre_nms_top_n, test.settings.post_nms_top_n) == (6000, 300)
    gen = torch.Generator().manual_seed(1)
    cls_prob = torch.rand(1, 18, 10, 12, generator=gen)
    bbox_pred = torch.randn(1, 36, 10, 12, generator=gen) * 0.2
    im_info = torch.tensor([[160.0, 192.0, 1.0]])
    rois, scores = test(cls_prob, bbox_pred, im_info)
    r2, s2 = proposal_layer(cls_prob, bbox_pred, im_info, ProposalSettings(pre_nms_top_n=6000, post_nms_top_n=300,
                                                                           nms_thresh=0.7, min_size=16))
    assert torch.equal(rois, r2) and torch.equal(scores, s2)
    assert torch.all(scores[:-1] >= scores[1:])
    with pytest.raises(ModelError):
        test(cls_prob[:, :10], bbox_pred, im_info)
    with pytest.raises(ModelError):
        ProposalLayer.from_config(cfg, "VAL")


def test_no_gradient_and_empty() -> None:
    prob = torch.rand(1, 18, 2, 2, requires_grad=True)
    settings = ProposalSettings(pre_nms_top_n=10, post_nms_top_n=5, nms_thresh=0.7, min_size=16)
    rois, scores = proposal_layer(prob, torch.zeros(1, 36, 2, 2), torch.tensor([[32.0, 32.0, 1.0]]), settings)
    assert not rois.requires_grad and not scores.requires_grad
    # everything filtered: min size larger than the image
    rois, scores = proposal_layer(prob, torch.zeros(1, 36, 2, 2), torch.tensor([[32.0, 32.0, 10.0]]), settings)
    assert rois.shape == (0, 5) and scores.shape == (0, 1)


def test_post_cap_prefix_nms_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    import frcnn_trt.proposals as proposals_mod

    gen = torch.Generator().manual_seed(3)
    h, w = 15, 20
    cls_prob = torch.rand(2, 18, h, w, generator=gen)
    bbox_pred = torch.randn(2, 36, h, w, generator=gen) * 0.2
    im_info = torch.tensor([[240.0, 320.0, 1.0], [200.0, 300.0, 0.5]])
    args: dict[str, Any] = {"pre_nms_top_n": -1, "nms_thresh": 0.7, "min_size": 16}
    full, full_scores = proposal_layer(cls_prob, bbox_pred, im_info, ProposalSettings(post_nms_top_n=-1, **args))
    sizes = []
    original = proposals_mod._nms_in_order

    def counting(boxes: torch.Tensor, thresh: float, idxs: torch.Tensor | None = None) -> torch.Tensor:
        sizes.append(boxes.shape[0])
        return original(boxes, thresh, idxs)

    monkeypatch.setattr(proposals_mod, "_nms_in_order", counting)
    capped, capped_scores = proposal_layer(cls_prob, bbox_pred, im_info, ProposalSettings(post_nms_top_n=300, **args))
    assert len(sizes) >= 2  # the prefix had to grow at least once
    for i in range(2):
        mine, ref = capped[capped[:, 0] == i], full[full[:, 0] == i][:300]
        assert mine.shape[0] == 300 and torch.equal(mine, ref)
        assert torch.equal(capped_scores[capped[:, 0] == i], full_scores[full[:, 0] == i][:300])


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.mark.gpu
@requires_gpu
def test_cuda_matches_cpu() -> None:
    from frcnn_trt.boxes import nms

    gen = torch.Generator().manual_seed(7)
    cls_prob = torch.rand(2, 18, 12, 14, generator=gen)
    bbox_pred = torch.randn(2, 36, 12, 14, generator=gen) * 0.3
    im_info = torch.tensor([[192.0, 224.0, 1.0], [160.0, 200.0, 0.8]])
    args: dict[str, Any] = {"pre_nms_top_n": 500, "post_nms_top_n": 100, "nms_thresh": 0.7, "min_size": 16}
    rc, sc = proposal_layer(cls_prob, bbox_pred, im_info, ProposalSettings(**args))
    rg, sg = proposal_layer(cls_prob.cuda(), bbox_pred.cuda(), im_info.cuda(), ProposalSettings(**args))
    assert rg.is_cuda and rc.shape == rg.shape  # exp() may differ by an ulp between devices: allclose
    assert torch.allclose(rc, rg.cpu(), atol=1e-3) and torch.equal(sc, sg.cpu())
    # the NMS boundary (IoU exactly 0.7 kept, torchvision's CUDA kernel reads the threshold as float32)
    boxes = torch.tensor([[0.0, 0.0, 19.0, 9.0], [0.0, 0.0, 13.0, 9.0]], device="cuda")
    assert nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), 0.7).tolist() == [0, 1]
    assert nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), 0.69999).tolist() == [0]
