"""``frcnn-trt detect``: run a detector over a folder, a file or a glob, streaming.

Glossary: ``D`` detections of one image (boxes 0-based inclusive x1, y1, x2, y2 in original pixels).

Images are read, detected and written one batch at a time (a generator; nothing piles up): annotated images
(class colours, ``label score``), ``predictions.json`` (streamed by
:class:`~frcnn_trt.evaluation.detections.PredictionsWriter`) and, on request, a COCO results JSON. An image
that cannot be read (missing, truncated, not an image) is reported, skipped and listed in the summary. The
speed summary splits ms/image into the detector's phases, warm-up batches excluded, GPU-synchronised.

Under ``torchrun`` (several processes, :mod:`frcnn_trt.distributed`) the images are sharded: rank
``r`` takes every ``W``-th chunk of ``batch_size`` consecutive paths from chunk ``r``, detects them and writes
their annotated images (file names are the image ids, unique over all paths); the per-image results are
gathered (npz / JSON over the process group, no pickle) and rank 0 alone writes ``predictions.json`` (same
records, same order as one process), the COCO JSON and the summary. Each process is one GPU
(``cuda:LOCAL_RANK``) or one CPU process (gloo). Batches are those of one process when every image is
readable or ``batch_size`` is 1; with unreadable images and ``batch_size`` > 1 one process refills a batch
with the next readable image while a rank batches its own chunks, so the batches holding skipped images
(and, by the blob padding, their detections' last bits) can differ. The speed numbers sum every rank's
batches (each rank's own warm-up excluded): ms/image of one process, not of the whole run.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_trt.engines.detector import Detector, ImageDetections, PhaseTimes
from frcnn_trt.errors import DatasetError, FrcnnError, ImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "DetectSummary",
    "ImageResult",
    "annotate",
    "build_detector",
    "iter_image_paths",
    "next_run_dir",
    "run_detect",
    "stream_detections",
]

log = logging.getLogger("frcnn_trt.detect")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})
_GLOB_CHARS = frozenset("*?[")

# 20 distinct colours (RGB), cycled by class index
_PALETTE = [
    (255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
    (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255),
    (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255),
    (255, 149, 200), (255, 55, 199),
]


# ------------------------------------------------------------------------------------------------ sources


def iter_image_paths(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder (its image files, sorted, not recursive), one file, a glob pattern (``**`` allowed), or an
    explicit list of files (kept in order)."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise DatasetError("the list of images to detect on is empty")
        return [Path(p) for p in source]
    text = str(source)
    path = Path(text)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DatasetError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return found
    if path.is_file():
        return [path]
    if any(c in text for c in _GLOB_CHARS):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not found:
            raise DatasetError(f"glob {text!r} matches no file")
        return found
    raise DatasetError(f"image source {text!r} is not a folder, a file or a glob pattern that matches")


def next_run_dir(project: str | Path = "runs/detect", name: str = "exp") -> Path:
    """``project/exp``, then ``exp2``, ``exp3``, … (the first that does not exist yet)."""
    root = Path(project)
    if not (root / name).exists():
        return root / name
    taken = [int(m.group(1)) for p in root.glob(f"{name}*") if (m := re.fullmatch(rf"{re.escape(name)}(\d+)", p.name))]
    return root / f"{name}{max([1, *taken]) + 1}"


# ------------------------------------------------------------------------------------------------ drawing


def annotate(image_bgr: np.ndarray, dets: ImageDetections) -> Any:
    """A PIL RGB image with each detection's box in its class colour and a ``label score`` tag."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
    draw = ImageDraw.Draw(img)
    width = max(1, round(min(img.size) / 300))
    try:
        font: Any = ImageFont.load_default(size=max(10, round(min(img.size) / 40)))
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    # low scores first, so the best boxes and labels are drawn on top
    for i in np.argsort(dets.scores, kind="stable").tolist():
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        colour = _PALETTE[int(dets.labels[i]) % len(_PALETTE)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{dets.label_names[i]} {float(dets.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 4, ty + th + 4], fill=colour)
        draw.text((x1 + 2, ty + 2 - top), text, fill=(255, 255, 255), font=font)
    return img


# ------------------------------------------------------------------------------------------------ streaming


@dataclass
class ImageResult:
    """One source image: its detections, or the error that made us skip it."""

    path: Path
    image_id: str
    image: np.ndarray | None = None
    detections: ImageDetections | None = None
    error: str | None = None


def _unique_ids(paths: Sequence[Path]) -> list[str]:
    """File stems as image ids; a repeated stem gets the first free ``_2``, ``_3``, … suffix."""
    taken: set[str] = set()
    out = []
    for p in paths:
        candidate, n = p.stem, 1
        while candidate in taken:
            n += 1
            candidate = f"{p.stem}_{n}"
        taken.add(candidate)
        out.append(candidate)
    return out


def stream_detections(
    detector: Detector,
    paths: Sequence[Path],
    batch_size: int = 1,
    timing: list[PhaseTimes] | None = None,
    *,
    ids: Sequence[str] | None = None,
) -> Iterator[ImageResult]:
    """Read, detect and yield one :class:`ImageResult` per path, ``batch_size`` images per backend call.
    Unreadable images come back with ``error`` set. ``timing`` (if given) receives each batch's times.
    ``ids``: the image id of each path (default: the file stems, made unique); a shard of a larger run
    passes the ids computed over all paths."""
    from frcnn_trt.data.images import read_image

    if batch_size < 1:
        raise FrcnnError(f"batch_size must be ≥ 1, got {batch_size}")
    if ids is None:
        ids = _unique_ids(paths)
    elif len(ids) != len(paths):
        raise FrcnnError(f"{len(ids)} image ids for {len(paths)} paths")
    pending: list[ImageResult] = []

    def flush() -> Iterator[ImageResult]:
        dets = detector.detect([r.image for r in pending])  # type: ignore[misc]
        if timing is not None:
            timing.append(detector.last_timing)
        for r, d in zip(pending, dets, strict=True):
            r.detections = d
            yield r
        pending.clear()

    for path, image_id in zip(paths, ids, strict=True):
        try:
            image = read_image(path)
        except ImageError as exc:
            yield ImageResult(path, image_id, error=str(exc))
            continue
        pending.append(ImageResult(path, image_id, image=image))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


# ------------------------------------------------------------------------------------------------ run


@dataclass
class DetectSummary:
    """What :func:`run_detect` did."""

    output_dir: Path
    predictions: Path
    coco_json: Path | None
    backend: str
    images: int
    detections: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)
    ms_per_image: dict[str, float] = field(default_factory=dict)
    timed_images: int = 0
    warmup_excluded: bool = True
    wall_seconds: float = 0.0
    processes: int = 1

    @property
    def images_per_second(self) -> float:
        total = self.ms_per_image.get("total", 0.0)
        return 1000.0 / total if total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": str(self.output_dir), "predictions": str(self.predictions),
                "coco_json": str(self.coco_json) if self.coco_json else None, "backend": self.backend,
                "images": self.images, "detections": self.detections,
                "skipped": [{"file": f, "error": e} for f, e in self.skipped], "per_class": self.per_class,
                "ms_per_image": self.ms_per_image, "images_per_second": self.images_per_second,
                "timed_images": self.timed_images, "warmup_excluded": self.warmup_excluded,
                "processes": self.processes}


def build_detector(
    *,
    export_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    device: str | None = None,
    conf_thresh: float | None = None,
    nms: float | None = None,
    max_dets: int | None = None,
) -> Detector:
    """A :class:`Detector` from an export directory or a checkpoint (exactly one of them)."""
    if (export_dir is None) == (checkpoint is None):
        raise FrcnnError("give exactly one of an export directory (--export) or a checkpoint (--weights)")
    kwargs: dict[str, Any] = {"conf_thresh": conf_thresh, "nms": nms, "max_dets": max_dets}
    if export_dir is not None:
        return Detector.from_export(export_dir, backend, device=device, **kwargs)
    return Detector.from_checkpoint(checkpoint, "torch" if backend == "auto" else backend,  # type: ignore[arg-type]
                                    device=device, **kwargs)


def _save_annotated(image: np.ndarray, dets: ImageDetections, out_dir: Path, image_id: str, suffix: str) -> Path:
    ext = suffix.lower() if suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".png"
    path = out_dir / f"{image_id}{ext}"
    annotate(image, dets).save(path, **({"quality": 92} if ext in (".jpg", ".jpeg") else {}))
    return path


def run_detect(
    source: str | Path | Sequence[str | Path],
    *,
    export_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    device: str | None = None,
    conf_thresh: float | None = None,
    nms: float | None = None,
    max_dets: int | None = None,
    output_dir: str | Path | None = None,
    project: str | Path = "runs/detect",
    save_images: bool = True,
    coco_json: str | Path | None = None,
    batch_size: int = 1,
    warmup: int = 1,
    detector: Detector | None = None,
    console: Any = None,
) -> DetectSummary:
    """Detect objects in ``source`` (folder, file or glob) and write the results (see module docstring).

    ``conf_thresh`` / ``nms`` / ``max_dets`` default to the export's test settings (0.05 / 0.3 / 100).
    ``output_dir`` default: ``project/exp``, ``exp2``, … ``warmup``: leading batches left out of the speed
    numbers (they are still detected and written). ``detector``: an already built one (tests, notebooks).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from frcnn_trt import distributed
    from frcnn_trt.evaluation.detections import PredictionsWriter, read_predictions, write_coco_results
    from frcnn_trt.log import console as make_console

    con = console if console is not None else make_console()
    paths = iter_image_paths(source)
    if distributed.env_world_size() > 1:  # under torchrun: this rank's device, and the process group
        device = str(distributed.setup_device(device or "auto"))
    world, rank = distributed.get_world_size(), distributed.get_rank()
    main = rank == 0

    def build() -> Detector:
        return detector if detector is not None else build_detector(
            export_dir=export_dir, checkpoint=checkpoint, backend=backend, device=device,
            conf_thresh=conf_thresh, nms=nms, max_dets=max_dets)

    if world == 1 or detector is not None:
        det = build()
    else:  # rank 0 first (it builds any engine cache of the export), then the others load what it made
        built = build() if main else None
        distributed.barrier()
        det = built if built is not None else build()
    if world == 1:
        out = Path(output_dir) if output_dir is not None else next_run_dir(project)
        out.mkdir(parents=True, exist_ok=True)
    else:  # rank 0 picks the run folder (exp, exp2, ...) and makes it; every rank writes into it
        chosen = str(output_dir) if output_dir is not None else str(next_run_dir(project)) if main else ""
        out = Path(distributed.broadcast_json(chosen))
        if main:
            out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
    names = det.class_names
    ids = _unique_ids(paths)  # over ALL paths: the same ids (and annotated file names) in every process
    mine = distributed.shard_indices(len(paths), rank, world, chunk=batch_size)
    if main:
        con.print(f"[bold]frcnn-trt detect[/] {len(paths)} image(s) from {source} with {det.describe()}")
        con.print(f"  conf > {det.conf_thresh}, NMS {det.nms}, max {det.max_dets} per image; results → {out}")
        if world > 1:
            con.print(f"  {world} processes (torchrun): batches of {batch_size} sharded over the ranks, "
                      f"{len(mine)} image(s) on rank 0")

    timing: list[PhaseTimes] = []
    skipped: list[tuple[str, str]] = []
    per_class: dict[str, int] = {}
    n_images = n_dets = 0
    found: dict[str, _Found] = {}  # this rank's results by image id (several processes only)
    pred_path = out / "predictions.json"
    t_start = time.perf_counter()
    interactive = main and bool(getattr(con, "is_terminal", False))
    progress = Progress(TextColumn("detect"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.description}"), console=con, disable=not interactive, transient=True)
    writer_cm = PredictionsWriter(pred_path, names) if world == 1 else contextlib.nullcontext(None)
    with writer_cm as writer, progress:
        task = progress.add_task("", total=len(mine))
        for k, res in enumerate(stream_detections(det, [paths[i] for i in mine], batch_size, timing,
                                                  ids=[ids[i] for i in mine]), 1):
            if res.error is not None:
                if writer is not None:
                    skipped.append((str(res.path), res.error))
                    con.print(f"  [yellow]skipped[/] {res.path}: {res.error}")
                else:
                    found[res.image_id] = _Found(res.error)
                progress.update(task, advance=1)
                continue
            if res.image is None or res.detections is None:  # pragma: no cover - stream_detections sets both
                continue
            d = res.detections
            h, w = res.image.shape[:2]
            if writer is not None:
                writer.write_image(res.image_id, res.path, w, h, d.boxes, d.scores, d.labels)
                n_images += 1
                n_dets += len(d)
                for name in d.label_names:
                    per_class[name] = per_class.get(name, 0) + 1
            else:
                found[res.image_id] = _Found(None, d.boxes, d.scores, d.labels, (h, w))
            if save_images:
                _save_annotated(res.image, d, out, res.image_id, res.path.suffix)
            if interactive:
                progress.update(task, advance=1, description=f"{res.path.name}: {len(d)} det")
            elif main:
                con.print(f"  image {k}/{len(mine)} {res.path.name}: {len(d)} detections")

    timed = timing[warmup:] if len(timing) > warmup else timing
    warmup_excluded = len(timing) > warmup
    if world > 1:
        # in shard order: stream_detections yields a skipped image before the batch that was pending
        results = _gather_found([found[ids[i]] for i in mine], batch_size)
        ranks_timing = distributed.all_gather_json(
            {"timed": [t.to_dict() for t in timed], "excluded": warmup_excluded, "batches": len(timing)})
        timed = [PhaseTimes(**t) for r in ranks_timing for t in r["timed"]]
        warmup_excluded = all(r["excluded"] for r in ranks_timing if r["batches"])
        writer_ctx = PredictionsWriter(pred_path, names) if main else contextlib.nullcontext(None)
        with writer_ctx as all_writer:
            for path, image_id, f in zip(paths, ids, results, strict=True):
                if f.error is not None:
                    skipped.append((str(path), f.error))
                    continue
                if all_writer is not None:
                    all_writer.write_image(image_id, path, f.size[1], f.size[0], f.boxes, f.scores, f.labels)
                n_images += 1
                n_dets += len(f.labels)
                for c in f.labels.tolist():
                    per_class[names[c]] = per_class.get(names[c], 0) + 1
    wall = time.perf_counter() - t_start

    coco_path = None
    if coco_json is not None and main:
        coco_path = write_coco_results(read_predictions(pred_path, names), coco_json)

    total = PhaseTimes()
    for t in timed:
        total.add(t)
    summary = DetectSummary(
        output_dir=out, predictions=pred_path, coco_json=coco_path, backend=det.describe(), images=n_images,
        detections=n_dets, skipped=skipped, per_class=dict(sorted(per_class.items())),
        ms_per_image=total.per_image() if total.images else {}, timed_images=total.images,
        warmup_excluded=warmup_excluded, wall_seconds=wall, processes=world)
    if main:
        _print_summary(con, summary)
    distributed.barrier()  # every rank returns once rank 0 has written the files
    return summary


@dataclass
class _Found:
    """One image of a shard: the error that skipped it, or its detections and ``(height, width)``."""

    error: str | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    size: tuple[int, int] = (0, 0)


def _gather_found(found: list[_Found], batch_size: int) -> list[_Found]:
    """Every rank's per-image results, in the original path order (every rank gets all of them)."""
    from frcnn_trt import distributed

    parts = distributed.all_gather_arrays({
        "counts": np.array([len(f.labels) for f in found], np.int64),
        "boxes": np.concatenate([f.boxes for f in found]).astype(np.float32, copy=False).reshape(-1, 4)
        if found else np.zeros((0, 4), np.float32),
        "scores": np.concatenate([f.scores for f in found]).astype(np.float32, copy=False)
        if found else np.zeros(0, np.float32),
        "labels": np.concatenate([f.labels for f in found]).astype(np.int64, copy=False)
        if found else np.zeros(0, np.int64),
        "sizes": np.array([f.size for f in found], np.int64).reshape(-1, 2)})
    errors = distributed.all_gather_json([f.error for f in found])
    per_rank: list[list[_Found]] = []
    for p, errs in zip(parts, errors, strict=True):
        ends = np.cumsum(p["counts"]).tolist()
        items = []
        for c, e, (h, w), err in zip(p["counts"].tolist(), ends, p["sizes"].tolist(), errs, strict=True):
            items.append(_Found(err, p["boxes"][e - c:e], p["scores"][e - c:e], p["labels"][e - c:e],
                                (int(h), int(w))))
        per_rank.append(items)
    return distributed.unshard(per_rank, chunk=batch_size)


def _print_summary(con: Any, s: DetectSummary) -> None:
    con.print(f"[bold]done:[/] {s.images} image(s), {s.detections} detection(s) in {s.wall_seconds:.1f} s"
              + (f" ({s.processes} processes)" if s.processes > 1 else "")
              + (f", [yellow]{len(s.skipped)} skipped[/]" if s.skipped else ""))
    if s.per_class:
        con.print("  per class: " + ", ".join(f"{k} {v}" for k, v in s.per_class.items()))
    if s.ms_per_image:
        m = s.ms_per_image
        note = "warm-up excluded" if s.warmup_excluded else "warm-up included: too few images to exclude it"
        con.print(f"  speed ({s.timed_images} images, {note}): "
                  + ", ".join(f"{p} {m[p]:.1f}" for p in PhaseTimes.PHASES)
                  + f" ms/image; total {m['total']:.1f} ms ({s.images_per_second:.2f} images/s)")
    for f, e in s.skipped:
        con.print(f"  [yellow]skipped[/] {f}: {e}")
    con.print(f"  predictions: {s.predictions}" + (f"; COCO results: {s.coco_json}" if s.coco_json else ""))
    con.print(f"  results in {s.output_dir}")
