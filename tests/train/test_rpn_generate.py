"""``rpn_generate``: the proposals file is the one a plain loop over the images writes, byte for byte.

The reference is py-faster-rcnn's ``rpn_generate`` written out from the building blocks (read, scale, the
RPN, the uncapped ProposalLayer, boxes / scale), one batch of consecutive images at a time: alt-opt's
Fast R-CNN stages (and so the demo's mAP) depend on these exact arrays.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from frcnn_trt import config as C
from frcnn_trt.data.blob import preprocess_images
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.data.images import read_image
from frcnn_trt.errors import ImageError
from frcnn_trt.export.onnx_export import random_checkpoint
from frcnn_trt.io import npz_bytes, sha256_bytes
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.proposals import ProposalLayer
from frcnn_trt.train.rpn_generate import load_proposals, rpn_generate
from tests.helpers import TINY_CLASSES, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rpn_generate") / "tiny.safetensors"
    return random_checkpoint(path, net="tiny", num_classes=TINY_CLASSES, cfg=tiny_cfg(), seed=0, rpn_spread=50.0)


def reference_npz(checkpoint: Path, paths: list[Path], batch_size: int) -> bytes:
    """The npz bytes of py-faster-rcnn's rpn_generate over ``paths``, ``batch_size`` images per RPN call."""
    model, _ = load_checkpoint(checkpoint, device="cpu")
    cfg = model.cfg
    t = cfg.TEST
    # py-faster-rcnn's rpn_generate overrides: no pre-NMS cap, 2000 kept
    layer = ProposalLayer.from_config(C.override(cfg, TEST={"RPN_PRE_NMS_TOP_N": -1, "RPN_POST_NMS_TOP_N": 2000}))
    boxes, scores, counts = [], [], []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            ims = [read_image(p) for p in paths[start:start + batch_size]]
            blob, im_info = preprocess_images(ims, cfg.PIXEL_MEANS, t.SCALES[0], t.MAX_SIZE)
            _, prob, deltas = model.eval().rpn_blobs(blob)
            rois, s = layer(prob, deltas, im_info)
            img = rois[:, 0].long()
            b = rois[:, 1:5] / im_info[img, 2:3]
            for i in range(len(ims)):
                boxes.append(b[img == i].numpy())
                scores.append(s[img == i, 0].numpy())
                counts.append(int((img == i).sum()))
    # the file is written reproducibly (frcnn_trt.io.npz_bytes: fixed zip timestamps), so the reference is too
    return npz_bytes({"boxes": np.concatenate(boxes), "scores": np.concatenate(scores),
                      "counts": np.array(counts, np.int64)})


@pytest.mark.parametrize(("batch_size", "threads"), [(1, 1), (2, 2)])
def test_proposals_file_is_the_plain_loop_byte_for_byte(checkpoint: Path, synth_dir: Path, tmp_path: Path,
                                                         batch_size: int, threads: int) -> None:
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    path, stats = rpn_generate(checkpoint, imdb, tiny_cfg(), tmp_path / "proposals.npz", backend="torch",
                               device="cpu", batch_size=batch_size, resume=False, threads=threads)
    want = reference_npz(checkpoint, [a.path for a in imdb.annotations()], batch_size)
    assert path.read_bytes() == want
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["npz_sha256"] == sha256_bytes(want) and side["format"] == "frcnn-trt-proposals"
    assert side["image_ids"] == [a.image_id for a in imdb.annotations()]
    assert side["settings"]["pre_nms_top_n"] == -1 and side["backend"] == "torch"
    assert (stats["images"], stats["threads"], stats["processes"]) == (12, threads, 1)
    props = load_proposals(path)
    assert all(len(props.boxes[i]) > 0 for i in props.image_ids)
    assert props.boxes[props.image_ids[0]].dtype == np.float32


def test_an_unreadable_training_image_stops_rpn_generate(checkpoint: Path, synth_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image needs proposals (its roidb entry is built from them): one that cannot be read is an error
    that names it, and no proposals file is written."""
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    anns = imdb.annotations()
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a JPEG")
    bad = [*anns[:2], dataclasses.replace(anns[2], path=broken), *anns[3:]]
    monkeypatch.setattr(imdb, "annotations", lambda: bad)
    with pytest.raises(ImageError, match=r"broken\.jpg"):
        rpn_generate(checkpoint, imdb, tiny_cfg(), tmp_path / "proposals.npz", backend="torch", device="cpu",
                     resume=False, threads=1)
    assert not (tmp_path / "proposals.npz").exists()
