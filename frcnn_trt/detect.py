"""``frcnn-trt detect``: run a detector over a folder, a file or a glob.

Glossary: ``D`` detections of one image (boxes 0-based inclusive x1, y1, x2, y2 in original pixels).

A thin caller of the runner (:class:`~frcnn_trt.engines.runner.Runner`): it reads and detects one batch at a
time and hands each result over as it is done, so each annotated image is written while the run goes on and no
decoded image is kept. An annotated image shows the detections scoring at least ``show_conf`` (0.5; the saved
detections keep ``conf_thresh``, 0.05), one colour per class, ``name score`` on a filled label inside the image
(:func:`frcnn_trt.plotting.draw_detections`). Once every image is done, ``predictions.json``
(:class:`~frcnn_trt.evaluation.PredictionsWriter`: every readable image, in path order) and, on request, a
COCO results JSON are written. An image that cannot be read (missing, truncated, not an image) is reported,
skipped and listed in the summary. The speed summary splits ms/image into the detector's phases, warm-up
batches excluded, GPU-synchronised.

Under ``torchrun`` (several processes, :mod:`frcnn_trt.distributed`) the runner shards the images: rank
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

import glob
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.markup import escape

from frcnn_trt import distributed
from frcnn_trt.engines.detector import Detector, PhaseTimes
from frcnn_trt.engines.precision import effective_precision
from frcnn_trt.engines.results import ImageDetections
from frcnn_trt.engines.runner import ImageResult, Runner, RunResult, rank_zero_first, unique_image_ids
from frcnn_trt.errors import DatasetError, FrcnnError
from frcnn_trt.evaluation import PredictionsWriter, read_predictions, write_coco_results
from frcnn_trt.log import console as make_console
from frcnn_trt.plotting import draw_detections

__all__ = [
    "IMAGE_SUFFIXES",
    "DetectSummary",
    "annotate",
    "build_detector",
    "describe_source",
    "iter_image_paths",
    "next_run_dir",
    "run_detect",
]

#: the default drawing threshold: annotated images show detections scoring at least this (the saved detections
#: keep the detector's own threshold, 0.05 by default, for evaluation)
SHOW_CONF = 0.5
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})
_GLOB_CHARS = frozenset("*?[")

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


def annotate(image_bgr: np.ndarray, dets: ImageDetections, show_conf: float = SHOW_CONF) -> Image.Image:
    """A PIL RGB image with the detections scoring ``>= show_conf`` drawn: each box in its class colour with a
    filled ``name score`` label inside the image (:func:`frcnn_trt.plotting.draw_detections`; proposals, without
    labels: the score alone)."""
    names = dict(zip(dets.labels.tolist(), dets.label_names, strict=False)) if dets.labels is not None else None
    return draw_detections(image_bgr[:, :, ::-1], dets.boxes, dets.scores, dets.labels, names,
                           show_conf=show_conf).image


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
    #: process start (or the ``started_at`` given) → first image ready; None where not measurable
    startup_seconds: float | None = None
    startup_origin: str = "process start"

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
                "processes": self.processes, "startup_seconds": self.startup_seconds,
                "startup_origin": self.startup_origin}


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


def _save_annotated(image: np.ndarray, dets: ImageDetections, out_dir: Path, image_id: str, suffix: str,
                    show_conf: float = SHOW_CONF) -> Path:
    ext = suffix.lower() if suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".png"
    path = out_dir / f"{image_id}{ext}"
    drawn = annotate(image, dets, show_conf)
    if ext in (".jpg", ".jpeg"):
        drawn.save(path, quality=92)
    else:
        drawn.save(path)
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
    show_conf: float = SHOW_CONF,
    coco_json: str | Path | None = None,
    batch_size: int = 1,
    warmup: int = 1,
    threads: int = 1,
    detector: Detector | None = None,
    console: Any = None,
    started_at: float | None = None,
) -> DetectSummary:
    """Detect objects in ``source`` (folder, file or glob) and write the results (see module docstring).

    ``conf_thresh`` / ``nms`` / ``max_dets`` default to the export's test settings (0.05 / 0.3 / 100): what is
    saved. ``show_conf``: what is drawn on the annotated images (default 0.5).
    ``output_dir`` default: ``project/exp``, ``exp2``, … ``warmup``: leading batches left out of the speed
    numbers (they are still detected and written). ``threads``: batches detected side by side (``None``: as
    many as the backend allows; the detections are the same, the per-phase times overlap). ``detector``: an
    already built one (tests, notebooks). ``started_at``: ``time.perf_counter()`` when the caller's detect step
    began, for a call inside a longer process (the demo): the start-up is counted from it instead of from the
    process start.
    """
    con = console if console is not None else make_console()
    paths = iter_image_paths(source)
    if distributed.env_world_size() > 1:  # under torchrun: this rank's device, and the process group
        device = str(distributed.setup_device(device or "auto"))
    det = detector if detector is not None else rank_zero_first(lambda: build_detector(
        export_dir=export_dir, checkpoint=checkpoint, backend=backend, device=device, conf_thresh=conf_thresh,
        nms=nms, max_dets=max_dets))
    out = _run_dir(output_dir, project)
    runner = Runner(det, batch_size=batch_size, warmup=warmup, threads=threads, label="detect", console=con,
                    started_at=started_at)
    main = distributed.is_main_process()
    if main:
        _print_header(con, describe_source(source, len(paths)), len(paths), det, out, batch_size,
                      show_conf if save_images else None)
    on_result = partial(_save_result, out, show_conf) if save_images else None
    run = runner.run(paths, unique_image_ids(paths), on_result=on_result)
    pred_path = out / "predictions.json"
    coco_path = _write_results(run, pred_path, det.class_names, coco_json) if main else None
    summary = _summary(run, out, pred_path, coco_path, det.describe())
    if main:
        _print_summary(con, summary)
    distributed.barrier()  # every rank returns once rank 0 has written the files
    return summary


def _run_dir(output_dir: str | Path | None, project: str | Path) -> Path:
    """The run folder: ``output_dir``, else the next free ``project/expN`` that rank 0 picks and makes."""
    main = distributed.is_main_process()
    chosen = str(output_dir) if output_dir is not None else str(next_run_dir(project)) if main else ""
    out = Path(distributed.broadcast_json(chosen))
    if main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()  # the folder exists for every rank from here on
    return out


def _save_result(out_dir: Path, show_conf: float, res: ImageResult) -> None:
    """The annotated image of one result (each process draws its own images)."""
    if res.image is not None and res.detections is not None:
        _save_annotated(res.image, res.detections, out_dir, res.image_id, res.path.suffix, show_conf)


def _write_results(run: RunResult, pred_path: Path, class_names: Sequence[str],
                   coco_json: str | Path | None) -> Path | None:
    """``predictions.json`` (every readable image, in path order) and, on request, the COCO results JSON."""
    with PredictionsWriter(pred_path, class_names) as writer:
        for r in run.results:
            if (d := r.detections) is not None and d.labels is not None:
                writer.write_image(r.image_id, r.path, d.width, d.height, d.boxes, d.scores, d.labels)
    if coco_json is None:
        return None
    return write_coco_results(read_predictions(pred_path, class_names), coco_json)


def _summary(run: RunResult, out: Path, pred_path: Path, coco_path: Path | None, backend: str) -> DetectSummary:
    dets = run.detections
    per_class = Counter(name for d in dets for name in d.label_names)
    return DetectSummary(
        output_dir=out, predictions=pred_path, coco_json=coco_path, backend=backend, images=len(dets),
        detections=sum(len(d) for d in dets), skipped=[(str(r.path), str(r.error)) for r in run.skipped],
        per_class=dict(sorted(per_class.items())), ms_per_image=run.ms_per_image, timed_images=run.timing.images,
        warmup_excluded=run.warmup_excluded, wall_seconds=run.wall_seconds, processes=run.processes,
        startup_seconds=run.startup_seconds, startup_origin=run.startup_origin)


def describe_source(source: str | Path | Sequence[str | Path], n: int) -> str:
    """The source as the user gave it: ``folder imgs/ (12 images)``, ``glob 'a/*.jpg' (3 images)``, ``imgs/a.jpg``
    or ``3 listed images``."""
    count = f"{n} image{'s' if n != 1 else ''}"
    if isinstance(source, (list, tuple)):
        names = ", ".join(str(p) for p in source[:3]) + (", …" if len(source) > 3 else "")
        return f"{count} listed ({names})"
    text = str(source)
    if Path(text).is_dir():
        return f"folder {text.rstrip('/')}/ ({count})"
    if not Path(text).is_file() and any(c in text for c in _GLOB_CHARS):
        return f"glob {text!r} ({count})"
    return text


def _print_header(con: Any, source: str, n: int, det: Detector, out: Path, batch_size: int,
                  show_conf: float | None) -> None:
    con.print(f"[bold]frcnn-trt detect[/] {escape(source)} with {escape(det.describe())}", highlight=False)
    if det.export is not None:
        computed = effective_precision(det.export, det.backend.name, det.backend.device)
        con.print(f"  computes in: {computed}", markup=False, highlight=False)
    drawn = f"; drawn on the images: score ≥ {show_conf}" if show_conf is not None else ""
    con.print(f"  saved: score > {det.conf_thresh}, NMS {det.nms}, max {det.max_dets} per image{drawn}; "
              f"results → {out}", markup=False, highlight=False)
    world = distributed.get_world_size()
    if world > 1:
        mine = distributed.shard_indices(n, 0, world, chunk=batch_size)
        con.print(f"  {world} processes (torchrun): batches of {batch_size} sharded over the ranks, "
                  f"{len(mine)} image(s) on rank 0")


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
    if s.startup_seconds is not None:
        what = ("process start → first image ready: imports, model, sessions" if s.startup_origin == "process start"
                else "detect step start → first image ready: model, sessions")
        con.print(f"  start-up {s.startup_seconds:.1f} s ({what})", markup=False, highlight=False)
    for f, e in s.skipped:
        con.print(f"  [yellow]skipped[/] {f}: {e}")
    con.print(f"  predictions: {s.predictions}" + (f"; COCO results: {s.coco_json}" if s.coco_json else ""))
    con.print(f"  results in {s.output_dir}")
