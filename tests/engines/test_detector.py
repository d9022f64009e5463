"""The shared Detector: same detections and proposals on every backend, im_detect semantics, backend choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frcnn_trt.engines import BackendError, Detector, select_backend
from frcnn_trt.engines.backends import backend_availability
from frcnn_trt.errors import ModelError
from frcnn_trt.export.parity import compare_detections, synthetic_images
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.postprocess import detections_from_scores
from tests.helpers import tiny_config

SIZES = ((180, 240), (150, 260), (240, 170))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detectors(exported: tuple[Path, Path]) -> dict[str, Detector]:
    _, out = exported
    # the torch backend as the eager reference: NCHW, the layout im_detect runs in (channels-last, the CPU default
    # for an export, is within float tolerance: tests/engines/test_torch_layout.py)
    return {"torch": Detector.from_export(out, "torch", device="cpu", backend_options={"memory_format": "contiguous"}),
            "onnxruntime": Detector.from_export(out, "onnxruntime", device="cpu")}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return synthetic_images(3, seed=5, sizes=SIZES)


def test_both_backends_give_the_same_detections(detectors: dict[str, Detector], images: list[np.ndarray]) -> None:
    ref = [detectors["torch"].detect([im])[0] for im in images]
    other = [detectors["onnxruntime"].detect([im])[0] for im in images]
    assert sum(len(r) for r in ref) > 50
    for r, o, im in zip(ref, other, images, strict=True):
        assert len(r) == len(o)
        m = compare_detections(r, o, iou_thresh=0.99)
        assert m["matched"] == len(r)
        assert m["max_box_error"] < 1e-3 and m["max_score_error"] < 1e-5
        h, w = im.shape[:2]
        assert r.boxes.dtype == np.float32 and r.labels.dtype == np.int64
        assert (r.boxes[:, 0] >= 0).all() and (r.boxes[:, 2] <= w - 1).all() and (r.boxes[:, 3] <= h - 1).all()
        assert r.label_names == [f"class{i}" for i in r.labels]
        assert (r.labels >= 1).all() and len(r) <= 100


def test_detect_is_py_faster_rcnn_im_detect(exported: tuple[Path, Path], detectors: dict[str, Detector],
                                            images: list[np.ndarray]) -> None:
    """Detector (torch backend) == model.im_detect + test_net's per-class loop, the reference eager pipeline."""
    from frcnn_trt.data.blob import preprocess_images

    model, _ = load_checkpoint(exported[0])
    cfg = tiny_config()
    im = images[0]
    blob, im_info = preprocess_images([im], cfg.PIXEL_MEANS, 240, 400)
    (scores, boxes), = model.im_detect(blob, im_info, torch.tensor([im.shape[:2]], dtype=torch.float32))
    b, s, c = detections_from_scores(scores, boxes, score_thresh=0.05, nms_thresh=0.3, max_per_image=100)
    got = detectors["torch"].detect([im])[0]
    np.testing.assert_array_equal(got.boxes, b.numpy())
    np.testing.assert_array_equal(got.scores, s.numpy())
    np.testing.assert_array_equal(got.labels, c.numpy())


def test_thresholds_and_timing(exported: tuple[Path, Path], images: list[np.ndarray]) -> None:
    loose = Detector.from_export(exported[1], "onnxruntime", device="cpu", verify=False)
    strict = Detector.from_export(exported[1], "onnxruntime", device="cpu", verify=False, conf_thresh=0.3,
                                  max_dets=5)
    a, b = loose.detect(images[:1])[0], strict.detect(images[:1])[0]
    assert len(b) <= 5 < len(a)
    assert (b.scores > 0.3).all()
    t = strict.last_timing
    assert t.images == 1 and t.rpn > 0 and t.detector > 0 and t.total == pytest.approx(
        t.preprocess + t.rpn + t.proposals + t.detector + t.postprocess)
    with pytest.raises(BackendError):  # a ModelError would also be fine; it must not be silent
        Detector.from_checkpoint(exported[0], "onnxruntime")


def test_batched_detect(detectors: dict[str, Detector], images: list[np.ndarray]) -> None:
    out = detectors["onnxruntime"].detect(images)  # one zero-padded blob of 3 images
    ref = detectors["torch"].detect(images)
    assert len(out) == 3 and detectors["onnxruntime"].last_timing.images == 3
    for r, o in zip(ref, out, strict=True):
        assert len(o) > 0
        assert compare_detections(r, o, iou_thresh=0.99)["matched"] == len(r) == len(o)


def test_propose_is_rpn_generate_and_equal_across_backends(detectors: dict[str, Detector],
                                                           images: list[np.ndarray]) -> None:
    from frcnn_trt.data.blob import compute_scale

    for im in images:
        ref = detectors["torch"].propose([im])[0]
        got = detectors["onnxruntime"].propose([im])[0]
        ref_boxes, ref_scores, boxes, scores = ref.boxes, ref.scores, got.boxes, got.scores
        assert ref.is_proposals and ref.label_names == [] and ref.size == got.size == im.shape[:2]
        assert boxes.shape == ref_boxes.shape and boxes.shape[0] > 300  # uncapped pre-NMS, up to 2000 kept
        # the same set of boxes (within 1e-3 px) with the same scores; boxes with exactly tied scores may come
        # out of the sort in another order on another backend
        dist = np.abs(boxes[:, None, :] - ref_boxes[None, :, :]).max(2)
        assert dist.min(1).max() < 1e-3 and dist.min(0).max() < 1e-3
        np.testing.assert_allclose(scores, ref_scores, atol=1e-4, rtol=0)  # FP32 parity bound of the issue
        assert (np.diff(ref_scores) <= 0).all()
        h, w = im.shape[:2]
        s = compute_scale(h, w, 240, 400)
        # original-image coordinates: within (W·s − 1) / s of the blob, i.e. about the original image
        assert boxes[:, 2].max() <= (round(w * s) - 1) / s + 1e-3 and boxes[:, 3].max() <= (round(h * s) - 1) / s + 1e-3
    capped = detectors["torch"].propose(images[:1], pre_nms_top_n=6000, post_nms_top_n=300)[0].boxes
    assert capped.shape[0] == 300
    # run(): one batch of either task with this call's own timing (what the runner's threads use)
    dets, times = detectors["torch"].run(images[:2], "propose", pre_nms_top_n=6000, post_nms_top_n=300)
    assert len(dets) == 2 and len(dets[0]) == 300 and times.images == 2 and times.detector == 0.0
    dets, times = detectors["torch"].run(images[:1])
    assert not dets[0].is_proposals and times.detector > 0 and dets[0].size == images[0].shape[:2]
    with pytest.raises(ModelError, match="task"):
        detectors["torch"].run(images[:1], "segment")  # type: ignore[arg-type]


def test_auto_and_explicit_backend_choice(exported: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    avail = backend_availability("cpu")
    assert avail["torch"][0] and avail["onnxruntime"][0]
    assert not avail["tensorrt"][0]  # no TensorRT backend in this build, nor a GPU
    name, why = select_backend("auto", "cpu")
    assert name == "onnxruntime" and "tensorrt" in why
    with caplog.at_level("INFO", logger="frcnn_trt"):
        det = Detector.from_export(exported[1], "auto", device="cpu", verify=False)
    assert det.backend.name == "onnxruntime"
    assert any("backend auto → onnxruntime" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendError, match="tensorrt"):
        Detector.from_export(exported[1], "tensorrt", device="cpu", verify=False)
    with pytest.raises(BackendError, match="unknown backend 'tflite'"):
        select_backend("tflite", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA GPU"):
            Detector.from_export(exported[1], "onnxruntime", device="cuda", verify=False)
