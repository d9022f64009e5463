"""``im_detect`` and ``test_net``: py-faster-rcnn's eager test loop, file for file.

The reference is ``test_net`` as py-faster-rcnn writes it: ``model.im_detect`` on a batch, then one image at a
time the per-class loop (:func:`detections_from_scores`), the results written by the evaluation writers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frcnn_trt.data.blob import preprocess_images
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.data.images import read_image
from frcnn_trt.evaluation import (
    Detections,
    PredictionsWriter,
    evaluate_voc,
    prediction_record,
    write_voc_results,
)
from frcnn_trt.export.onnx_export import random_checkpoint
from frcnn_trt.inference import im_detect
from frcnn_trt.inference import test_net as run_test_net
from frcnn_trt.io import atomic_write_json
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.postprocess import detections_from_scores
from tests.helpers import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("__background__", "circle", "square", "triangle")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("test_net") / "tiny.safetensors"
    return random_checkpoint(path, net="tiny", num_classes=len(CLASSES), cfg=tiny_cfg(), seed=0, rpn_spread=50.0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from frcnn_trt.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("shapes") / "shapes"
    make_synthetic_dataset(out, num_images=12, image_size=(160, 120), seed=4, classes=CLASSES[1:],
                           test_fraction=0.5)
    return out


def reference_test_net(model: torch.nn.Module, imdb: object, cfg: object, out: Path, batch_size: int) -> Detections:
    """py-faster-rcnn's test_net with this project's writers (predictions.json, results files, eval.json)."""
    t = cfg.TEST  # type: ignore[attr-defined]
    annotations = imdb.annotations()  # type: ignore[attr-defined]
    names = list(imdb.classes)  # type: ignore[attr-defined]
    found = []
    with torch.no_grad():
        for start in range(0, len(annotations), batch_size):
            ims = [read_image(a.path) for a in annotations[start:start + batch_size]]
            blob, im_info = preprocess_images(ims, cfg.PIXEL_MEANS, t.SCALES[0], t.MAX_SIZE)  # type: ignore[attr-defined]
            orig = torch.tensor([im.shape[:2] for im in ims], dtype=torch.float32)
            for j, (scores, boxes) in enumerate(model.im_detect(blob, im_info, orig)):  # type: ignore[operator]
                b, s, c = detections_from_scores(scores, boxes, score_thresh=t.SCORE_THRESH, nms_thresh=t.NMS,
                                                 max_per_image=t.MAX_PER_IMAGE)
                found.append((torch.cat([b, s[:, None], c[:, None].to(b.dtype)], 1).numpy(), ims[j].shape[:2]))
    dets = Detections()
    for a, (d, _) in zip(annotations, found, strict=True):
        dets.add(a.image_id, d[:, :4], d[:, 4], d[:, 5].astype(np.int64))
    out.mkdir(parents=True)
    with PredictionsWriter(out / "predictions.json", names) as writer:
        for a, (d, (h, w)) in zip(annotations, found, strict=True):
            writer.write(prediction_record(a.image_id, a.path, w, h, d[:, :4], d[:, 4], d[:, 5].astype(np.int64),
                                           names))
    write_voc_results(dets, out / "results", names, image_ids=[a.image_id for a in annotations])
    result = evaluate_voc(annotations, dets, names, use_07_metric=imdb.use_07_metric)  # type: ignore[attr-defined]
    atomic_write_json(out / "eval.json", result.to_json())
    return dets


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("batch_size", [1, 2])
def test_test_net_writes_what_py_faster_rcnn_test_net_writes(checkpoint: Path, shapes: Path, tmp_path: Path,
                                                               batch_size: int) -> None:
    imdb = get_imdb(f"synth:{shapes}:test")
    model, _ = load_checkpoint(checkpoint, device="cpu")
    want = reference_test_net(model, imdb, model.cfg, tmp_path / "ref", batch_size)
    got = run_test_net(model, imdb, model.cfg, tmp_path / "new", batch_size=batch_size)
    assert want.num_detections > 20
    assert list(got.detections.image_ids) == list(want.image_ids)
    for image_id in want.image_ids:
        a, b = want[image_id], got.detections[image_id]
        np.testing.assert_array_equal(b.boxes, a.boxes)
        np.testing.assert_array_equal(b.scores, a.scores)
        np.testing.assert_array_equal(b.classes, a.classes)
    ref_files = _files(tmp_path / "ref")
    assert sorted(ref_files) == ["eval.json", "predictions.json", *[f"results/comp4_det_test_{c}.txt"
                                                                    for c in CLASSES[1:]]]
    new_files = _files(tmp_path / "new")
    assert {"pr_curves.png", "pr_curves.json"} <= set(new_files)  # the PR curves beside eval.json (an addition)
    assert {k: v for k, v in new_files.items() if not k.startswith("pr_curves.")} == ref_files
    assert got.result is not None and got.seconds_per_image > 0


def test_im_detect_on_a_path_and_an_array(checkpoint: Path, shapes: Path) -> None:
    model, _ = load_checkpoint(checkpoint, device="cpu")
    path = next((shapes / "JPEGImages").glob("*.jpg"))
    scores, boxes = im_detect(model, path)
    scores2, boxes2 = im_detect(model, read_image(path))
    assert scores.shape[1] == len(CLASSES) and boxes.shape == (scores.shape[0], 4 * len(CLASSES))
    assert torch.equal(scores, scores2) and torch.equal(boxes, boxes2)
