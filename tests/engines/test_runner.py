"""The runner over many images: batches with unreadable images refilled, threads, sharding and gathering,
progress, timing; and the shared result type's pack / unpack."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from frcnn_trt import distributed
from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.results import ImageDetections, pack, unpack
from frcnn_trt.engines.runner import (
    ImageResult,
    Runner,
    default_threads,
    process_age,
    rank_zero_first,
    unique_image_ids,
)
from frcnn_trt.errors import FrcnnError
from frcnn_trt.export.parity import synthetic_images

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = ((150, 200), (200, 150), (160, 160), (120, 180), (170, 140))


@pytest.fixture(scope="module")
def det(exported: tuple[Path, Path]) -> Detector:
    return Detector.from_checkpoint(exported[0], "torch", device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[np.ndarray]]:
    """Seven paths: five readable images, a text file posing as a JPEG (position 1) and a missing file (4)."""
    root = tmp_path_factory.mktemp("runner")
    ims = synthetic_images(5, seed=11, sizes=SIZES)
    good = [root / f"im{i}.png" for i in range(5)]
    for im, p in zip(ims, good, strict=True):
        Image.fromarray(im[:, :, ::-1]).save(p)
    (root / "fake.jpg").write_text("not an image")
    paths = [good[0], root / "fake.jpg", good[1], good[2], root / "missing.jpg", good[3], good[4]]
    return paths, ims


def _same(a: ImageDetections | None, b: ImageDetections | None) -> bool:
    if a is None or b is None:
        return a is b
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores) and a.size == b.size
            and a.image_id == b.image_id and a.label_names == b.label_names
            and (a.labels is None if b.labels is None else np.array_equal(a.labels, b.labels)))


def test_batches_skip_unreadable_images_and_keep_every_good_one(det: Detector,
                                                                images: tuple[list[Path], list[np.ndarray]]) -> None:
    paths, ims = images
    seen: list[ImageResult] = []
    run = Runner(det, batch_size=2, warmup=1).run(paths, on_result=lambda r: seen.append(
        ImageResult(r.index, r.path, r.image_id, r.detections, r.error, r.image)))
    assert [r.index for r in run.results] == list(range(7))
    assert [r.image_id for r in run.results] == ["im0", "fake", "im1", "im2", "missing", "im3", "im4"]
    assert [Path(r.path).name for r in run.skipped] == ["fake.jpg", "missing.jpg"]
    assert all(r.detections is None and r.error for r in run.skipped)
    assert all(r.image is None for r in run.results)  # the returned results do not keep the images
    # the unreadable image's slot is refilled: batches [im0, im1] [im2, im3] [im4], as the detector gives them
    want = det.detect(ims[0:2]) + det.detect(ims[2:4]) + det.detect(ims[4:5])
    got = run.detections
    assert len(got) == 5 and sum(len(d) for d in got) > 0
    for w, g, im, image_id in zip(want, got, ims, ["im0", "im1", "im2", "im3", "im4"], strict=True):
        assert _same(w.named(image_id), g) and g.size == im.shape[:2]
    # streamed: each unreadable image at once (before the batch it interrupts), each result with its image
    assert [r.image_id for r in seen] == ["fake", "im0", "im1", "missing", "im2", "im3", "im4"]
    assert all((r.image is not None) == r.ok for r in seen)
    # timing: 3 batches, the first is warm-up
    assert run.timing.images == 3 and run.warmup_excluded and run.ms_per_image["total"] > 0
    assert (run.processes, run.threads) == (1, 1)


@pytest.mark.parametrize("task", ["detect", "propose"])
def test_any_number_of_threads_gives_the_same_results(det: Detector, images: tuple[list[Path], list[np.ndarray]],
                                                      task: str) -> None:
    paths, _ = images
    one = Runner(det, task=task, batch_size=2, threads=1).run(paths)  # type: ignore[arg-type]
    three = Runner(det, task=task, batch_size=2, threads=3).run(paths)  # type: ignore[arg-type]
    assert three.threads == 3
    assert [r.error for r in one.results] == [r.error for r in three.results]
    assert all(_same(a.detections, b.detections) for a, b in zip(one.results, three.results, strict=True))
    if task == "propose":
        d = one.detections[0]
        assert d.is_proposals and d.labels is None and len(d) > 50 and (np.diff(d.scores) <= 0).all()


def test_warmup_and_too_few_batches(det: Detector, images: tuple[list[Path], list[np.ndarray]]) -> None:
    paths, _ = images
    run = Runner(det, batch_size=8, warmup=1).run(paths)  # one batch: its warm-up cannot be left out
    assert run.timing.images == 5 and not run.warmup_excluded
    run = Runner(det, batch_size=1, warmup=2).run(paths)
    assert run.timing.images == 3 and run.warmup_excluded


def test_progress_lines_or_a_bar(det: Detector, images: tuple[list[Path], list[np.ndarray]],
                                 caplog: pytest.LogCaptureFixture) -> None:
    paths, _ = images
    with caplog.at_level(logging.INFO, logger="frcnn_trt"):
        Runner(det, label="scan", log_every=3).run(paths)
    lines = [r.getMessage() for r in caplog.records if r.name == "frcnn_trt.engines.runner"]
    assert [m for m in lines if "images" in m] == ["scan: 3/7 images", "scan: 6/7 images", "scan: 7/7 images"]
    assert sum("skipped" in m for m in lines) == 2  # each unreadable image, with its error
    caplog.clear()
    term = Console(file=io.StringIO(), force_terminal=True, width=100)
    with caplog.at_level(logging.INFO, logger="frcnn_trt"):
        Runner(det, label="scan", console=term).run(paths)
    assert not [r for r in caplog.records if "images" in r.getMessage()]  # the bar instead of log lines
    assert "scan" in term.file.getvalue()  # type: ignore[attr-defined]


def test_inputs_and_thread_defaults(det: Detector, images: tuple[list[Path], list[np.ndarray]]) -> None:
    paths, _ = images
    assert unique_image_ids([Path("a.jpg"), Path("x/a.png"), Path("a_2.jpg")]) == ["a", "a_2", "a_2_2"]
    with pytest.raises(FrcnnError, match=r"2 image ids .* for 7 paths"):
        Runner(det).run(paths, ["a", "b"])
    with pytest.raises(FrcnnError, match="batch_size"):
        Runner(det, batch_size=0)
    with pytest.raises(FrcnnError, match="task"):
        Runner(det, task="segment")  # type: ignore[arg-type]
    assert det.backend.concurrent_calls  # eager torch on a CPU may run calls side by side
    assert 1 <= default_threads(det) <= 4 and default_threads(det, 7) == 7
    assert Runner(det, threads=None).threads == default_threads(det)


# ------------------------------------------------------------------------------------------------ torchrun


class _ThreadGroup:
    """W threads standing in for W torchrun processes: rank per thread, all_gather_bytes and barrier."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.local = threading.local()
        self.sync = threading.Barrier(world, timeout=60)
        self.slots: list[bytes] = [b""] * world

    def rank(self) -> int:
        return int(self.local.rank)

    def all_gather_bytes(self, data: bytes, **_: Any) -> list[bytes]:
        self.slots[self.rank()] = bytes(data)
        self.sync.wait()
        out = list(self.slots)
        self.sync.wait()
        return out

    def install(self, mp: pytest.MonkeyPatch) -> _ThreadGroup:
        mp.setattr(distributed, "get_world_size", lambda: self.world)
        mp.setattr(distributed, "get_rank", self.rank)
        mp.setattr(distributed, "is_main_process", lambda: self.rank() == 0)
        mp.setattr(distributed, "all_gather_bytes", self.all_gather_bytes)
        mp.setattr(distributed, "barrier", lambda: self.sync.wait())
        return self

    def run(self, fn: Any) -> list[Any]:
        results: list[Any] = [None] * self.world
        errors: list[BaseException] = []

        def target(r: int) -> None:
            self.local.rank = r
            try:
                results[r] = fn()
            except BaseException as exc:  # re-raised below
                errors.append(exc)
                self.sync.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


@pytest.mark.parametrize(("task", "batch_size"), [("detect", 1), ("propose", 2)])
def test_shards_gather_into_the_single_process_list(det: Detector, images: tuple[list[Path], list[np.ndarray]],
                                                    monkeypatch: pytest.MonkeyPatch, task: str,
                                                    batch_size: int) -> None:
    paths, _ = images
    # chunks of 2: [im0, im1] [im2, im3] [missing, im4], rank 0 takes the first and the last: every rank's
    # batches are one process's (an unreadable image inside a chunk would make the batches differ)
    paths = [paths[i] for i in (0, 2, 3, 5, 4, 6)]
    ref = Runner(det, task=task, batch_size=batch_size).run(paths)  # type: ignore[arg-type]
    group = _ThreadGroup(2).install(monkeypatch)
    runs = group.run(lambda: Runner(det, task=task, batch_size=batch_size, warmup=0).run(paths))  # type: ignore[arg-type]
    for run in runs:
        assert run.processes == 2
        assert [(r.index, r.path, r.image_id, r.error) for r in run.results] == [
            (r.index, r.path, r.image_id, r.error) for r in ref.results]
        assert all(_same(a.detections, b.detections) for a, b in zip(ref.results, run.results, strict=True))
        # both ranks' batches are timed (no warm-up here): every image the run detected
        assert run.timing.images == len(ref.detections) and run.warmup_excluded
    order: list[int] = []
    built = group.run(lambda: rank_zero_first(lambda: order.append(group.rank()) or group.rank()))
    assert built == [0, 1] and order[0] == 0


def test_pack_unpack_round_trip() -> None:
    rng = np.random.default_rng(0)
    names = ["__background__", "a", "b"]
    dets = [ImageDetections(rng.random((3, 4), dtype=np.float32), rng.random(3, dtype=np.float32),
                            np.array([1, 2, 2]), ["a", "b", "b"], "x", (10, 20)),
            None,
            ImageDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), [], "z",
                            (5, 6))]
    back = unpack(pack(dets), names, ["x", "y", "z"])
    assert back[1] is None and all(_same(a, b) for a, b in zip(dets, back, strict=True))
    props = [ImageDetections(rng.random((4, 4), dtype=np.float32), rng.random(4, dtype=np.float32), image_id="p",
                             size=(7, 8))]
    arrays = pack(props)
    assert "labels" not in arrays
    (p,) = unpack(arrays, names, ["p"])
    assert p is not None and p.is_proposals and _same(props[0], p) and (p.height, p.width) == (7, 8)
    with pytest.raises(ValueError, match="2 image ids"):
        unpack(arrays, names, ["p", "q"])


def test_startup_is_the_process_age_at_the_first_image(det: Detector, images: tuple[list[Path], list[np.ndarray]],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    before = process_age()
    assert before is not None and before > 0.0  # this process started a while ago (imports at least)
    paths, _ = images
    with caplog.at_level(logging.INFO, logger="frcnn_trt.engines.runner"):
        run = Runner(det, label="detect").run(paths[:3])
    after = process_age()
    assert run.startup_seconds is not None and after is not None
    assert before <= run.startup_seconds <= after + 0.02  # /proc clock: 10 ms steps
    assert "detect: start-up" in caplog.text and "first image ready" in caplog.text
    assert Runner(det).run([paths[4]]).startup_seconds is None  # no image was ready


def test_startup_counts_from_started_at_inside_a_longer_process(det: Detector,
                                                                images: tuple[list[Path], list[np.ndarray]]) -> None:
    """The demo detects after minutes of training in the same process: its start-up counts from its detect
    step, not from the process start."""
    paths, _ = images
    t0 = time.perf_counter()
    run = Runner(det, label="detect", started_at=t0).run(paths[:2])
    elapsed = time.perf_counter() - t0
    age = process_age()
    assert run.startup_origin == "call" and run.startup_seconds is not None and age is not None
    assert 0.0 <= run.startup_seconds <= elapsed < age
    assert Runner(det).run(paths[:1]).startup_origin == "process start"
