"""Test-time post-processing (docs/REFERENCE.md §11): thresholds, per-class NMS, max-per-image with ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frcnn_trt.boxes import bbox_overlaps, bbox_transform_inv
from frcnn_trt.errors import ModelError
from frcnn_trt.postprocess import batched_detections_from_scores, detections_from_scores, im_detect_postprocess


def grid_boxes(n: int, k: int) -> torch.Tensor:
    """n non-overlapping boxes, repeated for k classes → [n, 4k]."""
    x = torch.arange(n, dtype=torch.float32) * 20
    b = torch.stack([x, torch.zeros(n), x + 9, torch.full((n,), 9.0)], dim=1)
    return b.repeat(1, k)


def test_score_threshold_is_strict_in_float32() -> None:
    t = np.float32(0.05)
    above = np.nextafter(t, np.float32(1))
    scores = torch.tensor([[0.9, float(t)], [0.9, float(above)], [0.0, 1.0]], dtype=torch.float32)
    boxes, sc, labels = detections_from_scores(scores, grid_boxes(3, 2))
    assert sc.tolist() == [1.0, float(above)] and labels.tolist() == [1, 1]  # background never reported
    assert boxes[:, 0].tolist() == [40.0, 20.0]


@pytest.mark.parametrize("second,kept", [([0, 0, 29, 9], 2), ([0, 0, 28, 9], 1)])  # IoU 0.3 / 0.31
def test_per_class_nms_at_point_three(second: list[float], kept: int) -> None:
    first = [0.0, 0.0, 8.0, 9.0]
    per_roi = torch.tensor([first, second], dtype=torch.float32)
    boxes = torch.cat([torch.zeros(2, 4), per_roi, per_roi], dim=1)  # K = 3: classes 1 and 2 same boxes
    scores = torch.tensor([[0.1, 0.9, 0.7], [0.1, 0.8, 0.6]])
    _, s, lab = detections_from_scores(scores, boxes)
    assert lab.tolist() == [1] * kept + [2] * kept  # classes do not suppress each other
    assert s.tolist() == pytest.approx([0.9, 0.8][:kept] + [0.7, 0.6][:kept])


def test_max_per_image_keeps_ties() -> None:
    n = 120
    vals = [0.99 - 0.001 * i for i in range(95)] + [0.5] * 10 + [0.2 - 0.001 * i for i in range(15)]
    scores = torch.zeros(n, 2)
    scores[:, 1] = torch.tensor(vals)
    _, s, _ = detections_from_scores(scores, grid_boxes(n, 2))
    assert s.numel() == 105  # the 100th largest is 0.5, shared by ranks 96..105: all kept
    vals[100] = 0.45  # break the tie at rank 100 -> exactly 100
    scores[:, 1] = torch.tensor(vals)
    scores[95:105, 1] = torch.linspace(0.6, 0.5, 10)
    _, s, _ = detections_from_scores(scores, grid_boxes(n, 2))
    assert s.numel() == 100
    _, s, _ = detections_from_scores(scores, grid_boxes(n, 2), max_per_image=0)
    assert s.numel() == n


def loop_test_net(scores: torch.Tensor, boxes: torch.Tensor, thresh: float, nms_t: float, max_det: int):
    """test_net's per-class loop with a per-box NMS loop (+1 IoU, suppress > nms_t)."""
    dets: list[tuple[int, float, list[float]]] = []
    for j in range(1, scores.shape[1]):
        inds = [i for i in range(scores.shape[0]) if scores[i, j] > thresh]
        inds.sort(key=lambda i: (-float(scores[i, j]), i))
        kept: list[int] = []
        for i in inds:
            b = boxes[i, 4 * j: 4 * j + 4]
            if all(bbox_overlaps(b[None].double(), boxes[k, 4 * j: 4 * j + 4][None].double())[0, 0] <= nms_t
                   for k in kept):
                kept.append(i)
        dets += [(j, float(scores[i, j]), boxes[i, 4 * j: 4 * j + 4].tolist()) for i in kept]
    if max_det > 0 and len(dets) > max_det:
        th = sorted(d[1] for d in dets)[-max_det]
        dets = [d for d in dets if d[1] >= th]
    return dets


def random_case(gen: torch.Generator, r: int = 60, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.rand(r, 1, 2, generator=gen) * 80
    wh = 10 + torch.rand(r, k, 2, generator=gen) * 30
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], dim=2).reshape(r, 4 * k)
    scores = torch.softmax(torch.randn(r, k, generator=gen) * 2, dim=1)
    return scores, boxes


def test_detections_match_loop_reference() -> None:
    gen = torch.Generator().manual_seed(9)
    scores, boxes = random_case(gen)
    b, s, lab = detections_from_scores(scores, boxes, max_per_image=15)
    ref = loop_test_net(scores, boxes, 0.05, 0.3, 15)
    assert len(ref) > 10
    got = [(int(c), float(v), bb) for c, v, bb in zip(lab, s, b.tolist(), strict=True)]
    assert got == ref  # same order too: class, then descending score


def test_batched_equals_per_image() -> None:
    gen = torch.Generator().manual_seed(10)
    s0, b0 = random_case(gen, r=40)
    s1, b1 = random_case(gen, r=30)
    out = batched_detections_from_scores(torch.cat([s0, s1]), torch.cat([b0, b1]),
                                         torch.tensor([0] * 40 + [1] * 30), 2, max_per_image=12)
    for i, (s, b) in enumerate([(s0, b0), (s1, b1)]):
        sel = out[3] == i
        single = detections_from_scores(s, b, max_per_image=12)
        for got, exp in zip(out[:3], single, strict=True):
            assert torch.equal(got[sel], exp)
    assert torch.all(out[3][:-1] <= out[3][1:])
    with pytest.raises(ModelError):
        batched_detections_from_scores(s0, b0, torch.zeros(3), 1)


def test_im_detect_postprocess_decode_and_clip_in_original_coords() -> None:
    rois = torch.tensor([[0.0, 20.0, 20.0, 59.0, 59.0], [0.0, 0.0, 0.0, 1500.0, 900.0]])
    prob = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    deltas = torch.zeros(2, 8)
    deltas[0, 4:] = torch.tensor([0.1, 0.0, 0.0, 0.0])
    scores, boxes = im_detect_postprocess(rois, prob, deltas, 2.0, (375, 500))
    assert torch.equal(scores, prob)
    # roi / 2 = [10, 10, 29.5, 29.5] (w 20.5) -> class 0 zero deltas: [10, 10, 30.5, 30.5]
    assert boxes[0, :4].tolist() == pytest.approx([10.0, 10.0, 30.5, 30.5])
    assert boxes[0, 4:].tolist() == pytest.approx([12.05, 10.0, 32.55, 30.5])
    assert boxes[1, :4].tolist() == [0.0, 0.0, 499.0, 374.0]  # clipped to the original image
    exp = bbox_transform_inv(rois[:, 1:] / torch.tensor(2.0), deltas)
    assert torch.equal(boxes[0], exp[0])
    _, raw = im_detect_postprocess(rois, prob, deltas, 2.0, (375, 500), bbox_reg=False)
    assert raw[1].tolist() == [0.0, 0.0, 750.0, 450.0] * 2  # tiled, unclipped (as the original)


def test_im_detect_postprocess_per_image_scales() -> None:
    rois = torch.tensor([[0.0, 16.0, 16.0, 31.0, 31.0], [1.0, 16.0, 16.0, 31.0, 31.0]])
    prob = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    _, boxes = im_detect_postprocess(rois, prob, torch.zeros(2, 8), torch.tensor([1.0, 2.0]),
                                     torch.tensor([[100, 100], [12, 100]]))
    assert boxes[0, :4].tolist() == [16.0, 16.0, 32.0, 32.0]
    assert boxes[1, :4].tolist() == [8.0, 8.0, 16.5, 11.0]  # y clipped to 12 - 1
    with pytest.raises(ModelError):
        im_detect_postprocess(rois, prob, torch.zeros(2, 4), 1.0, (10, 10))
