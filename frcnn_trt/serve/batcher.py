"""Dynamic batching: concurrent requests share detector calls, and the backlog is bounded.

Glossary: ``B`` the largest batch (the export's, or less), ``Q`` the queue size, ``w`` the wait window.

- **admission**: :meth:`Batcher.admit` counts a request before its body is read; with ``Q + B`` requests already
  admitted (a full batch running and a full queue) it raises :class:`Overloaded` at once (503 + ``Retry-After``),
  so the backlog, and the memory it holds, never grows past ``Q + B`` decoded images.
- **batches**: one asyncio task takes the first waiting request, then up to ``B − 1`` more that arrive within
  ``w`` (none are waited for once ``B`` are there), and runs them in one detector call. Requests with different
  thresholds (``conf``, ``nms``, ``max_dets``) in one batch go in one call per setting.
- **the detector call** runs on one dedicated thread (off the event loop, and always the same thread: a
  TensorRT context is served by one thread), one batch at a time; requests keep arriving and queueing meanwhile,
  so under load the next batch is full as soon as the previous one ends.
- **shutdown**: :meth:`Batcher.stop` refuses new requests (503), runs every admitted one, then ends the task and
  the thread.

A failed detector call fails the requests of that call only (their handlers answer 500); the batcher goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.results import ImageDetections
from frcnn_trt.serve.metrics import ServeMetrics

__all__ = ["Batcher", "DetectorKey", "Overloaded", "Served"]

log = logging.getLogger("frcnn_trt.serve")

#: ``(conf, nms, max_dets)``; ``None`` keeps the export's setting
DetectorKey = tuple[float | None, float | None, int | None]
_CACHED_DETECTORS = 16


class Overloaded(Exception):
    """No room for another request (or the service is shutting down)."""


@dataclass
class Served:
    """One request's answer from the batcher: its detections, the batch it rode in, and the waits."""

    detections: ImageDetections
    batch_size: int
    queue_ms: float
    inference_ms: float


@dataclass
class _Item:
    image: np.ndarray
    key: DetectorKey
    future: asyncio.Future[Served]
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Collect requests into batches of at most ``max_batch`` and run ``detector`` on them (module docstring)."""

    def __init__(self, detector: Detector, metrics: ServeMetrics, *, max_batch: int, wait_s: float,
                 queue_size: int) -> None:
        self.detector = detector
        self.metrics = metrics
        self.max_batch = int(max_batch)
        self.wait_s = float(wait_s)
        self.capacity = int(queue_size) + self.max_batch
        self.admitted = 0
        self.closing = False
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()  # bounded by admission, not by maxsize
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frcnn-serve-detect")
        self._detectors: OrderedDict[DetectorKey, Detector] = OrderedDict({(None, None, None): detector})
        metrics.watch(lambda: float(self._queue.qsize()), lambda: float(self.admitted))

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the batching task (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="frcnn-serve-batcher")

    async def stop(self, timeout_s: float = 60.0) -> None:
        """Refuse new requests, finish every admitted one (waiting at most ``timeout_s`` for handlers still
        reading or decoding), end the task and the detector thread."""
        self.closing = True
        give_up = time.monotonic() + timeout_s
        while self.admitted > 0 and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        if self.admitted > 0:
            log.warning("stopping with %d request(s) still admitted after %.0f s", self.admitted, timeout_s)
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------ requests

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the ``queue_size + max_batch`` places for a request (:class:`Overloaded` if none)."""
        if self.closing:
            raise Overloaded("the service is shutting down")
        if self.admitted >= self.capacity:
            raise Overloaded(f"{self.admitted} requests in progress, the most this service holds "
                             f"(queue {self.capacity - self.max_batch} + batch {self.max_batch})")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def detect(self, image: np.ndarray, key: DetectorKey) -> Served:
        """The detections of one admitted request's image, once its batch has run."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(image, key, future))
        return await future

    # ------------------------------------------------------------------------------------------ worker

    async def _worker(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch, stop = await self._collect(first)
            await self._run(batch)
            if stop:
                return

    async def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` and up to ``max_batch − 1`` requests arriving within the wait window; ``True``: stop after."""
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _run(self, batch: list[_Item]) -> None:
        live = [it for it in batch if not it.future.done()]  # a cancelled request needs no detector time
        if not live:
            return
        groups: dict[DetectorKey, list[_Item]] = {}
        for it in live:
            groups.setdefault(it.key, []).append(it)
        loop = asyncio.get_running_loop()
        for key, items in groups.items():
            started = time.perf_counter()
            try:
                dets = await loop.run_in_executor(self._executor, self._call, key, [it.image for it in items])
            except Exception as exc:
                log.error("detector call on %d image(s) failed: %r", len(items), exc, exc_info=exc)
                _fail(items, exc)
                continue
            seconds = time.perf_counter() - started
            self.metrics.batch_size.observe(len(items))
            self.metrics.batch_seconds.observe(seconds)
            for it, d in zip(items, dets, strict=True):
                if not it.future.done():
                    queue_ms = (started - it.queued_at) * 1000.0
                    it.future.set_result(Served(d, len(items), queue_ms, seconds * 1000.0))

    def _call(self, key: DetectorKey, images: Sequence[np.ndarray]) -> list[ImageDetections]:
        """On the detector thread: one detector call with ``key``'s thresholds."""
        return self._detector(key).run(images)[0]

    def _detector(self, key: DetectorKey) -> Detector:
        """The detector for ``key``: the same backend, its own thresholds (a few kept, least recent dropped)."""
        det = self._detectors.get(key)
        if det is None:
            base = self.detector
            conf, nms, max_dets = key  # None: the service's own setting
            det = Detector(base.backend, base.settings, export=base.export,
                           conf_thresh=base.conf_thresh if conf is None else conf,
                           nms=base.nms if nms is None else nms,
                           max_dets=base.max_dets if max_dets is None else max_dets)
            self._detectors[key] = det
            if len(self._detectors) > _CACHED_DETECTORS:
                self._detectors.popitem(last=False)
        self._detectors.move_to_end(key)
        return det


def _fail(items: Sequence[_Item], exc: Exception) -> None:
    for it in items:
        if not it.future.done():
            it.future.set_exception(exc)

