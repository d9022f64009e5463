"""The HTTP routes of ``frcnn-trt serve`` around one :class:`~frcnn_trt.engines.detector.Detector`.

- ``POST /v1/detect``: the image as a multipart file field ``image`` (or as the whole body with an ``image/*`` or
  ``application/octet-stream`` content type) → one ``predictions.json`` record (``image_id``, ``file``, ``width``,
  ``height``, ``detections``: ``class_id``, ``label``, ``score``, 0-based inclusive ``box`` [x1, y1, x2, y2] in
  the image's own pixels), plus ``backend``, ``batch_size`` (the batch the image rode in) and ``timing_ms``
  (``queue``: waiting for its batch, ``inference``: the batch's detector call). Query: ``conf``, ``nms``,
  ``max_dets`` (the service's defaults, from the export's test settings) and ``annotated=1|png|jpeg``, which
  adds ``annotated`` = ``{"media_type", "base64"}``: the image drawn by :func:`frcnn_trt.detect.annotate`, in
  the JSON, so the detections and their picture come in one answer.
- ``GET /healthz``: ``{"status": "ok"}`` (503 ``"stopping"`` during shutdown). ``GET /v1/model``: classes,
  precision, backend, largest batch, the export's SHA-256 (of its ``export.json``, which pins every model file's
  own SHA-256), defaults and limits. ``GET /metrics``: Prometheus (:mod:`frcnn_trt.serve.metrics`).

Errors (:mod:`frcnn_trt.serve.problems`): JSON ``{"error", "detail"}`` with 413 / 415 / 422 for bad uploads
(:mod:`frcnn_trt.serve.limits`), 503 + ``Retry-After`` when full (:mod:`frcnn_trt.serve.batcher`), 500 when the
detector fails on a batch — the service itself keeps running.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import PurePath
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from frcnn_trt.detect import annotate
from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.export_format import EXPORT_FILE
from frcnn_trt.evaluation import prediction_record
from frcnn_trt.io import sha256_file
from frcnn_trt.serve.batcher import Batcher, Overloaded, Served
from frcnn_trt.serve.limits import (
    MAX_DETS_LIMIT,
    BodyLimitMiddleware,
    DetectParams,
    decode_upload,
    detect_params,
)
from frcnn_trt.serve.metrics import CONTENT_TYPE_LATEST, AccessLogMiddleware, ServeMetrics
from frcnn_trt.serve.problems import Problem, exception_handlers
from frcnn_trt.serve.settings import ServeSettings

__all__ = ["ROUTES", "create_app"]

log = logging.getLogger("frcnn_trt.serve")

ROUTES = ("/", "/healthz", "/metrics", "/v1/detect", "/v1/model")
_MAX_NAME = 200  # characters of an upload's file name echoed back


class _Service:
    """What the routes share: the detector, its batcher, the metrics and the settings."""

    def __init__(self, detector: Detector, settings: ServeSettings, reason: str) -> None:
        self.detector = detector
        self.settings = settings
        info = detector.export
        self.max_batch = settings.batch_limit(info) if info is not None else (settings.max_batch or 1)
        self.metrics = ServeMetrics(self.max_batch)
        self.batcher = Batcher(detector, self.metrics, max_batch=self.max_batch,
                               wait_s=settings.batch_wait_ms / 1000.0, queue_size=settings.queue_size)
        self.model = _model_info(detector, self.max_batch, settings, reason)

    # ------------------------------------------------------------------------------------------ routes

    async def index(self, _request: Request) -> Response:
        return JSONResponse({"service": "frcnn-trt serve", "endpoints": list(ROUTES)})

    async def healthz(self, _request: Request) -> Response:
        if self.batcher.closing:
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def model_info(self, _request: Request) -> Response:
        return JSONResponse(self.model)

    async def metrics_text(self, _request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def detect(self, request: Request) -> Response:
        q = request.query_params
        params = detect_params(q, {k for k in q if len(q.getlist(k)) > 1})
        try:
            with self.batcher.admit():
                return JSONResponse(await self._detect(request, params))
        except Overloaded as exc:
            raise Problem(503, "overloaded", f"{exc}; retry later",
                          {"Retry-After": str(self.settings.retry_after_s)}) from None

    async def _detect(self, request: Request, params: DetectParams) -> dict[str, Any]:
        data, name = await _read_upload(request)
        image = await run_in_threadpool(decode_upload, data, name, self.settings.max_pixels)
        del data
        try:
            served = await self.batcher.detect(image, params.key)
        except Exception as exc:  # logged by the batcher; the client gets a plain 500
            raise Problem(500, "inference_failed", "the detector failed on this request's batch (see the server "
                          f"log: {type(exc).__name__})") from None
        return await run_in_threadpool(self._answer, image, name, served, params)

    def _answer(self, image: Any, name: str, served: Served, params: DetectParams) -> dict[str, Any]:
        d = served.detections
        labels = d.labels if d.labels is not None else np.zeros(0, np.int64)
        record = prediction_record(PurePath(name).stem or "upload", name, d.width, d.height, d.boxes, d.scores,
                                   labels, self.detector.class_names)
        record["backend"] = self.model["backend"]
        record["batch_size"] = served.batch_size
        record["timing_ms"] = {"queue": round(served.queue_ms, 3), "inference": round(served.inference_ms, 3)}
        if params.annotated is not None:
            record["annotated"] = _encode(annotate(image, d), params.annotated)
        return record


async def _read_upload(request: Request) -> tuple[bytes, str]:
    """The uploaded bytes and a name for them (the multipart file name, or ``"body"``)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        async with request.form(max_files=1, max_fields=16, max_part_size=64 * 1024) as form:
            upload = form.get("image")
            if upload is None:
                raise Problem(422, "missing_field", "the multipart form has no field 'image' (send the image "
                              "as a file field named 'image')")
            if not isinstance(upload, UploadFile):
                raise Problem(422, "invalid_field", "field 'image' must be a file upload, not a text value")
            return await upload.read(), (upload.filename or "image")[:_MAX_NAME]
    if media.startswith("image/") or media == "application/octet-stream":
        return await request.body(), "body"
    raise Problem(415, "unsupported_media_type", f"content type {media[:60]!r}: send multipart/form-data with a "
                  "file field 'image', or the image itself as the body (image/*)")


def _encode(img: Any, fmt: str) -> dict[str, str]:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG", compress_level=3)
    return {"media_type": f"image/{fmt}", "base64": base64.b64encode(buf.getvalue()).decode("ascii")}


def _model_info(detector: Detector, max_batch: int, settings: ServeSettings, reason: str) -> dict[str, Any]:
    info = detector.export
    export: dict[str, Any] | None = None
    if info is not None:
        export = {"directory": str(info.directory), "sha256": sha256_file(info.directory / EXPORT_FILE),
                  "created": info.data.get("created"), "net": info.net,
                  "source_sha256": info.source_checkpoint.get("sha256")}
    backend = detector.backend
    return {
        "classes": list(detector.class_names[1:]),
        "class_names": list(detector.class_names),
        "precision": info.precision if info is not None else {"model": "fp32"},
        "backend": backend.name,
        "backend_detail": detector.describe(),
        "backend_reason": reason,
        "device": str(backend.device),
        "export": export,
        "max_batch": max_batch,
        "defaults": {"conf": detector.conf_thresh, "nms": detector.nms, "max_dets": detector.max_dets},
        "limits": {"max_body_bytes": settings.max_body_bytes, "max_pixels": settings.max_pixels,
                   "queue_size": settings.queue_size, "batch_wait_ms": settings.batch_wait_ms,
                   "max_dets": MAX_DETS_LIMIT},
    }


def create_app(detector: Detector, settings: ServeSettings | None = None, *, reason: str = "") -> Starlette:
    """The ASGI app serving ``detector`` (``reason``: why its backend was chosen, shown by ``/v1/model``).
    The batcher starts and stops with the app's lifespan; ``app.state.service`` holds the shared parts."""
    svc = _Service(detector, settings or ServeSettings(), reason)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        svc.batcher.start()
        try:
            yield
        finally:
            await svc.batcher.stop()
            log.info("batcher drained and stopped")

    routes = [
        Route("/", svc.index, methods=["GET"]),
        Route("/healthz", svc.healthz, methods=["GET"]),
        Route("/metrics", svc.metrics_text, methods=["GET"]),
        Route("/v1/model", svc.model_info, methods=["GET"]),
        Route("/v1/detect", svc.detect, methods=["POST"]),
    ]
    middleware = [Middleware(AccessLogMiddleware, metrics=svc.metrics, routes=ROUTES),
                  Middleware(BodyLimitMiddleware, max_bytes=svc.settings.max_body_bytes)]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=exception_handlers(),  # type: ignore[arg-type]
                    lifespan=lifespan)
    app.state.service = svc
    return app
