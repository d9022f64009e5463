"""Box maths against docs/REFERENCE.md §2/§3/§5 hand values and slow loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from frcnn_trt.boxes import (
    batched_nms,
    bbox_overlaps,
    bbox_transform,
    bbox_transform_inv,
    clip_boxes,
    generate_anchors,
    nms,
)
from frcnn_trt.errors import ModelError

REFERENCE_ANCHORS = [
    [-84, -40, 99, 55],
    [-176, -88, 191, 103],
    [-360, -184, 375, 199],
    [-56, -56, 71, 71],
    [-120, -120, 135, 135],
    [-248, -248, 263, 263],
    [-36, -80, 51, 95],
    [-80, -168, 95, 183],
    [-168, -344, 183, 359],
]


# ---------------------------------------------------------------------------------------------- references


def loop_overlaps(boxes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """lib/utils/bbox.pyx, element by element in float64."""
    b = boxes.double().tolist()
    q = query.double().tolist()
    out = torch.zeros(len(b), len(q), dtype=torch.float64)
    for k, qk in enumerate(q):
        area = (qk[2] - qk[0] + 1) * (qk[3] - qk[1] + 1)
        for n, bn in enumerate(b):
            iw = min(bn[2], qk[2]) - max(bn[0], qk[0]) + 1
            if iw > 0:
                ih = min(bn[3], qk[3]) - max(bn[1], qk[1]) + 1
                if ih > 0:
                    ua = (bn[2] - bn[0] + 1) * (bn[3] - bn[1] + 1) + area - iw * ih
                    out[n, k] = iw * ih / ua
    return out


def loop_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> list[int]:
    """py_cpu_nms (suppress IoU > thresh), float64, ties in score visited lowest index first."""
    b = boxes.double().tolist()
    order = sorted(range(len(b)), key=lambda i: (-float(scores[i]), i))
    keep: list[int] = []
    suppressed = [False] * len(b)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            if suppressed[j]:
                continue
            xx1, yy1 = max(b[i][0], b[j][0]), max(b[i][1], b[j][1])
            xx2, yy2 = min(b[i][2], b[j][2]), min(b[i][3], b[j][3])
            w, h = max(0.0, xx2 - xx1 + 1), max(0.0, yy2 - yy1 + 1)
            inter = w * h
            ai = (b[i][2] - b[i][0] + 1) * (b[i][3] - b[i][1] + 1)
            aj = (b[j][2] - b[j][0] + 1) * (b[j][3] - b[j][1] + 1)
            if inter / (ai + aj - inter) > thresh:
                suppressed[j] = True
    return keep


def random_boxes(n: int, gen: torch.Generator, size: float = 100.0, integer: bool = False) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size * 0.5
    b = torch.cat([xy, xy + wh], dim=1)
    return b.round() if integer else b


# ---------------------------------------------------------------------------------------------- anchors


def test_generate_anchors_matches_reference_exactly() -> None:
    a = generate_anchors()
    assert a.dtype == torch.float32 and a.shape == (9, 4)
    assert torch.equal(a, torch.tensor(REFERENCE_ANCHORS, dtype=torch.float32))
    # ratio 0.5 row: ws = round(sqrt(512)) = 23, hs = round(11.5) = 12 (half to even) -> 184 x 96 at s=8
    assert (a[0, 2] - a[0, 0] + 1, a[0, 3] - a[0, 1] + 1) == (184, 96)


def test_generate_anchors_options() -> None:
    a = generate_anchors(16, ratios=(1,), scales=(2, 4), dtype=torch.float64)
    assert a.dtype == torch.float64
    assert a.tolist() == [[-8.0, -8.0, 23.0, 23.0], [-24.0, -24.0, 39.0, 39.0]]
    with pytest.raises(ModelError):
        generate_anchors(16, ratios=(0,))


# ---------------------------------------------------------------------------------------------- coding


def test_bbox_transform_hand_case() -> None:
    ex = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    gt = torch.tensor([[5.0, 5.0, 14.0, 24.0]])  # w 10 (cx 10 vs 5), h 20 (cy 15 vs 5)
    d = bbox_transform(ex, gt)
    assert torch.allclose(d, torch.tensor([[0.5, 1.0, 0.0, math.log(2.0)]]))


def test_bbox_transform_inv_hand_case_and_no_minus_one() -> None:
    box = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    zero = torch.zeros(1, 8)
    out = bbox_transform_inv(box, zero)  # [R, 4K] with K = 2
    assert out.tolist() == [[0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 10.0]]  # x2 = cx + 0.5 w (no -1)
    d = torch.tensor([[0.1, -0.2, math.log(2.0), 0.0]])
    out = bbox_transform_inv(box, d)
    # cx = 5 + 1 = 6, w = 20 -> x1 = -4, x2 = 16; cy = 5 - 2 = 3, h = 10 -> y1 = -2, y2 = 8
    assert torch.allclose(out, torch.tensor([[-4.0, -2.0, 16.0, 8.0]]))


def test_decode_encode_roundtrip_adds_one() -> None:
    gen = torch.Generator().manual_seed(0)
    ex = random_boxes(50, gen)
    gt = random_boxes(50, gen)
    back = bbox_transform_inv(ex, bbox_transform(ex, gt))
    assert back.dtype == torch.float64
    assert torch.allclose(back, gt + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64), atol=1e-9)


def test_bbox_transform_inv_casts_boxes_to_delta_dtype_and_broadcasts() -> None:
    anchors = torch.tensor([[0.0, 0.0, 15.0, 15.0], [8.0, 8.0, 23.0, 23.0]], dtype=torch.float64)
    deltas = torch.zeros(3, 2, 4, dtype=torch.float32)  # [N, M, 4] against [M, 4]
    out = bbox_transform_inv(anchors, deltas)
    assert out.dtype == torch.float32 and out.shape == (3, 2, 4)
    assert out[2, 1].tolist() == [8.0, 8.0, 24.0, 24.0]


def test_bbox_transform_inv_no_clamp_overflows_like_original() -> None:
    box = torch.tensor([[0.0, 0.0, 15.0, 15.0]])
    d = torch.tensor([[0.0, 0.0, 100.0, 0.0]])  # exp(100) overflows float32
    out = bbox_transform_inv(box, d)
    assert out[0, 0] == -math.inf and out[0, 2] == math.inf
    clipped = clip_boxes(out, (600, 800))
    assert clipped[0].tolist() == [0.0, 0.0, 799.0, 16.0]
    capped = bbox_transform_inv(box, d, clamp=math.log(1000.0 / 16))
    assert torch.isfinite(capped).all()
    assert torch.allclose(capped[0, 2] - capped[0, 0], torch.tensor(1000.0))


def test_clip_boxes_single_shape_and_per_row() -> None:
    b = torch.tensor([[-5.0, -3.0, 900.0, 700.0, 10.0, 20.0, 30.0, 40.0]])
    assert clip_boxes(b, (600, 800)).tolist() == [[0.0, 0.0, 799.0, 599.0, 10.0, 20.0, 30.0, 40.0]]
    rows = torch.tensor([[-1.0, -1.0, 500.0, 500.0], [-1.0, -1.0, 500.0, 500.0]])
    shapes = torch.tensor([[100.0, 200.0], [300.0, 400.0]])
    assert clip_boxes(rows, shapes).tolist() == [[0.0, 0.0, 199.0, 99.0], [0.0, 0.0, 399.0, 299.0]]
    batched = rows.reshape(2, 1, 4).expand(2, 3, 4)  # [N, R, 4] with per-image shapes [N, 1, 2]
    out = clip_boxes(batched, shapes[:, None, :])
    assert out[1, 2].tolist() == [0.0, 0.0, 399.0, 299.0] and out[0, 0].tolist() == [0.0, 0.0, 199.0, 99.0]
    assert torch.isnan(clip_boxes(torch.tensor([[math.nan, 0.0, 1.0, 1.0]]), (10, 10))[0, 0])
    with pytest.raises(ModelError):
        clip_boxes(rows, torch.tensor([1.0, 2.0, 3.0]))


# ---------------------------------------------------------------------------------------------- overlaps


def test_bbox_overlaps_hand_and_touching() -> None:
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]], dtype=torch.float64)
    q = torch.tensor(
        [
            [0.0, 0.0, 9.0, 9.0],  # identical -> 1
            [10.0, 0.0, 19.0, 9.0],  # touching edge (+1 geometry: no shared pixel) -> 0
            [9.0, 0.0, 18.0, 9.0],  # one shared column: 10 / 190
            [5.0, 5.0, 14.0, 14.0],  # 25 / 175
            [100.0, 100.0, 110.0, 110.0],  # disjoint
        ],
        dtype=torch.float64,
    )
    o = bbox_overlaps(a, q)
    assert o.dtype == torch.float64
    assert o[0].tolist() == [1.0, 0.0, 10.0 / 190.0, 25.0 / 175.0, 0.0]


def test_bbox_overlaps_matches_loop_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    b = random_boxes(40, gen, integer=True)
    q = random_boxes(7, gen, integer=True)
    o = bbox_overlaps(b, q)
    assert torch.equal(o, loop_overlaps(b, q))  # same float64 operations -> bit equal
    o32 = bbox_overlaps(b.float(), q.float())
    assert o32.dtype == torch.float32
    assert torch.allclose(o32.double(), o, atol=1e-6)
    batched = bbox_overlaps(b.reshape(2, 20, 4), q.unsqueeze(0))  # leading dims broadcast
    assert batched.shape == (2, 20, 7) and torch.equal(batched.reshape(40, 7), o)


# ---------------------------------------------------------------------------------------------- NMS


def test_torchvision_nms_threshold_is_strict() -> None:
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]], dtype=torch.float64)  # IoU = 0.5
    s = torch.tensor([1.0, 0.9], dtype=torch.float64)
    assert torchvision.ops.nms(b, s, 0.5).tolist() == [0, 1]
    assert torchvision.ops.nms(b, s, 0.4999).tolist() == [0]


@pytest.mark.parametrize("thresh,first,second,kept", [
    (0.5, [0, 0, 9, 9], [0, 0, 9, 19], [0, 1]),  # IoU 100/200 = 0.5 exactly -> kept
    (0.5, [0, 0, 9, 9], [0, 0, 9, 18], [0]),  # IoU 100/190 > 0.5 -> suppressed
    (0.7, [0, 0, 19, 9], [0, 0, 13, 9], [0, 1]),  # 140/200 = 0.7 exactly -> kept
    (0.7, [0, 0, 19, 9], [0, 0, 14, 9], [0]),  # 150/200
    (0.3, [0, 0, 8, 9], [0, 0, 29, 9], [0, 1]),  # 90/300 = 0.3 exactly -> kept
    (0.3, [0, 0, 8, 9], [0, 0, 28, 9], [0]),  # 90/290
])
def test_nms_boundary(thresh: float, first: list[int], second: list[int], kept: list[int]) -> None:
    boxes = torch.tensor([first, second], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, thresh).tolist() == kept
    assert loop_nms(boxes, scores, thresh) == kept
    if kept == [0, 1]:  # exactly at the threshold: any smaller threshold suppresses
        assert loop_overlaps(boxes[:1], boxes[1:])[0, 0].item() == thresh
        assert nms(boxes, scores, thresh - 1e-6).tolist() == [0]
    # the batched path (offset trick) decides the boundary identically
    assert batched_nms(boxes, scores, torch.tensor([3, 3]), thresh).tolist() == kept


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_nms_matches_loop_reference(integer: bool, thresh: float) -> None:
    gen = torch.Generator().manual_seed(2)
    boxes = random_boxes(120, gen, size=60.0, integer=integer).float()
    scores = torch.rand(120, generator=gen)
    if integer:
        scores = (scores * 10).round()  # many ties: lowest index first
    keep = nms(boxes, scores, thresh)
    assert keep.tolist() == loop_nms(boxes, scores, thresh)


def test_batched_nms_equals_per_group_nms() -> None:
    gen = torch.Generator().manual_seed(3)
    boxes = random_boxes(90, gen, size=50.0).float() - 20.0  # negative coordinates too
    scores = torch.rand(90, generator=gen)
    idxs = torch.randint(0, 4, (90,), generator=gen)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])
    expected: set[int] = set()
    for g in range(4):
        members = torch.nonzero(idxs == g).squeeze(1)
        expected |= set(members[nms(boxes[members], scores[members], 0.5)].tolist())
    assert set(keep.tolist()) == expected
    # identical boxes in different groups never suppress each other
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    assert sorted(batched_nms(same, torch.ones(3), torch.tensor([0, 1, 0]), 0.5).tolist()) == [0, 1]


def test_nms_empty_and_bad_input() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.7).numel() == 0
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.7).numel() == 0
    with pytest.raises(ModelError):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.7)


def test_bbox_overlaps_degenerate_boxes_are_zero_not_nan() -> None:
    a = torch.tensor([[5.0, 5.0, 4.0, 4.0], [0.0, 0.0, 9.0, 9.0]])  # zero-area (+1 geometry) and a normal box
    o = bbox_overlaps(a, a)
    assert torch.isfinite(o).all()
    assert o.tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_nms_threshold_is_read_as_float32_rounded_up() -> None:
    from frcnn_trt.boxes import _threshold_f32_up

    assert _threshold_f32_up(0.5) == 0.5
    t = _threshold_f32_up(0.7)
    assert t > 0.7 and t == float(torch.tensor(t, dtype=torch.float32))
    assert float(torch.nextafter(torch.tensor(t, dtype=torch.float32), torch.tensor(0.0))) < 0.7
