"""py-faster-rcnn's ``im_detect`` and ``test_net`` (REFERENCE §11) on the eager torch model.

``im_detect(model, image)`` returns per-class scores ``[R, K]`` and boxes ``[R, 4K]`` in original-image
pixels, exactly what py-faster-rcnn's ``fast_rcnn.test.im_detect`` returns. ``test_net`` runs it over an
imdb with the test rules (scores > 0.05, per-class NMS 0.3, at most 100 detections per image), writes the
detections in the formats ``frcnn-trt eval`` reads, and evaluates them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn_trt.config import Config
from frcnn_trt.data.blob import preprocess_images
from frcnn_trt.data.images import read_image
from frcnn_trt.errors import FrcnnError
from frcnn_trt.evaluation import (
    Detections,
    EvalResult,
    PredictionsWriter,
    evaluate_voc,
    prediction_record,
    write_voc_results,
)
from frcnn_trt.io import atomic_write_json
from frcnn_trt.log import get_logger
from frcnn_trt.postprocess import detections_from_scores

logger = get_logger("test")


def _model_cfg(model: Any) -> tuple[Sequence[float], int, int]:
    cfg = getattr(model, "cfg", None) or Config()
    return cfg.PIXEL_MEANS, cfg.TEST.SCALES[0], cfg.TEST.MAX_SIZE


@torch.no_grad()
def im_detect(model: Any, image: np.ndarray | str | Path, *, pixel_means: Sequence[float] | None = None,
              scale: int | None = None, max_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (BGR uint8 array or a path) → ``(scores [R, K], boxes [R, 4K])`` in original pixels.

    Preprocessing defaults to the settings of the model's config (``model.cfg``: PIXEL_MEANS,
    TEST.SCALES[0], TEST.MAX_SIZE).
    """
    im = read_image(image) if isinstance(image, (str, Path)) else image
    means, s, m = _model_cfg(model)
    device = next(model.parameters()).device
    blob, im_info = preprocess_images([im], pixel_means or means, scale or s, max_size or m, device)
    orig = torch.tensor([[im.shape[0], im.shape[1]]], dtype=torch.float32, device=device)
    return model.im_detect(blob, im_info, orig)[0]


@dataclass
class TestOutput:
    __test__ = False

    detections: Detections
    result: EvalResult | None
    output_dir: Path
    seconds_per_image: float


def iter_detections(model: Any, paths: Sequence[Path], *, cfg: Any, batch_size: int = 1,
                    device: torch.device | None = None) -> Iterator[tuple[int, np.ndarray, tuple[int, int]]]:
    """Yield ``(index, dets [D, 6] = x1 y1 x2 y2 score class, (H, W))`` per image, batch by batch."""
    device = device or next(model.parameters()).device
    t = cfg.TEST
    for start in range(0, len(paths), batch_size):
        ims = [read_image(p) for p in paths[start:start + batch_size]]
        blob, im_info = preprocess_images(ims, cfg.PIXEL_MEANS, t.SCALES[0], t.MAX_SIZE, device)
        orig = torch.tensor([[im.shape[0], im.shape[1]] for im in ims], dtype=torch.float32, device=device)
        for j, (scores, boxes) in enumerate(model.im_detect(blob, im_info, orig)):
            b, s, c = detections_from_scores(scores, boxes, score_thresh=t.SCORE_THRESH, nms_thresh=t.NMS,
                                             max_per_image=t.MAX_PER_IMAGE)
            dets = torch.cat([b, s[:, None], c[:, None].to(b.dtype)], 1).cpu().numpy()
            yield start + j, dets, (ims[j].shape[0], ims[j].shape[1])


def test_net(model: Any, imdb: Any, cfg: Any, output_dir: str | Path, *, batch_size: int = 1,
             evaluate: bool = True, max_images: int | None = None) -> TestOutput:
    """Detect on every image of ``imdb``, write results (per-class VOC files + predictions.json), evaluate.

    Under torchrun every rank detects on its shard of the images (every W-th batch of ``batch_size``, so the
    batches are those of one process); the detections are gathered on every rank, and rank 0 writes the
    files a single process would write and evaluates (``result`` is None on the other ranks).
    """
    from frcnn_trt import distributed

    out = Path(output_dir)
    model.eval()
    device = next(model.parameters()).device
    distributed.init_distributed(device)
    world, rank = distributed.get_world_size(), distributed.get_rank()
    annotations = imdb.annotations()
    if max_images is not None:
        annotations = annotations[:max_images]
    if evaluate and not any(a.num_objects for a in annotations):
        raise FrcnnError(f"imdb {imdb.name} has no ground truth to evaluate against")
    names = list(imdb.classes)
    t0 = time.perf_counter()
    mine = distributed.shard_indices(len(annotations), rank, world, chunk=batch_size)
    found: list[tuple[np.ndarray, tuple[int, int]]] = []
    for k, d, hw in iter_detections(model, [annotations[i].path for i in mine], cfg=cfg, batch_size=batch_size,
                                    device=device):
        found.append((d, hw))
        if (k + 1) % 100 == 0:
            logger.info("im_detect: %d/%d%s", k + 1, len(mine), f" (rank 0 of {world})" if world > 1 else "")
    results = _gather_detections(found, batch_size)
    spi = (time.perf_counter() - t0) / max(len(annotations), 1)
    dets = Detections()
    for a, (d, _) in zip(annotations, results, strict=True):
        dets.add(a.image_id, d[:, :4], d[:, 4], d[:, 5].astype(np.int64))
    if rank != 0:
        return TestOutput(dets, None, out, spi)
    out.mkdir(parents=True, exist_ok=True)
    with PredictionsWriter(out / "predictions.json", names) as writer:
        for a, (d, (h, w)) in zip(annotations, results, strict=True):
            writer.write(prediction_record(a.image_id, a.path, w, h, d[:, :4], d[:, 4], d[:, 5].astype(np.int64),
                                           names))
    write_voc_results(dets, out / "results", names, image_ids=[a.image_id for a in annotations])
    result = None
    if evaluate:
        result = evaluate_voc(annotations, dets, names, use_07_metric=imdb.use_07_metric)
        atomic_write_json(out / "eval.json", result.to_json())
    return TestOutput(dets, result, out, spi)


def _gather_detections(found: list[tuple[np.ndarray, tuple[int, int]]],
                       batch_size: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Every rank's ``(dets [D, 6], (H, W))`` per image, in the original image order."""
    from frcnn_trt import distributed

    if distributed.get_world_size() == 1:
        return found
    parts = distributed.all_gather_arrays({
        "counts": np.array([len(d) for d, _ in found], np.int64),
        "dets": np.concatenate([d for d, _ in found]) if found else np.zeros((0, 6), np.float32),
        "sizes": np.array([hw for _, hw in found], np.int64).reshape(-1, 2)})
    per_rank = []
    for p in parts:
        ends = np.cumsum(p["counts"])
        per_rank.append([(p["dets"][e - c:e], (int(h), int(w)))
                         for c, e, (h, w) in zip(p["counts"], ends, p["sizes"], strict=True)])
    return distributed.unshard(per_rank, chunk=batch_size)
