"""py-faster-rcnn's ``rpn_generate`` on the engines layer, and the proposals file it writes.

The just-trained RPN proposes boxes for every (unflipped) image of an imdb: single scale, no pre-NMS cap,
NMS 0.7, the top 2000 kept, boxes divided by the image scale (original-image pixels). The RPN runs on the
fastest backend that can run here (TensorRT > ONNX Runtime > torch, or the one asked for): the model is
exported first and its ``rpn.onnx`` is what runs. The ProposalLayer maths (decode, clip, min size, sort,
NMS) is the shared torch code of :mod:`frcnn_trt.proposals`: py-faster-rcnn's uncapped rpn_generate does
not fit TensorRT's in-graph NMS/TopK limits (RUNTIME.md).

Proposals file (``NAME.npz`` + ``NAME.json``, both written atomically): ``boxes [P, 4]`` float32,
``scores [P]`` float32, ``counts [N]`` int64 (images in ``image_ids`` order), and a sidecar with the image
ids, the settings, the backend that ran and the SHA-256 of the model that produced them. A resumed alt-opt
run reuses a proposals file only when its model hash and settings match.

The loop over the images is the runner's (:class:`~frcnn_trt.engines.runner.Runner`, task ``propose``): on a
CPU backend several batches run side by side (the file is the same for any number of threads), and under
torchrun the images are sharded over the processes and gathered back in order, so the file holds the same
arrays as a single-process run's (only the timing ``stats`` differ). Every image needs proposals (its
roidb entry is built from them): one that cannot be read stops the run, naming it.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_trt import distributed
from frcnn_trt.config import Config
from frcnn_trt.data.imdb import Imdb
from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.runner import Runner, RunResult, rank_zero_first
from frcnn_trt.errors import DatasetError, FrcnnError, ImageError
from frcnn_trt.export.onnx_export import run_export
from frcnn_trt.files import load_json, read_bytes, short
from frcnn_trt.io import atomic_write_bytes, atomic_write_json, npz_bytes, sha256_bytes, sha256_file
from frcnn_trt.log import console, get_logger

logger = get_logger("rpn_generate")

FORMAT = "frcnn-trt-proposals"
#: the largest proposals sidecar / npz read (2000 proposals × 20 bytes per image: 4 GiB is 100,000 images)
MAX_SIDECAR_BYTES = 256 << 20
MAX_PROPOSALS_BYTES = 4 << 30


@dataclass
class Proposals:
    """Proposals of an image set: ``boxes[image_id] -> float32 [P, 4]`` (original pixels), scores alike."""

    image_ids: list[str]
    boxes: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    meta: dict[str, Any]

    def as_mapping(self) -> Mapping[str, np.ndarray]:
        return self.boxes


def save_proposals(path: str | Path, proposals: Proposals) -> Path:
    """Write the proposals file and its sidecar atomically; the same proposals give the same bytes (io.npz_bytes)."""
    path = Path(path).with_suffix(".npz")
    ids = proposals.image_ids
    boxes = [np.asarray(proposals.boxes[i], np.float32).reshape(-1, 4) for i in ids]
    scores = [np.asarray(proposals.scores[i], np.float32).reshape(-1) for i in ids]
    data = npz_bytes({"boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
                      "scores": np.concatenate(scores) if scores else np.zeros(0, np.float32),
                      "counts": np.array([len(b) for b in boxes], np.int64)})
    atomic_write_bytes(path, data)
    atomic_write_json(path.with_suffix(".json"), {"format": FORMAT, "image_ids": ids, "npz_sha256": sha256_bytes(data),
                                                  **proposals.meta})
    return path


def _read_sidecar(side: Path) -> tuple[list[str], str, dict[str, Any]]:
    """``(image ids, npz SHA-256, the other fields)`` of a proposals sidecar, checked; DatasetError otherwise."""
    meta = load_json(side, "proposals sidecar", MAX_SIDECAR_BYTES)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DatasetError(f"{side} is not a frcnn-trt proposals file")
    ids, digest = meta.pop("image_ids", None), meta.pop("npz_sha256", None)
    if not isinstance(ids, list) or not all(isinstance(i, str) and i and "\x00" not in i for i in ids):
        raise DatasetError(f"proposals sidecar {side}: image_ids must be a list of non-empty strings")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"proposals sidecar {side}: image_ids lists an image twice")
    if not isinstance(digest, str) or len(digest) != 64:
        raise DatasetError(f"proposals sidecar {side}: npz_sha256 must be a SHA-256 hex digest, got {short(digest)}")
    for key in ("model_sha256", "model", "imdb", "backend"):
        if key in meta and not isinstance(meta[key], str):
            raise DatasetError(f"proposals sidecar {side}: {key} must be a string, got {short(meta[key])}")
    if not isinstance(meta.get("settings", {}), dict) or not isinstance(meta.get("stats", {}), dict):
        raise DatasetError(f"proposals sidecar {side}: settings and stats must be objects")
    return ids, digest, meta


def _arrays(path: Path, digest: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``boxes [P, 4]``, ``scores [P]``, ``counts [N]`` of the npz, checked against its SHA-256, dtypes, shapes."""
    data = read_bytes(path, "proposals file", MAX_PROPOSALS_BYTES)
    if sha256_bytes(data) != digest:
        raise DatasetError(f"proposals file {path} does not match its sidecar's SHA-256 (corrupt or replaced)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            boxes, scores, counts = z["boxes"], z["scores"], z["counts"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"proposals file {path} is unreadable: {exc}") from None
    if boxes.dtype.kind != "f" or boxes.ndim != 2 or boxes.shape[1] not in (4, 5):
        raise DatasetError(f"proposals file {path}: boxes must be float [P, 4] (or [P, 5]), got {boxes.dtype} "
                           f"{list(boxes.shape)}")
    if scores.dtype.kind != "f" or scores.shape != (len(boxes),):
        raise DatasetError(f"proposals file {path}: scores must be float [{len(boxes)}], got {scores.dtype} "
                           f"{list(scores.shape)}")
    if counts.dtype.kind not in "iu" or counts.ndim != 1 or (counts < 0).any():
        raise DatasetError(f"proposals file {path}: counts must be non-negative integers [N]")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise DatasetError(f"proposals file {path}: boxes or scores hold NaN or inf values")
    return boxes[:, -4:].astype(np.float32), scores.astype(np.float32), counts.astype(np.int64)


def load_proposals(path: str | Path) -> Proposals:
    """Read and check a proposals file (sidecar fields, SHA-256, dtypes, shapes, finite values, one count per image
    id); DatasetError naming the file otherwise."""
    path = Path(path).with_suffix(".npz")
    ids, digest, meta = _read_sidecar(path.with_suffix(".json"))
    boxes, scores, counts = _arrays(path, digest)
    if len(ids) != len(counts) or int(counts.sum()) != len(boxes):
        raise DatasetError(f"proposals file {path}: {len(ids)} image ids but {len(counts)} counts / {len(boxes)} boxes")
    ends = np.cumsum(counts)
    starts = ends - counts
    return Proposals(ids, {i: boxes[s:e] for i, s, e in zip(ids, starts, ends, strict=True)},
                     {i: scores[s:e] for i, s, e in zip(ids, starts, ends, strict=True)}, meta)


def generate_settings(cfg: Config) -> dict[str, Any]:
    """The settings a proposals file depends on (py-faster-rcnn's rpn_generate overrides, docs/REFERENCE.md §1)."""
    t = cfg.TEST
    return {"pre_nms_top_n": -1, "post_nms_top_n": 2000, "nms_thresh": t.RPN_NMS_THRESH,
            "min_size": t.RPN_MIN_SIZE, "scale": t.SCALES[0], "max_size": t.MAX_SIZE,
            "anchor_scales": list(cfg.MODEL.ANCHOR_SCALES), "anchor_ratios": list(cfg.MODEL.ANCHOR_RATIOS)}


def reusable(path: Path, model_sha: str, settings: Mapping[str, Any], image_ids: Sequence[str]) -> bool:
    """Whether an existing proposals file was made by this model with these settings for these images."""
    if not path.with_suffix(".npz").exists():
        return False
    try:
        p = load_proposals(path)
    except FrcnnError as exc:
        logger.warning("%s: %s; generating again", path, exc)
        return False
    same = (p.meta.get("model_sha256") == model_sha and p.meta.get("settings") == dict(settings)
            and p.image_ids == list(image_ids))
    if not same:
        logger.info("%s was made by another model or with other settings; generating again", path.name)
    return same


def rpn_generate(checkpoint: str | Path, imdb: Imdb, cfg: Config, out_path: str | Path, *, backend: str = "auto",
                 device: str | None = None, batch_size: int = 1, resume: bool = True,
                 threads: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Proposals of ``checkpoint``'s RPN for every image of ``imdb`` → a proposals file; returns it and stats.

    ``backend``: ``auto`` | ``tensorrt`` | ``onnxruntime`` | ``torch``. Every backend but torch runs the
    exported ``rpn.onnx`` (exported next to ``out_path``).

    ``threads``: batches proposed side by side (default
    :func:`~frcnn_trt.engines.runner.default_threads`); the file is the same for any number.

    Under torchrun every rank proposes for its shard of the images (every W-th batch of ``batch_size``),
    the proposals are gathered and rank 0 writes the file a single process would write (same order, same
    arrays); every rank returns once it is written.
    """
    out_path = Path(out_path).with_suffix(".npz")
    annotations = imdb.annotations()
    image_ids = [a.image_id for a in annotations]
    settings = generate_settings(cfg)
    model_sha = sha256_file(Path(checkpoint).with_suffix(".safetensors"))
    if resume and reusable(out_path, model_sha, settings, image_ids):
        logger.info("reusing %s (same model and settings)", out_path)
        return out_path, load_proposals(out_path).meta.get("stats", {})
    if distributed.env_world_size() > 1:  # under torchrun: this rank's device, and the process group
        device = str(distributed.setup_device(device or "auto"))
    t0 = time.perf_counter()
    det = _load_detector(checkpoint, backend, device, out_path)
    t_load = time.perf_counter() - t0
    runner = Runner(det, task="propose", batch_size=batch_size, threads=threads, label="rpn_generate",
                    pre_nms_top_n=settings["pre_nms_top_n"], post_nms_top_n=settings["post_nms_top_n"], log_every=500)
    logger.info("rpn_generate: %s on %d images with %s, %d thread(s)%s", Path(checkpoint).name, len(image_ids),
                det.describe(), runner.threads,
                f" ({distributed.get_world_size()} processes)" if distributed.get_world_size() > 1 else "")
    run = runner.run([a.path for a in annotations], image_ids)
    if run.skipped:
        raise ImageError(f"rpn_generate needs proposals for every image of {imdb.name}, but "
                         f"{len(run.skipped)} cannot be read: " + "; ".join(str(r.error) for r in run.skipped[:5]))
    stats = _stats(run, det, t_load)
    meta = {"settings": settings, "model": str(checkpoint), "model_sha256": model_sha, "imdb": imdb.name,
            "backend": det.backend.name, "stats": stats}
    if distributed.is_main_process():
        found = {d.image_id: d for d in run.detections}
        save_proposals(out_path, Proposals(image_ids, {i: found[i].boxes for i in image_ids},
                                           {i: found[i].scores for i in image_ids}, meta))
        logger.info("rpn_generate: %d images in %.1f s (%.1f ms/image, %s, %d thread(s)), %.0f proposals/image → %s",
                    len(image_ids), run.wall_seconds, stats["ms_per_image"], det.backend.name, run.threads,
                    stats["mean_proposals"], out_path)
    distributed.barrier()  # the file exists for every rank from here on
    return out_path, stats


def _load_detector(checkpoint: str | Path, backend: str, device: str | None, out_path: Path) -> Detector:
    """The checkpoint on the torch backend, or its export (rank 0 exports next to ``out_path``) on another."""
    if backend == "torch":
        return Detector.from_checkpoint(checkpoint, "torch", device=device)
    export_dir = out_path.with_name(out_path.stem + "_export")

    def load() -> Detector:
        if distributed.is_main_process():
            run_export(checkpoint, export_dir, parity=False, console=console(stderr=True))
        return Detector.from_export(export_dir, backend, device=device)

    return rank_zero_first(load)


def _stats(run: RunResult, det: Detector, t_load: float) -> dict[str, Any]:
    n = len(run.results)
    counts = [len(d) for d in run.detections]
    return {"backend": det.describe(), "threads": run.threads, "images": n, "seconds": round(run.wall_seconds, 3),
            "ms_per_image": round(1000 * run.wall_seconds / max(n, 1), 2), "setup_seconds": round(t_load, 3),
            "mean_proposals": round(float(np.mean(counts)) if counts else 0.0, 1), "processes": run.processes}
