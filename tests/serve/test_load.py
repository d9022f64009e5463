"""The service under concurrent load: requests share batches, and a full service answers 503 at once."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from frcnn_trt.engines.detector import Detector
from frcnn_trt.serve import ServeSettings, create_app
from tests.serve.conftest import HTTP_TIMEOUT, SlowBackend, encode, scene, thread_server

CLIENTS = 16
REQUESTS_EACH = 2


async def _client_run(base: str, images: list[bytes], n: int, first: int) -> list[tuple[int, httpx.Response]]:
    """``n`` requests one after the other: ``(index of the image sent, answer)``."""
    out = []
    async with httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT) as c:
        for i in range(first, first + n):
            k = i % len(images)
            out.append((k, await c.post("/v1/detect", files={"image": (f"{k}.png", images[k], "image/png")})))
    return out


async def _burst(base: str, images: list[bytes], clients: int, each: int) -> list[tuple[int, httpx.Response]]:
    runs = await asyncio.gather(*(_client_run(base, images, each, c) for c in range(clients)))
    return [r for run in runs for r in run]


def _metric(text: str, pattern: str) -> float:
    m = re.search(pattern + r" ([0-9.e+-]+)$", text, re.MULTILINE)
    assert m is not None, pattern
    return float(m.group(1))


def test_concurrent_clients_share_batches(detector: Detector) -> None:
    images = [encode(scene(120 + 10 * k, 160, seed=k)) for k in range(4)]
    app = create_app(detector, ServeSettings(batch_wait_ms=30.0, queue_size=64))
    with thread_server(app) as base:
        start = time.monotonic()
        sent = asyncio.run(asyncio.wait_for(_burst(base, images, CLIENTS, REQUESTS_EACH), 90.0))
        elapsed = time.monotonic() - start
        metrics = httpx.get(f"{base}/metrics", timeout=HTTP_TIMEOUT).text
    responses = [r for _, r in sent]
    assert len(responses) == CLIENTS * REQUESTS_EACH
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    assert elapsed < 90.0
    sizes = [r.json()["batch_size"] for r in responses]
    assert max(sizes) > 1 and max(sizes) <= app.state.service.max_batch
    calls = _metric(metrics, "frcnn_serve_batch_size_count")
    images_done = _metric(metrics, "frcnn_serve_batch_size_sum")
    assert images_done == CLIENTS * REQUESTS_EACH and calls < images_done  # batches of more than one were run
    # every answer is about the image it was asked about (no mix-up inside a batch)
    assert all(r.json()["height"] == 120 + 10 * k and r.json()["file"] == f"{k}.png" for k, r in sent)


def test_full_queue_answers_503_with_retry_after(detector: Detector) -> None:
    slow = Detector(SlowBackend(detector.backend, 1.0), detector.settings, export=detector.export)
    app = create_app(slow, ServeSettings(max_batch=1, queue_size=1, batch_wait_ms=0.0, retry_after_s=2))
    with thread_server(app) as base:
        responses = [r for _, r in asyncio.run(asyncio.wait_for(_burst(base, [encode(scene())], 8, 1), 60.0))]
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 503} and codes.count(200) >= 2 and codes.count(503) >= 4, codes
        for r in responses:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "2"
                assert r.json()["error"] == "overloaded" and "retry later" in r.json()["detail"]
        # the backlog never grew past one batch + the queue, and the service recovers
        after = httpx.post(f"{base}/v1/detect", files={"image": ("s.png", encode(scene()), "image/png")},
                           timeout=HTTP_TIMEOUT)
        assert after.status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=HTTP_TIMEOUT).text
    assert _metric(metrics, r'frcnn_serve_requests_total\{method="POST",route="/v1/detect",status="503"\}') >= 4
