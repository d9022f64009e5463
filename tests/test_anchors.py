"""Anchor grids in py-faster-rcnn's (h·W + w)·A + a order, and the RPN blob layout helpers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from frcnn_trt.anchors import (
    AnchorGenerator,
    AnchorSettings,
    rpn_bbox_to_anchor_order,
    rpn_cls_to_anchor_order,
    rpn_fg_scores_to_anchor_order,
    shifted_anchors,
)
from frcnn_trt.boxes import generate_anchors
from frcnn_trt.errors import ModelError


def test_shifted_anchor_order() -> None:
    base = generate_anchors()
    h, w, a = 2, 3, base.shape[0]
    grid = shifted_anchors(base, h, w, stride=16)
    assert grid.shape == (h * w * a, 4) and grid.dtype == torch.float32
    for yy in range(h):
        for xx in range(w):
            for k in range(a):
                shift = torch.tensor([16.0 * xx, 16.0 * yy, 16.0 * xx, 16.0 * yy])
                assert torch.equal(grid[(yy * w + xx) * a + k], base[k] + shift)
    assert grid[(1 * w + 2) * a + 4].tolist() == [-120 + 32, -120 + 16, 135 + 32, 135 + 16]


def test_anchor_generator_cache_and_config() -> None:
    gen = AnchorGenerator()
    assert gen.num_anchors == 9
    first = gen(4, 5)
    assert first is gen(4, 5)  # cached
    assert first.shape == (180, 4) and first.dtype == torch.float32
    assert torch.equal(first, shifted_anchors(generate_anchors(), 4, 5))
    assert gen(4, 5, dtype=torch.float64).dtype == torch.float64
    cfg = SimpleNamespace(MODEL=SimpleNamespace(FEAT_STRIDE=16, ANCHOR_SCALES=(4, 8), ANCHOR_RATIOS=(1,)))
    small = AnchorGenerator.from_config(cfg)
    assert small.num_anchors == 2
    assert small(1, 1).tolist() == [[-24.0, -24.0, 39.0, 39.0], [-56.0, -56.0, 71.0, 71.0]]
    for i in range(AnchorGenerator.cache_size + 3):
        gen(1, i + 1)
    assert len(gen._cache) == AnchorGenerator.cache_size


def test_blob_layouts_to_anchor_order() -> None:
    n, a, h, w = 2, 3, 2, 4
    cls = torch.randn(n, 2 * a, h, w)
    bbox = torch.randn(n, 4 * a, h, w)
    c = rpn_cls_to_anchor_order(cls)
    b = rpn_bbox_to_anchor_order(bbox)
    fg = rpn_fg_scores_to_anchor_order(cls)
    assert c.shape == (n, h * w * a, 2) and b.shape == (n, h * w * a, 4) and fg.shape == (n, h * w * a)
    for i in range(n):
        for yy in range(h):
            for xx in range(w):
                for k in range(a):
                    m = (yy * w + xx) * a + k
                    assert c[i, m, 0] == cls[i, k, yy, xx] and c[i, m, 1] == cls[i, a + k, yy, xx]
                    assert fg[i, m] == cls[i, a + k, yy, xx]
                    assert torch.equal(b[i, m], bbox[i, 4 * k: 4 * k + 4, yy, xx])
    with pytest.raises(ModelError):
        rpn_bbox_to_anchor_order(torch.zeros(1, 6, 2, 2))


def test_anchor_base_size_is_independent_of_stride() -> None:
    gen = AnchorGenerator(AnchorSettings(feat_stride=8))  # py-faster-rcnn: base size 16 whatever the stride
    grid = gen(1, 2)
    assert torch.equal(grid[:9], generate_anchors())
    assert torch.equal(grid[9:], generate_anchors() + torch.tensor([8.0, 0.0, 8.0, 0.0]))
    assert torch.equal(AnchorGenerator(AnchorSettings(base_size=8, ratios=(1,), scales=(1,)))(1, 1),
                       torch.tensor([[0.0, 0.0, 7.0, 7.0]]))
