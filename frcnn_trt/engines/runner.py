"""A detector over many images: batches, threads, torchrun shards, one gathered result list, progress, timing.

Glossary: ``n`` image paths of a run, ``B`` images per detector call (``batch_size``), ``W`` processes (torchrun),
``r`` this process's rank, ``T`` detector calls in flight at once (``threads``).

``detect``, ``test`` and alt-opt's ``rpn_generate`` are all "a :class:`~frcnn_trt.engines.detector.Detector`
over a list of image files"; :class:`Runner` is that loop, written once:

- **batches**: images are read in path order and handed to the detector ``B`` readable images at a time
  (``task`` ``"detect"`` or ``"propose"``). An image that cannot be read (missing, truncated, not an image)
  comes back with its error, logged as a warning, and the next readable image takes its place in the batch:
  no good image is ever dropped.
- **threads**: with ``T > 1`` images are decoded ahead and ``T`` batches run side by side, where the backend
  allows it (:attr:`~frcnn_trt.engines.protocol.Backend.concurrent_calls`: torch and ONNX Runtime on a CPU,
  where the uncapped proposal NMS of ``rpn_generate`` runs on one core per call, the GIL released). Each batch
  is computed alone, so the results are the same for any ``T``; only the per-phase times overlap.
- **torchrun**: rank ``r`` takes every ``W``-th chunk of ``B`` consecutive paths from chunk ``r``
  (:func:`frcnn_trt.distributed.shard_indices`), so its batches are those of one process whenever every image
  is readable (an unreadable image is refilled from the rank's own chunks, one process refills from the next
  chunk: the batches around it, and by the blob padding their detections' last bits, can differ).
  :meth:`Runner.run` gathers every rank's results (npz + JSON over the process group, no pickle) and returns,
  on every rank, the one list a single process returns: same order, same arrays.
- **progress**: a rich bar on a terminal (rank 0), plain log lines otherwise (CI).
- **timing**: the detector's per-phase :class:`~frcnn_trt.engines.detector.PhaseTimes` (device-synchronised),
  summed over batches without the first ``warmup`` ones (kept when a process has no more than those), then
  over ranks: ms/image of one process. **Start-up**: the process's age when its first image was ready
  (:attr:`RunResult.startup_seconds`, from the kernel's process start time: imports, loading the model and
  building sessions included), logged with the run's end.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from frcnn_trt import distributed
from frcnn_trt.data.images import read_image
from frcnn_trt.engines.detector import Detector, PhaseTimes, Task
from frcnn_trt.engines.results import ImageDetections, pack, unpack
from frcnn_trt.errors import FrcnnError, ImageError

__all__ = ["ImageResult", "RunResult", "Runner", "default_threads", "process_age", "rank_zero_first",
           "unique_image_ids"]

log = logging.getLogger("frcnn_trt.engines.runner")

T = TypeVar("T")
R = TypeVar("R")

#: most detector calls side by side on a CPU (each runs its NMS on a core of its own)
MAX_CPU_THREADS = 4


# ------------------------------------------------------------------------------------------------ records


@dataclass
class ImageResult:
    """One input image of a run: its detections (or proposals), or the error that made the run skip it.

    ``index`` is its position in the run's path list. ``image`` (the decoded BGR array) is set only while the
    result streams through :meth:`Runner.stream` / ``on_result``; the results a run returns do not hold it.
    """

    index: int
    path: Path
    image_id: str
    detections: ImageDetections | None = None
    error: str | None = None
    image: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunResult:
    """What :meth:`Runner.run` did: every image's result in path order, and the speed."""

    results: list[ImageResult]
    timing: PhaseTimes = field(default_factory=PhaseTimes)
    warmup_excluded: bool = False
    wall_seconds: float = 0.0
    processes: int = 1
    threads: int = 1
    #: seconds from :attr:`startup_origin` to the first image ready (``None``: unknown, or no image)
    startup_seconds: float | None = None
    #: what the start-up is counted from: ``"process start"``, or ``"call"`` (the ``started_at`` given)
    startup_origin: str = "process start"

    @property
    def skipped(self) -> list[ImageResult]:
        """The images that could not be read, in path order."""
        return [r for r in self.results if not r.ok]

    @property
    def detections(self) -> list[ImageDetections]:
        """The detections (or proposals) of every readable image, in path order."""
        return [r.detections for r in self.results if r.detections is not None]

    @property
    def ms_per_image(self) -> dict[str, float]:
        """Per-phase ms per timed image, plus ``total`` (empty when nothing was timed)."""
        return self.timing.per_image() if self.timing.images else {}


# ------------------------------------------------------------------------------------------------ helpers


def process_age() -> float | None:
    """Seconds since this process started (Linux: ``/proc/self/stat`` start time against ``/proc/uptime``,
    10 ms resolution), ``None`` where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            stat = fh.read()
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def unique_image_ids(paths: Sequence[Path]) -> list[str]:
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


def default_threads(det: Detector, requested: int | None = None) -> int:
    """Detector calls side by side: ``requested`` if given, else up to :data:`MAX_CPU_THREADS` (and the CPU
    count) for a CPU backend that allows concurrent calls, else 1 (a GPU already runs the NMS in parallel, and
    TensorRT's execution context serves one call at a time)."""
    if requested is not None:
        return max(1, int(requested))
    backend = det.backend
    if backend.device.type != "cpu" or not backend.concurrent_calls:
        return 1
    return max(1, min(MAX_CPU_THREADS, os.cpu_count() or 1))


def rank_zero_first(build: Callable[[], T]) -> T:
    """``build()`` in every process, rank 0 first and the others after it (under torchrun): what rank 0
    writes on the way (an export, TensorRT engine caches) the others then only load."""
    if distributed.get_world_size() == 1:
        return build()
    built = build() if distributed.is_main_process() else None
    distributed.barrier()
    return built if built is not None else build()


def _ordered(fn: Callable[[T], R], items: Iterable[T], pool: ThreadPoolExecutor | None, window: int) -> Iterator[R]:
    """``map(fn, items)`` in order; with a pool, up to ``window`` calls run ahead of the consumer."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _batches(reads: Iterable[ImageResult], size: int) -> Iterator[ImageResult | list[ImageResult]]:
    """Readable images in lists of ``size`` (the last one shorter); an unreadable one on its own, at once."""
    pending: list[ImageResult] = []
    for r in reads:
        if not r.ok:
            yield r
            continue
        pending.append(r)
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending


def _read(item: tuple[int, Path, str]) -> ImageResult:
    index, path, image_id = item
    try:
        return ImageResult(index, path, image_id, image=read_image(path))
    except ImageError as exc:
        return ImageResult(index, path, image_id, error=str(exc))


class _Progress:
    """A rich bar on rank 0's terminal, or a plain log line every ``every`` images (rank 0)."""

    def __init__(self, label: str, total: int, console: Any, every: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.main = distributed.is_main_process()
        self.every = every if every is not None else max(1, math.ceil(total / 10))
        self.bar: Any = None
        if self.main and console is not None and bool(getattr(console, "is_terminal", False)):
            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.description}"), console=console, transient=True)
            self.task = self.bar.add_task("", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.__exit__(exc_type, exc, tb)

    def advance(self, res: ImageResult) -> None:
        self.done += 1
        if self.bar is not None:
            what = f"{len(res.detections)} boxes" if res.detections is not None else "skipped"
            self.bar.update(self.task, advance=1, description=f"{res.path.name}: {what}")
        elif self.main and (self.done % self.every == 0 or self.done == self.total):
            world = distributed.get_world_size()
            log.info("%s: %d/%d images%s", self.label, self.done, self.total,
                     f" (rank 0 of {world})" if world > 1 else "")


# ------------------------------------------------------------------------------------------------ runner


class Runner:
    """Run ``detector`` over image files, ``batch_size`` images per call (see the module docstring).

    ``task``: ``"detect"`` or ``"propose"`` (``pre_nms_top_n`` / ``post_nms_top_n`` go to
    :meth:`Detector.propose`). ``threads``: calls side by side (``None``: :func:`default_threads`).
    ``warmup``: leading batches of each process left out of the timing. ``label`` / ``console`` /
    ``log_every``: the progress display (a bar when ``console`` is a terminal; else a log line every
    ``log_every`` images, default every tenth of the run).
    """

    def __init__(
        self,
        detector: Detector,
        *,
        task: Task = "detect",
        batch_size: int = 1,
        threads: int | None = 1,
        warmup: int = 1,
        pre_nms_top_n: int | None = None,
        post_nms_top_n: int | None = None,
        label: str | None = None,
        console: Any = None,
        log_every: int | None = None,
        started_at: float | None = None,
    ) -> None:
        """``started_at``: ``time.perf_counter()`` when the caller began this work (building the detector
        included), for a run inside a longer process (the demo); ``None``: start-up counts from the process
        start (a command's own process)."""
        if batch_size < 1:
            raise FrcnnError(f"batch_size must be ≥ 1, got {batch_size}")
        if task not in ("detect", "propose"):
            raise FrcnnError(f"task must be 'detect' or 'propose', got {task!r}")
        self.detector = detector
        self.task: Task = task
        self.batch_size = int(batch_size)
        self.threads = default_threads(detector, threads)
        self.warmup = max(0, int(warmup))
        self.propose_args = {"pre_nms_top_n": pre_nms_top_n, "post_nms_top_n": post_nms_top_n}
        self.label = label or task
        self.console = console
        self.log_every = log_every
        self.started_at = started_at

    # ------------------------------------------------------------------------------------------ one process

    def stream(self, paths: Sequence[str | Path], ids: Sequence[str] | None = None, *,
               indices: Sequence[int] | None = None, timing: list[PhaseTimes] | None = None) -> Iterator[ImageResult]:
        """Every path's :class:`ImageResult` (with ``image``), in this process, batch by batch as the batches
        are done: in path order, except that an unreadable image comes at once, before the batch it interrupts
        (the same order for any number of threads). ``ids`` default to :func:`unique_image_ids`; ``indices`` to
        ``0..len(paths)-1``; ``timing`` receives each batch's times, in batch order."""
        items = self._items(paths, ids, indices)
        with ExitStack() as stack:
            reader, caller = self._pools(stack)
            reads = _ordered(_read, items, reader, 2 * self.threads * self.batch_size)
            for done, times in _ordered(self._call, _batches(reads, self.batch_size), caller, self.threads):
                if times is not None and timing is not None:
                    timing.append(times)
                for res in done:
                    if not res.ok:
                        log.warning("%s: skipped %s: %s", self.label, res.path, res.error)
                    yield res

    def _items(self, paths: Sequence[str | Path], ids: Sequence[str] | None,
               indices: Sequence[int] | None) -> list[tuple[int, Path, str]]:
        p = [Path(x) for x in paths]
        ids = unique_image_ids(p) if ids is None else list(ids)
        idx = list(range(len(p))) if indices is None else list(indices)
        if not len(ids) == len(idx) == len(p):
            raise FrcnnError(f"{len(ids)} image ids and {len(idx)} indices for {len(p)} paths")
        return list(zip(idx, p, ids, strict=True))

    def _pools(self, stack: ExitStack) -> tuple[ThreadPoolExecutor | None, ThreadPoolExecutor | None]:
        if self.threads == 1:
            return None, None
        pools = []
        for name in ("read", "call"):
            pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"{self.label}-{name}")
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            pools.append(pool)
        return pools[0], pools[1]

    def _call(self, unit: ImageResult | list[ImageResult]) -> tuple[list[ImageResult], PhaseTimes | None]:
        if isinstance(unit, ImageResult):  # unreadable: nothing to run
            return [unit], None
        dets, times = self.detector.run([r.image for r in unit], self.task,  # type: ignore[misc]
                                        **self.propose_args)
        for r, d in zip(unit, dets, strict=True):
            r.detections = d.named(r.image_id)
        return unit, times

    # ------------------------------------------------------------------------------------------ a whole run

    def run(self, paths: Sequence[str | Path], ids: Sequence[str] | None = None, *,
            on_result: Callable[[ImageResult], None] | None = None) -> RunResult:
        """Every path's result, in path order, on every process (under torchrun each runs its shard and the
        results are gathered). ``on_result`` sees each of this process's results as it streams, with its
        decoded ``image`` (e.g. to draw it); the returned results do not keep the images."""
        items = self._items(paths, ids, None)
        p, ids = [it[1] for it in items], [it[2] for it in items]
        world, rank = distributed.get_world_size(), distributed.get_rank()
        mine = distributed.shard_indices(len(p), rank, world, chunk=self.batch_size)
        position = {i: k for k, i in enumerate(mine)}
        local: list[ImageResult | None] = [None] * len(mine)
        batches: list[PhaseTimes] = []
        startup: float | None = None
        t0 = time.perf_counter()
        with _Progress(self.label, len(mine), self.console, self.log_every) as progress:
            for res in self.stream([p[i] for i in mine], [ids[i] for i in mine], indices=mine, timing=batches):
                if startup is None and res.ok:
                    startup = (process_age() if self.started_at is None
                               else time.perf_counter() - self.started_at)
                if on_result is not None:
                    on_result(res)
                res.image = None
                local[position[res.index]] = res
                progress.advance(res)
        results = self._gather([r for r in local if r is not None], p, ids)
        timing, excluded = self._timing(batches)
        origin = "process start" if self.started_at is None else "call"
        if startup is not None and distributed.is_main_process():
            log.info("%s: start-up %.1f s (%s to first image ready: imports, model, sessions)",
                     self.label, startup, origin)
        return RunResult(results, timing, excluded, time.perf_counter() - t0, world, self.threads, startup,
                         origin)

    def _gather(self, local: list[ImageResult], paths: list[Path], ids: list[str]) -> list[ImageResult]:
        """Every rank's results (``local``: this rank's shard, in order), in path order."""
        if distributed.get_world_size() == 1:
            return local
        parts = distributed.all_gather_arrays(pack([r.detections for r in local]))
        errors = distributed.all_gather_json([r.error for r in local])
        mine_of = [distributed.shard_indices(len(paths), r, len(parts), chunk=self.batch_size)
                   for r in range(len(parts))]
        per_rank = [list(zip(unpack(arr, self.detector.class_names, [ids[i] for i in idx]), errs, strict=True))
                    for arr, errs, idx in zip(parts, errors, mine_of, strict=True)]
        ordered = distributed.unshard(per_rank, chunk=self.batch_size)
        return [ImageResult(i, paths[i], ids[i], detections=d, error=e) for i, (d, e) in enumerate(ordered)]

    def _timing(self, batches: list[PhaseTimes]) -> tuple[PhaseTimes, bool]:
        """Summed times of the batches after each process's warm-up, and whether every process left its out."""
        timed = batches[self.warmup:] if len(batches) > self.warmup else batches
        excluded = len(batches) > self.warmup
        if distributed.get_world_size() > 1:
            ranks = distributed.all_gather_json(
                {"timed": [t.to_dict() for t in timed], "excluded": excluded, "batches": len(batches)})
            timed = [PhaseTimes(**t) for r in ranks for t in r["timed"]]
            excluded = all(r["excluded"] for r in ranks if r["batches"])
        total = PhaseTimes()
        for t in timed:
            total.add(t)
        return total, excluded
