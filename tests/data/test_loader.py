"""Training loader: py-faster-rcnn's batch order, resume, sharding, batch contents, worker independence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_trt.data.blob import prep_im_for_blob
from frcnn_trt.data.imdb import ImageAnnotation
from frcnn_trt.data.load_failures import FailureBoard
from frcnn_trt.data.loader import AspectGroupedBatchSampler, Batch, RoidbDataset, make_train_loader
from frcnn_trt.data.roidb_chain import (
    RoidbEntry,
    add_bbox_regression_targets,
    append_flipped_images,
    gt_roidb,
    merge_proposals,
    prepare_roidb,
)
from frcnn_trt.errors import DatasetError

MEANS = (102.9801, 115.9465, 122.7717)


def _legacy_stream(widths: np.ndarray, heights: np.ndarray, ipb: int, seed: int, n_batches: int) -> list[list[int]]:
    """py-faster-rcnn's RoIDataLayer (_shuffle_roidb_inds / _get_next_minibatch_inds), same RNG draws."""
    rng = np.random.default_rng(seed)

    def shuffle() -> np.ndarray:
        horz = widths >= heights
        inds = np.hstack((rng.permutation(np.where(horz)[0]), rng.permutation(np.where(~horz)[0])))
        inds = np.reshape(inds, (-1, 2))
        row_perm = rng.permutation(np.arange(inds.shape[0]))
        return np.reshape(inds[row_perm, :], (-1,))

    perm, cur, out = shuffle(), 0, []
    for _ in range(n_batches):
        if cur + ipb >= len(widths):
            perm, cur = shuffle(), 0
        out.append(perm[cur : cur + ipb].tolist())
        cur += ipb
    return out


W8 = np.array([50, 30, 50, 30, 50, 30, 40, 40])
H8 = np.array([30, 50, 30, 50, 30, 50, 40, 41])  # horizontal: 0, 2, 4, 6 (w == h counts); vertical: 1, 3, 5, 7


def _sampler(**kw: Any) -> AspectGroupedBatchSampler:
    args: dict[str, Any] = {"ims_per_batch": 2, "seed": 3, "max_iters": 20}
    args.update(kw)
    return AspectGroupedBatchSampler(W8, H8, **args)


@pytest.mark.parametrize("ipb", [1, 2])
def test_sampler_reproduces_py_faster_rcnn_order(ipb: int) -> None:
    got = list(_sampler(ims_per_batch=ipb, max_iters=30))
    assert got == _legacy_stream(W8, H8, ipb, 3, 30)


def test_sampler_pairs_share_orientation_and_last_batch_is_skipped() -> None:
    horz = W8 >= H8
    batches = list(_sampler(ims_per_batch=1, max_iters=7 * 5))
    for p in range(5):  # 8 entries, IMS_PER_BATCH 1: 7 batches per pass (the 8th position is skipped)
        one_pass = [b[0] for b in batches[7 * p : 7 * p + 7]]
        assert len(set(one_pass)) == 7
        for k in range(0, 6, 2):  # pairs (0,1), (2,3), (4,5) of the permutation: one orientation each
            assert horz[one_pass[k]] == horz[one_pass[k + 1]]
    two = list(_sampler(ims_per_batch=2, max_iters=12))
    assert all(horz[a] == horz[b] for a, b in two)
    for p in range(4):  # 8 entries, IMS_PER_BATCH 2: 3 batches per pass, the 4th pair never used
        flat = [i for b in two[3 * p : 3 * p + 3] for i in b]
        assert len(set(flat)) == 6


def test_sampler_without_grouping_and_odd_count() -> None:
    plain = AspectGroupedBatchSampler(W8, H8, ims_per_batch=2, seed=0, aspect_grouping=False, max_iters=6)
    rng = np.random.default_rng(0)
    p1, p2 = rng.permutation(8), rng.permutation(8)
    assert list(plain) == [
        p1[0:2].tolist(),
        p1[2:4].tolist(),
        p1[4:6].tolist(),
        p2[0:2].tolist(),
        p2[2:4].tolist(),
        p2[4:6].tolist(),
    ]
    odd = AspectGroupedBatchSampler(W8[:5], H8[:5], ims_per_batch=1, seed=0, max_iters=8)
    assert all(0 <= b[0] < 5 for b in odd)  # py-faster-rcnn's reshape(-1, 2) would fail here


def test_sampler_determinism_start_iter_and_shards() -> None:
    full = list(_sampler(max_iters=60))
    assert full == list(_sampler(max_iters=60))
    assert full != list(_sampler(max_iters=60, seed=4))
    assert list(_sampler(start_iter=17, max_iters=60)) == full[17:]
    assert len(_sampler(start_iter=17, max_iters=60)) == 43
    r0 = list(_sampler(max_iters=20, num_replicas=2, rank=0))
    r1 = list(_sampler(max_iters=20, num_replicas=2, rank=1))
    # 8 entries, 2 per batch: 3 batches per pass; a step takes 2 of one pass, the odd third is skipped.
    assert r0 == full[0::3][:20] and r1 == full[1::3][:20]
    for k in range(20):  # the two ranks never get the same images in one step
        assert not set(r0[k]) & set(r1[k])
    assert list(_sampler(max_iters=20, num_replicas=1)) == full[:20]
    with pytest.raises(DatasetError, match="num_replicas"):
        _sampler(num_replicas=4)
    assert list(_sampler(start_iter=5, max_iters=20, num_replicas=2, rank=1)) == r1[5:]


# --------------------------------------------------------------------------------------------------
# Dataset / collate / loader


def _write(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb[:, :, ::-1]  # BGR


def _roidb(tmp_path: Path, *, proposals: bool) -> tuple[list[RoidbEntry], dict[str, np.ndarray]]:
    bgr = {"h": _write(tmp_path / "h.png", 30, 40, 0), "v": _write(tmp_path / "v.png", 40, 30, 1)}
    anns = [
        ImageAnnotation("h", tmp_path / "h.png", 40, 30, np.array([[2, 3, 20, 25]], np.float32), np.array([1])),
        ImageAnnotation(
            "v",
            tmp_path / "v.png",
            30,
            40,
            np.array([[0, 0, 29, 9], [5, 5, 9, 30]], np.float32),
            np.array([2, 1]),
        ),
    ]
    rd = gt_roidb(anns, num_classes=3)
    if proposals:
        rd = merge_proposals(
            rd,
            {
                "h": np.array([[2.3, 3, 20, 24.5], [30, 0, 39, 5]], np.float32),
                "v": np.array([[0, 1, 29, 9.75]], np.float32),
            },
        )
    rd = append_flipped_images(rd)
    prepare_roidb(rd)
    if proposals:
        add_bbox_regression_targets(rd, num_classes=3)
    return rd, bgr


def test_batch_shapes_dtypes_and_contents(tmp_path: Path) -> None:
    rd, bgr = _roidb(tmp_path, proposals=False)
    loader = make_train_loader(
        rd,
        ims_per_batch=2,
        scales=(60,),
        max_size=100,
        pixel_means=MEANS,
        seed=3,
        max_iters=3,
        aspect_grouping=False,
    )
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3
    for b in batches:
        assert isinstance(b, Batch) and b.num_images == 2
        assert b.images.dtype == torch.float32 and b.im_info.dtype == torch.float32
        assert b.rois is None and b.roi_bbox_targets is None
        sizes = []
        for i, idx in enumerate(b.indices or []):
            e = rd[idx]
            h, w = (60, 80) if e.width > e.height else (80, 60)  # scale 2 for both aspects
            sizes.append((h, w))
            np.testing.assert_allclose(b.im_info[i].numpy(), [h, w, 2.0])
            assert b.gt_boxes[i].dtype == torch.float32 and b.gt_classes[i].dtype == torch.int64
            np.testing.assert_allclose(b.gt_boxes[i].numpy(), e.boxes * 2)
            np.testing.assert_array_equal(b.gt_classes[i].numpy(), e.gt_classes)
            im = bgr[e.image_id][:, ::-1] if e.flipped else bgr[e.image_id]
            ref, _ = prep_im_for_blob(im, MEANS, 60, 100)
            np.testing.assert_allclose(b.images[i, :, :h, :w].numpy(), ref.transpose(2, 0, 1), atol=1e-4)
            assert (b.images[i, :, h:, :] == 0).all() and (b.images[i, :, :, w:] == 0).all()
            assert b.flipped is not None and b.flipped[i] == e.flipped
        assert tuple(b.images.shape) == (2, 3, max(s[0] for s in sizes), max(s[1] for s in sizes))
    moved = batches[0].to("meta")
    assert moved.images.device.type == "meta" and all(t.device.type == "meta" for t in moved.gt_boxes)


def test_proposal_mode_returns_scaled_unrounded_rois_and_targets(tmp_path: Path) -> None:
    rd, _ = _roidb(tmp_path, proposals=True)
    ds = RoidbDataset(rd, scales=(60, 45), max_size=100, pixel_means=MEANS)
    assert ds.with_rois
    s = ds[(0, 1)]  # image "h" (30x40), scale index 1: 45/30 = 1.5
    assert s.im_scale == 1.5 and s.image.shape == (45, 60, 3)
    assert s.rois is not None and s.rois.dtype == np.float32
    np.testing.assert_allclose(s.rois, rd[0].boxes * 1.5)
    assert s.rois[1, 0] == pytest.approx(2.3 * 1.5, abs=1e-5)  # not rounded
    np.testing.assert_array_equal(s.max_overlaps, rd[0].max_overlaps)
    np.testing.assert_array_equal(s.max_classes, rd[0].max_classes)
    assert rd[0].bbox_targets is not None and s.bbox_targets is not None and s.bbox_targets.shape == (3, 4)
    np.testing.assert_array_equal(s.bbox_targets, rd[0].bbox_targets[:, 1:])
    np.testing.assert_array_equal(s.bbox_target_classes, rd[0].bbox_targets[:, 0])
    np.testing.assert_allclose(s.gt_boxes, rd[0].boxes[:1] * 1.5)
    loader = make_train_loader(rd, ims_per_batch=2, scales=(60,), max_size=100, pixel_means=MEANS, seed=0, max_iters=2)
    b = next(iter(loader))
    assert b.rois is not None and b.roi_bbox_targets is not None and b.roi_max_classes is not None
    for i, idx in enumerate(b.indices or []):
        assert b.rois[i].shape == (rd[idx].num_rois, 4) and b.roi_bbox_targets[i].shape == (
            rd[idx].num_rois,
            4,
        )
        assert b.roi_max_classes[i].dtype == torch.int64


def test_same_batches_with_zero_and_two_workers_and_resume(tmp_path: Path) -> None:
    rd, _ = _roidb(tmp_path, proposals=True)
    kw: dict[str, Any] = {
        "ims_per_batch": 1,
        "scales": (60, 45, 36),
        "max_size": 100,
        "pixel_means": MEANS,
        "seed": 7,
        "max_iters": 6,
    }
    b0 = list(make_train_loader(rd, num_workers=0, **kw))
    b2 = list(make_train_loader(rd, num_workers=2, **kw))
    assert len({float(b.im_info[0, 2]) for b in b0}) > 1  # several scales drawn
    for x, y in zip(b0, b2, strict=True):
        assert x.indices == y.indices
        torch.testing.assert_close(x.images, y.images, rtol=0, atol=0)
        torch.testing.assert_close(x.im_info, y.im_info, rtol=0, atol=0)
        assert x.rois is not None and y.rois is not None
        torch.testing.assert_close(x.rois[0], y.rois[0], rtol=0, atol=0)
    resumed = list(make_train_loader(rd, start_iter=4, **kw))
    assert [b.indices for b in resumed] == [b.indices for b in b0[4:]]
    torch.testing.assert_close(resumed[1].images, b0[5].images, rtol=0, atol=0)


def test_image_size_mismatch_is_skipped_and_reported(tmp_path: Path) -> None:
    rd, _ = _roidb(tmp_path, proposals=False)
    rd[0].width = 41
    ds = RoidbDataset(rd, scales=(60,), max_size=100, pixel_means=MEANS)
    sample = ds[0]  # the image changed after the check: skipped, the next entry takes its place
    assert sample.index == 1 and len(sample.skipped) == 1
    file, reason = sample.skipped[0]
    assert file == str(rd[0].image) and "40x30" in reason and "41x30" in reason
    assert ds.failures.count() == 1


def _loader_kw() -> dict[str, Any]:
    return {"ims_per_batch": 1, "scales": (60,), "max_size": 100, "pixel_means": MEANS, "seed": 7, "max_iters": 8}


@pytest.mark.parametrize("workers", [0, 2])
def test_image_deleted_mid_training_is_skipped_and_reported(
    tmp_path: Path, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    rd, _ = _roidb(tmp_path, proposals=False)
    expected = list(make_train_loader(rd, **_loader_kw()))
    (tmp_path / "h.png").unlink()  # after the roidb (and its image check) was built
    with caplog.at_level("WARNING"):
        batches = list(make_train_loader(rd, num_workers=workers, **_loader_kw()))
    assert len(batches) == len(expected)  # every iteration still gets its batch
    reasons: list[str] = []
    for got, want in zip(batches, expected, strict=True):
        assert got.image_ids == ["v"]
        if want.image_ids == ["v"]:
            assert got.indices == want.indices and not got.skipped
            torch.testing.assert_close(got.images, want.images, rtol=0, atol=0)
        else:
            assert got.skipped is not None and got.skipped[0][0] == str(tmp_path / "h.png")
            reasons.append(got.skipped[0][1])
    assert reasons and any("not found" in r for r in reasons)  # which batch saw it first depends on the workers
    assert all("not found" in r or r == "failed to load earlier in this run" for r in reasons)
    if workers == 0:  # (workers log in their own processes)
        assert f"skipped: {tmp_path / 'h.png'}" in caplog.text


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_failures_stop_the_run_with_a_clean_dataset_error(tmp_path: Path, workers: int) -> None:
    rd, _ = _roidb(tmp_path, proposals=False)
    (tmp_path / "h.png").write_bytes(b"gone bad")
    with pytest.raises(DatasetError, match=r"1 of 2 training images failed .* more than the cap of 0") as info:
        list(make_train_loader(rd, num_workers=workers, max_failures=0, **_loader_kw()))
    assert "Traceback" not in str(info.value) and "h.png" in str(info.value)
    assert FailureBoard(["a", "a", "b"]).cap == 10 and FailureBoard([str(i) for i in range(5000)]).cap == 50
