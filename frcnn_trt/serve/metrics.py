"""Prometheus metrics of one app (its own :class:`~prometheus_client.CollectorRegistry`, so several apps live
side by side in one process) and the access log: one ``key=value`` line per request.

Metrics (``GET /metrics``, Prometheus text format):

- ``frcnn_serve_requests_total{method, route, status}``: answered requests;
- ``frcnn_serve_request_seconds{route}``: latency, from the first byte of the request to the last of the answer;
- ``frcnn_serve_batch_size``: images per detector call; ``frcnn_serve_batch_seconds``: time of one call;
- ``frcnn_serve_queue_depth``: requests waiting for a batch; ``frcnn_serve_in_flight``: admitted requests
  (waiting, decoding or in the running batch).

``route`` is the route's path (``/v1/detect``) or ``other``, so a scan of random URLs cannot grow the label set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "AccessLogMiddleware", "ServeMetrics"]

access_log = logging.getLogger("frcnn_trt.serve.access")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """The collectors of one app, registered in :attr:`registry`."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("frcnn_serve_requests", "Answered HTTP requests.", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("frcnn_serve_request_seconds", "Request latency in seconds.", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("frcnn_serve_batch_size", "Images per detector call.",
                                    buckets=tuple(float(b) for b in range(1, max_batch + 1)), registry=r)
        self.batch_seconds = Histogram("frcnn_serve_batch_seconds", "Seconds per detector call.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("frcnn_serve_queue_depth", "Requests waiting for a batch.", registry=r)
        self.in_flight = Gauge("frcnn_serve_in_flight", "Admitted requests not answered yet.", registry=r)

    def watch(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read both gauges from these functions at each scrape."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class AccessLogMiddleware:
    """Count, time and log every HTTP request (the outermost layer: it sees every answer, 413s included)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers
        sent = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self._record(scope, status, sent, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, sent: int, seconds: float) -> None:
        path = str(scope.get("path", ""))
        route = path if path in self.routes else "other"
        method = str(scope.get("method", ""))
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        client = scope.get("client") or ("-", 0)
        access_log.info("method=%s path=%s status=%d ms=%.1f bytes_out=%d client=%s:%s", method, _quote(path),
                        status, seconds * 1000.0, sent, client[0], client[1])


def _quote(text: str) -> str:
    """A path as one log token: at most 200 characters, no spaces or control characters."""
    clean = "".join(c if c.isprintable() and not c.isspace() else "?" for c in text[:200])
    return clean or "-"
