"""``frcnn-trt serve``: an HTTP detection service, one more thin caller of the inference layer.

Stack: Starlette on uvicorn. Starlette is a small, well-kept ASGI toolkit (routing, requests, responses, multipart
uploads through python-multipart, lifespan) with few dependencies; it is what FastAPI is built on, so its
requests, tests and deployment recipes are the ones most Python web services already use — and this service,
with three GET routes and one upload, needs none of FastAPI's pydantic models or generated schemas. uvicorn is
the reference ASGI server: it owns the sockets, HTTP parsing, keep-alive and the graceful stop on SIGTERM.
Metrics come from ``prometheus_client`` (the official client).

Parts: :mod:`~frcnn_trt.serve.app` (routes), :mod:`~frcnn_trt.serve.batcher` (dynamic batching, bounded
admission), :mod:`~frcnn_trt.serve.limits` (body size, query parameters, image decoding with a pixel budget),
:mod:`~frcnn_trt.serve.problems` (JSON errors), :mod:`~frcnn_trt.serve.metrics` (Prometheus + access log),
:mod:`~frcnn_trt.serve.settings`, :mod:`~frcnn_trt.serve.server` (uvicorn, signals).
"""

from __future__ import annotations

from frcnn_trt.serve.app import create_app
from frcnn_trt.serve.server import ServerOptions, bind_socket, load_detector, run_server
from frcnn_trt.serve.settings import ServeSettings, export_max_batch

__all__ = ["ServeSettings", "ServerOptions", "bind_socket", "create_app", "export_max_batch", "load_detector",
           "run_server"]
