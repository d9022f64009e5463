"""roidb chain: gt_roidb, flipping, proposals, bbox targets, filtering, cache."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from frcnn_trt.data import roidb_cache, roidb_chain
from frcnn_trt.data.imdb import ImageAnnotation
from frcnn_trt.data.roidb import build_training_roidb
from frcnn_trt.data.roidb_chain import (
    RoidbEntry,
    add_bbox_regression_targets,
    append_flipped_images,
    bbox_overlaps_np,
    filter_roidb,
    gt_roidb,
    merge_proposals,
    prepare_roidb,
)
from frcnn_trt.errors import DatasetError

K1 = 3  # background + 2 classes


def _ann(
    image_id: str,
    boxes: Sequence[Sequence[float]],
    classes: list[int],
    *,
    w: int = 20,
    h: int = 20,
    difficult: list[bool] | None = None,
    path: Path | None = None,
) -> ImageAnnotation:
    return ImageAnnotation(
        image_id=image_id,
        path=path or Path(f"/nonexistent/{image_id}.jpg"),
        width=w,
        height=h,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
        difficult=np.asarray(difficult if difficult is not None else [], dtype=bool),
    )


# --------------------------------------------------------------------------------------------------
# gt_roidb


def test_gt_roidb_drops_difficult_unless_use_diff() -> None:
    anns = [
        _ann("a", [[0, 0, 9, 9], [5, 5, 15, 15]], [1, 2], difficult=[False, True]),
        _ann("b", [[1, 1, 3, 3]], [2], difficult=[True]),
    ]
    rd = gt_roidb(anns, num_classes=K1)
    assert [e.num_rois for e in rd] == [1, 0]  # the now-empty image is kept (filter_roidb reports it)
    e = rd[0]
    assert e.boxes.dtype == np.float32 and e.gt_classes.dtype == np.int64
    np.testing.assert_array_equal(e.gt_overlaps, [[0, 1, 0]])
    np.testing.assert_array_equal(e.max_overlaps, [1.0])
    np.testing.assert_array_equal(e.max_classes, [1])
    assert [e.num_rois for e in gt_roidb(anns, num_classes=K1, use_diff=True)] == [2, 1]


def test_gt_roidb_validates_classes_and_boxes() -> None:
    with pytest.raises(DatasetError, match=r"'a'.*class index"):
        gt_roidb([_ann("a", [[0, 0, 1, 1]], [3])], num_classes=K1)
    with pytest.raises(DatasetError, match=r"'a'.*x2 < x1"):
        gt_roidb([_ann("a", [[5, 0, 1, 1]], [1])], num_classes=K1)


# --------------------------------------------------------------------------------------------------
# flipping


def test_flip_edges_no_wraparound_and_involution() -> None:
    boxes = [[0, 1, 3, 4], [5, 0, 9, 2], [0, 0, 0, 0], [9, 3, 9, 8], [0, 0, 9, 9]]
    rd = gt_roidb([_ann("a", boxes, [1, 2, 1, 2, 1], w=10, h=10)], num_classes=K1)
    both = append_flipped_images(rd)
    assert len(both) == 2 and not both[0].flipped and both[1].flipped
    expected = [[6, 1, 9, 4], [0, 0, 4, 2], [9, 0, 9, 0], [0, 3, 0, 8], [0, 0, 9, 9]]
    np.testing.assert_array_equal(both[1].boxes, expected)
    assert both[1].boxes.dtype == np.float32
    assert (both[1].boxes[:, 2] >= both[1].boxes[:, 0]).all() and both[1].boxes.max() <= 9
    np.testing.assert_array_equal(both[1].gt_classes, both[0].gt_classes)
    back = append_flipped_images([RoidbEntry(**{**both[1].__dict__, "flipped": False})])[1]
    np.testing.assert_array_equal(back.boxes, np.asarray(boxes, dtype=np.float32))


def test_flip_rejects_a_box_outside_the_image() -> None:
    rd = gt_roidb([_ann("img_7", [[0, 0, 10, 5]], [1], w=10, h=10)], num_classes=K1)
    with pytest.raises(DatasetError, match=r"img_7.*outside"):
        append_flipped_images(rd)


def test_flip_reads_width_from_the_header_when_unknown(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 12, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    rd = gt_roidb([_ann("a", [[0, 0, 2, 1]], [1], w=0, h=0, path=tmp_path / "a.png")], num_classes=K1)
    flipped = append_flipped_images(rd)[1]
    assert (flipped.width, flipped.height) == (12, 4)
    np.testing.assert_array_equal(flipped.boxes, [[9, 0, 11, 1]])


# --------------------------------------------------------------------------------------------------
# proposals

GT = [[0, 0, 9, 9], [10, 10, 19, 19]]
PROPS = np.array(
    [
        [0, 0, 9, 9],  # = gt A: IoU 1, class 1
        [10, 10, 19, 19],  # = gt B: IoU 1, class 2
        [0, 0, 4, 9],  # half of A: IoU 50/100 = 0.5, class 1
        [5, 5, 14, 14],  # 25/175 = 1/7 with A and with B: tie -> first gt (class 1)
        [15, 0, 19, 4],  # touches nothing: IoU 0, class 0
    ],
    dtype=np.float32,
)


def test_bbox_overlaps_plus_one_geometry() -> None:
    iou = bbox_overlaps_np(PROPS, np.asarray(GT, dtype=np.float32))
    np.testing.assert_allclose(iou[:, 0], [1, 0, 0.5, 1 / 7, 0])
    np.testing.assert_allclose(iou[:, 1], [0, 1, 0, 1 / 7, 0])
    assert bbox_overlaps_np(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))[0, 0] == 1.0  # 1-pixel box


def test_merge_proposals_hand_case() -> None:
    rd = merge_proposals(gt_roidb([_ann("a", GT, [1, 2])], num_classes=K1), {"a": PROPS})
    e = rd[0]
    assert e.num_rois == 7 and e.num_gt == 2
    np.testing.assert_array_equal(e.boxes[:2], GT)
    np.testing.assert_array_equal(e.boxes[2:], PROPS)
    np.testing.assert_array_equal(e.gt_classes, [1, 2, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(e.max_overlaps, [1, 1, 1, 1, 0.5, 1 / 7, 0], rtol=1e-6)
    np.testing.assert_array_equal(e.max_classes, [1, 2, 1, 2, 1, 1, 0])
    dense = e.gt_overlaps
    assert dense.shape == (7, K1) and dense.dtype == np.float32
    np.testing.assert_allclose(dense[4], [0, 0.5, 0])
    np.testing.assert_allclose(dense[5], [0, 1 / 7, 0], rtol=1e-6)
    np.testing.assert_array_equal(dense[6], [0, 0, 0])
    np.testing.assert_array_equal((dense > 0).sum(axis=1), [1, 1, 1, 1, 1, 1, 0])


def test_merge_then_flip_equals_flip_then_merge() -> None:
    props = PROPS + np.float32(0.25)  # fractional proposal coordinates
    props[:, 2:] = np.minimum(props[:, 2:], 19)
    base = gt_roidb([_ann("a", GT, [1, 2])], num_classes=K1)
    a = append_flipped_images(merge_proposals(base, {"a": props}))
    b = merge_proposals(append_flipped_images(base), {"a": props})
    for x, y in zip(a, b, strict=True):
        assert x.flipped == y.flipped
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-5)
        np.testing.assert_array_equal(x.max_overlaps, y.max_overlaps)
        np.testing.assert_array_equal(x.max_classes, y.max_classes)
    np.testing.assert_array_equal(a[0].max_overlaps, a[1].max_overlaps)  # an image and its flip agree
    np.testing.assert_allclose(a[1].boxes[2, [0, 2]], [20 - props[0, 2] - 1, 20 - props[0, 0] - 1])


def test_merge_proposals_errors() -> None:
    base = gt_roidb([_ann("a", GT, [1, 2])], num_classes=K1)
    with pytest.raises(DatasetError, match="no proposals for image 'a'"):
        merge_proposals(base, {})
    with pytest.raises(DatasetError, match="shape"):
        merge_proposals(base, {"a": np.zeros((3, 5), dtype=np.float32)})
    merged = merge_proposals(base, {"a": np.zeros((0, 4), dtype=np.float32)})
    assert merged[0].num_rois == 2
    with pytest.raises(ValueError, match="non-gt"):
        merge_proposals(merge_proposals(base, {"a": PROPS}), {"a": PROPS})


# --------------------------------------------------------------------------------------------------
# regression targets


def _two_image_roidb() -> list[RoidbEntry]:
    """Image 1: gt A (class 1) + P (IoU 0.5) + a low-overlap proposal; image 2: gt C (class 1) + Q."""
    a = merge_proposals(
        gt_roidb([_ann("one", [[0, 0, 9, 9]], [1])], num_classes=K1),
        {"one": np.array([[0, 0, 4, 9], [5, 5, 14, 14]], dtype=np.float32)},
    )
    b = merge_proposals(
        gt_roidb([_ann("two", [[0, 0, 19, 9]], [1])], num_classes=K1),
        {"two": np.array([[0, 0, 19, 14]], dtype=np.float32)},  # IoU 200/300
    )
    rd = a + b
    prepare_roidb(rd)
    return rd


# Raw targets (hand-worked, +1 widths): P -> A: ex w 5 ctr 2.5; gt w 10 ctr 5: (0.5, 0, log 2, 0).
# Q -> C: ex h 15 ctr_y 7.5; gt h 10 ctr_y 5: (0, -1/6, 0, log(2/3)). gt rows: zeros.
_RAW = np.array([[0, 0, 0, 0], [0.5, 0, math.log(2), 0], [0, 0, 0, 0], [0, -1 / 6, 0, math.log(2 / 3)]])


def test_regression_targets_empirical_means_and_stds() -> None:
    rd = _two_image_roidb()
    means, stds = add_bbox_regression_targets(rd, num_classes=K1)
    assert means.shape == (K1, 4) and stds.shape == (K1, 4)
    exp_mean = _RAW.mean(axis=0)
    exp_std = np.sqrt((_RAW**2).mean(axis=0) - exp_mean**2)
    np.testing.assert_allclose(means[1], exp_mean, rtol=1e-6)
    np.testing.assert_allclose(stds[1], exp_std, rtol=1e-6)
    np.testing.assert_array_equal(means[[0, 2]], 0)  # background and an empty class: 0 / 0 as py-faster-rcnn
    np.testing.assert_array_equal(stds[[0, 2]], 0)
    t1, t2 = rd[0].bbox_targets, rd[1].bbox_targets
    assert t1 is not None and t2 is not None and t1.dtype == np.float32 and t1.shape == (3, 5)
    np.testing.assert_array_equal(t1[:, 0], [1, 1, 0])
    np.testing.assert_array_equal(t2[:, 0], [1, 1])
    norm = (_RAW - exp_mean) / exp_std
    np.testing.assert_allclose(t1[:2, 1:], norm[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t2[:, 1:], norm[2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t1[2], 0)  # IoU 1/7 < BBOX_THRESH: no target, untouched


def test_regression_targets_precomputed_and_unnormalised() -> None:
    rd = _two_image_roidb()
    means, stds = add_bbox_regression_targets(rd, num_classes=K1, precomputed=True)
    np.testing.assert_array_equal(means, np.zeros((K1, 4)))
    np.testing.assert_array_equal(stds, np.tile([0.1, 0.1, 0.2, 0.2], (K1, 1)))
    t = rd[0].bbox_targets
    assert t is not None
    np.testing.assert_allclose(t[1, 1:], _RAW[1] / [0.1, 0.1, 0.2, 0.2], rtol=1e-6)
    rd = _two_image_roidb()
    add_bbox_regression_targets(rd, num_classes=K1, normalize_targets=False)
    t = rd[1].bbox_targets
    assert t is not None
    np.testing.assert_allclose(t[:, 1:], _RAW[2:], rtol=1e-6, atol=1e-7)


def test_zero_variance_class_gets_unit_std(caplog: pytest.LogCaptureFixture) -> None:
    rd = gt_roidb([_ann("a", [[0, 0, 4, 4]], [2])], num_classes=K1)  # class 2: one zero target
    prepare_roidb(rd)
    with caplog.at_level(logging.WARNING):
        _, stds = add_bbox_regression_targets(rd, num_classes=K1)
    np.testing.assert_array_equal(stds[2], 1.0)
    assert "zero variance" in caplog.text
    assert rd[0].bbox_targets is not None and np.isfinite(rd[0].bbox_targets).all()


# --------------------------------------------------------------------------------------------------
# filtering


def test_filter_roidb_rules_and_reasons() -> None:
    gt_only = gt_roidb(
        [_ann("full", [[0, 0, 9, 9]], [1]), _ann("empty", [[0, 0, 9, 9]], [1], difficult=[True])],
        num_classes=K1,
    )
    props = merge_proposals(
        gt_roidb([_ann("bgonly", [], []), _ann("faint", [[0, 0, 9, 9]], [1])], num_classes=K1),
        {"bgonly": np.array([[0, 0, 5, 5]], dtype=np.float32), "faint": np.zeros((0, 4), dtype=np.float32)},
    )
    rd = append_flipped_images(gt_only) + props
    prepare_roidb(rd)
    kept, removed = filter_roidb(rd, fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.1)
    assert [(e.image_id, e.flipped) for e in kept] == [("full", False), ("full", True), ("faint", False)]
    assert [(r[0], r[1]) for r in removed] == [("empty", False), ("empty", True), ("bgonly", False)]
    assert "no ground-truth boxes" in removed[0][2]
    assert "no RoI" in removed[2][2] and "[0.1, 0.5)" in removed[2][2]
    kept, removed = filter_roidb(rd, fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.0)  # alt-opt LO
    assert ("bgonly", False) in [(e.image_id, e.flipped) for e in kept]


# --------------------------------------------------------------------------------------------------
# build + cache


class _FakeImdb:
    name = "fake_2007_trainval"
    num_classes = K1

    def __init__(self, root: Path) -> None:
        self.calls = 0
        self.version = "v1"
        self.anns = []
        for i, (w, h) in enumerate([(20, 16), (16, 20), (24, 24)]):
            path = root / f"im{i}.png"
            Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(path)
            self.anns.append(
                _ann(
                    f"im{i}",
                    [[1, 1, 8, 8], [2, 3, 12, 14]],
                    [1, 2],
                    w=w,
                    h=h,
                    path=path,
                    difficult=[False, i == 2],
                )
            )

    def annotations(self) -> list[ImageAnnotation]:
        self.calls += 1
        return self.anns

    def fingerprint(self) -> str:
        return self.version


def _proposals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(3):
        xy = rng.uniform(0, 8, (6, 2))
        out[f"im{i}"] = np.hstack([xy, xy + rng.uniform(2, 7, (6, 2))]).astype(np.float32)
    return out


def _same(a: list[RoidbEntry], b: list[RoidbEntry]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.image_id, x.image, x.width, x.height, x.flipped) == (
            y.image_id,
            y.image,
            y.width,
            y.height,
            y.flipped,
        )
        for name in ("boxes", "gt_classes", "max_overlaps", "max_classes", "bbox_targets", "gt_overlaps"):
            vx, vy = getattr(x, name), getattr(y, name)
            assert vx.dtype == vy.dtype, name
            np.testing.assert_array_equal(vx, vy, err_msg=name)


def test_build_training_roidb_cache_hit_invalidation_and_corruption(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    imdb = _FakeImdb(tmp_path)
    cache = tmp_path / "cache"
    kw: dict[str, Any] = {"use_flipped": True, "proposals": _proposals(), "bg_thresh_lo": 0.0, "cache_dir": cache}
    first = build_training_roidb(imdb, **kw)
    assert not first.from_cache and imdb.calls == 1 and len(first.entries) == 6
    assert first.bbox_means is not None and first.bbox_means.shape == (K1, 4)
    assert sorted(p.suffix for p in cache.iterdir() if p.name.startswith("roidb_")) == [".json", ".npz"]

    hit = build_training_roidb(imdb, **kw)
    assert hit.from_cache and imdb.calls == 1
    _same(first.entries, hit.entries)
    np.testing.assert_array_equal(first.bbox_means, hit.bbox_means)
    np.testing.assert_array_equal(first.bbox_stds, hit.bbox_stds)

    other = build_training_roidb(imdb, **{**kw, "proposals": {k: v[:3] for k, v in _proposals().items()}})
    assert not other.from_cache and imdb.calls == 2  # other proposals: another key

    imdb.version = "v2"  # the dataset changed
    assert not build_training_roidb(imdb, **kw).from_cache and imdb.calls == 3
    assert build_training_roidb(imdb, **kw).from_cache and imdb.calls == 3

    assert hit.cache_path is not None
    npz = next(p for p in cache.iterdir() if p.suffix == ".npz" and p.stem.endswith(hit.cache_path.stem[-20:]))
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    imdb.version = "v1"
    with caplog.at_level(logging.WARNING):
        rebuilt = build_training_roidb(imdb, **kw)
    assert not rebuilt.from_cache and "corrupt" in caplog.text
    _same(first.entries, rebuilt.entries)
    assert build_training_roidb(imdb, **kw).from_cache  # rewritten

    assert hit.cache_path is not None
    hit.cache_path.write_text('{"format": "frcnn_trt.roidb", ')  # truncated JSON
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not build_training_roidb(imdb, **kw).from_cache
    assert "rebuilding" in caplog.text


def test_build_training_roidb_gt_only_without_cache(tmp_path: Path) -> None:
    imdb = _FakeImdb(tmp_path)
    res = build_training_roidb(imdb, use_flipped=False, bbox_reg=False)
    assert res.cache_path is None and res.bbox_means is None
    assert [e.num_rois for e in res.entries] == [2, 2, 1]  # im2's second box is difficult
    assert all(e.bbox_targets is None for e in res.entries)


def test_cache_sidecar_hashes_the_bytes_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imdb = _FakeImdb(tmp_path)
    cache = tmp_path / "cache"
    written: list[bytes] = []
    real_write = roidb_cache.atomic_write_bytes

    def write_then_clobber(path: Any, data: bytes) -> None:
        real_write(path, data)
        written.append(data)
        if len(written) == 2:  # another writer replaces the npz between our rename and our sidecar
            Path(path).write_bytes(data + b"\0")

    monkeypatch.setattr(roidb_cache, "atomic_write_bytes", write_then_clobber)
    res = build_training_roidb(imdb, use_flipped=False, cache_dir=cache)
    assert res.cache_path is not None
    meta = json.loads(res.cache_path.read_text())
    npz = res.cache_path.with_name(meta["npz"])
    assert meta["npz_sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest() == hashlib.sha256(written[0]).hexdigest()
    assert build_training_roidb(imdb, use_flipped=False, cache_dir=cache).from_cache

    # the sidecar describes what this process wrote, not what is on disk after its rename
    res2 = build_training_roidb(imdb, use_flipped=True, cache_dir=cache)
    assert res2.cache_path is not None
    meta2 = json.loads(res2.cache_path.read_text())
    assert meta2["npz_sha256"] == hashlib.sha256(written[1]).hexdigest()
    assert meta2["npz_sha256"] != hashlib.sha256(res2.cache_path.with_name(meta2["npz"]).read_bytes()).hexdigest()
    assert not build_training_roidb(imdb, use_flipped=True, cache_dir=cache).from_cache  # mismatch: rebuilt


def test_cache_written_by_rank_0_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imdb = _FakeImdb(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's environment, no process group started
    monkeypatch.setenv("RANK", "1")
    res = build_training_roidb(imdb, use_flipped=False, cache_dir=cache)
    assert res.cache_path is None and not res.from_cache and len(res.entries) == 3
    assert not cache.exists() or not any(cache.iterdir())
    monkeypatch.setenv("RANK", "0")
    assert build_training_roidb(imdb, use_flipped=False, cache_dir=cache).cache_path is not None
    monkeypatch.setenv("RANK", "1")
    assert build_training_roidb(imdb, use_flipped=False, cache_dir=cache).from_cache  # every rank reads it


# --------------------------------------------------------------------------------------------------
# memory bounded in the objects of one image


def test_best_overlaps_chunks_equal_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 300, (257, 4))
    a[:, 2:] += a[:, :2]
    b = rng.uniform(0, 300, (31, 4))
    b[:, 2:] += b[:, :2]
    monkeypatch.setattr(roidb_chain, "OVERLAP_CHUNK", 50)  # several chunks, a ragged last one
    arg, best = roidb_chain.best_overlaps(a, b)
    full = bbox_overlaps_np(a, b)
    np.testing.assert_array_equal(arg, full.argmax(axis=1))
    np.testing.assert_array_equal(best, full.max(axis=1))


def test_twenty_thousand_objects_in_one_image_stay_small_and_fast() -> None:
    """gt roidb + proposals + regression targets of one image with 20,000 objects: no [N, N] matrix (it would
    be 3.2 GB per float64 temporary); peak traced memory stays far below it."""
    rng = np.random.default_rng(1)
    n = 20_000
    xy = rng.uniform(0, 3000, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (n, 2))], axis=1).astype(np.float32)
    ann = _ann("crowd", boxes, [1] * n, w=4000, h=4000)
    props = {"crowd": boxes[:500] + np.float32(0.5)}
    tracemalloc.start()
    try:
        roidb = merge_proposals(gt_roidb([ann], num_classes=K1), props)
        add_bbox_regression_targets(roidb, num_classes=K1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200e6, peak
    t = roidb[0].bbox_targets
    assert t is not None and t.shape == (n + 500, 5) and np.isfinite(t).all()
