"""``run_detect`` under torchrun (2 gloo processes on CPU): the files one process writes, byte for byte.

The workers are started the way torchrun starts them (tests/train/dist_worker.py, one thread each); the
single-process reference runs here on one thread too, so every kernel sums in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from frcnn_trt.detect import run_detect
from frcnn_trt.export.onnx_export import random_checkpoint
from frcnn_trt.export.parity import synthetic_images
from tests.helpers import TINY_CLASSES, tiny_config
from tests.train.test_distributed import WORLD, launch

BATCH = 2


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference run is one process, even if pytest itself was started with torchrun's variables."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)


def _sources(root: Path) -> list[str]:
    """Readable images, unreadable ones (a whole chunk of 2, and a last one) and a stem seen twice."""
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    ims = synthetic_images(5, seed=3, sizes=((150, 200), (200, 150), (160, 160), (120, 180), (170, 140)))
    good = [a / "img0.jpg", a / "img1.png", a / "img2.jpg", a / "img3.jpg", b / "img0.png"]
    for im, path in zip(ims, good, strict=True):
        Image.fromarray(im[:, :, ::-1]).save(path)
    (root / "fake.jpg").write_text("text pretending to be a JPEG")
    full = good[0].read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 3])
    # chunks of BATCH paths, chunk c on rank c mod 2: [img0, img1] [fake, truncated] [img2, img3]
    # [b/img0 (id img0_2), missing]; one process batches the same readable images together. Rank 1 gets
    # missing.jpg back (skipped) before b/img0 (pending until its batch is flushed).
    order = [*good[:2], root / "fake.jpg", root / "truncated.jpg", *good[2:], root / "missing.jpg"]
    return [str(p) for p in order]


def test_sharded_detect_writes_the_single_process_files(tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "tiny.safetensors", net="tiny", num_classes=TINY_CLASSES,
                             cfg=tiny_config(), seed=0, rpn_spread=50.0)
    sources = _sources(tmp_path)
    project = tmp_path / "runs"
    (project / "exp").mkdir(parents=True)  # rank 0 picks exp2 and tells the others
    job = {"kind": "detect", "record": str(tmp_path / "detect.json"), "source": sources, "model": str(ckpt),
           "project": str(project), "coco_json": str(tmp_path / "coco_w2.json"), "batch_size": BATCH}
    launch([job], tmp_path, timeout=120)
    rec = [json.loads((tmp_path / f"detect.rank{r}.json").read_text()) for r in range(WORLD)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker
    try:
        from frcnn_trt.log import console

        ref = run_detect(sources, checkpoint=ckpt, backend="torch", device="cpu", output_dir=tmp_path / "w1",
                         coco_json=tmp_path / "coco_w1.json", conf_thresh=0.2, batch_size=BATCH,
                         console=console())
    finally:
        torch.set_num_threads(threads)

    out = project / "exp2"
    assert [r["summary"]["output_dir"] for r in rec] == [str(out)] * WORLD
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(p.name for p in ref.output_dir.iterdir())
    assert files == ["img0.jpg", "img0_2.png", "img1.png", "img2.jpg", "img3.jpg", "predictions.json"]
    for name in files:  # predictions.json and the annotated images
        assert (out / name).read_bytes() == (ref.output_dir / name).read_bytes(), name
    assert (tmp_path / "coco_w2.json").read_bytes() == (tmp_path / "coco_w1.json").read_bytes()
    records = json.loads((out / "predictions.json").read_text())
    assert [r["image_id"] for r in records] == ["img0", "img1", "img2", "img3", "img0_2"]
    assert Path(records[-1]["file"]).parent.name == "b"
    assert sum(len(r["detections"]) for r in records) == ref.detections > 0

    want: dict[str, Any] = ref.to_dict()
    for r in range(WORLD):
        s = rec[r]["summary"]
        for key in ("images", "detections", "skipped", "per_class"):
            assert s[key] == want[key], key
        assert s["processes"] == WORLD and want["processes"] == 1
    # each unreadable image listed once, in path order
    assert [Path(x["file"]).name for x in want["skipped"]] == ["fake.jpg", "truncated.jpg", "missing.jpg"]
    assert rec[0]["summary"]["coco_json"] == str(tmp_path / "coco_w2.json") and rec[1]["summary"]["coco_json"] is None
    # rank 0 alone prints: its own progress, then the summary of all images
    assert rec[1]["printed"] == ""
    printed = rec[0]["printed"]
    assert f"{WORLD} processes (torchrun)" in printed and "done: 5 image(s)" in printed
    assert printed.count("skipped") == 1 + 3  # the count in the "done" line, then each file once
    # speed: every rank leaves out its own warm-up batch when it has more than one; one process times
    # [img2, img3] [b/img0]; rank 0 [img2, img3], rank 1 its only batch [b/img0] (its warm-up, kept)
    assert (ref.timed_images, ref.warmup_excluded) == (3, True)
    assert (rec[0]["summary"]["timed_images"], rec[0]["summary"]["warmup_excluded"]) == (3, False)
