"""Fixtures of the ``serve`` tests: the tiny export's detector, a real uvicorn server on a free loopback port
(in a thread), and small encoded images."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from torch import Tensor

from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.protocol import Backend
from frcnn_trt.serve import bind_socket
from tests.helpers import tiny_export

#: every HTTP call of these tests gives up after this many seconds (nothing can hang)
HTTP_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def serve_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny")[1]


@pytest.fixture(scope="module")
def detector(serve_export: Path) -> Detector:
    return Detector.from_export(serve_export, "onnxruntime", backend_options={"intra_op_threads": 1})


@contextmanager
def thread_server(app: Starlette) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on a free loopback port; yields its base URL, stops it after."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20.0)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"


def scene(height: int = 150, width: int = 200, seed: int = 0) -> np.ndarray:
    """A BGR uint8 image: noise with a few filled rectangles."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    for _ in range(3):
        x1, y1 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x2, y2 = x1 + int(rng.integers(20, width // 2)), y1 + int(rng.integers(20, height // 2))
        img[y1:y2, x1:x2] = rng.integers(100, 255, size=3, dtype=np.uint8)
    return img


def encode(image_bgr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).save(buf, format=fmt)
    return buf.getvalue()


class SlowBackend(Backend):
    """Another backend's answers, ``delay_s`` late (a detector call that takes long: overload tests)."""

    def __init__(self, inner: Backend, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.name = inner.name
        self.device = inner.device

    def run_rpn(self, blob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        time.sleep(self.delay_s)
        return self.inner.run_rpn(blob)

    def run_detector(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.run_detector(features, rois)


class FailingBackend(Backend):
    """A backend whose every call fails (the 500 path)."""

    name = "failing"
    device = torch.device("cpu")

    def run_rpn(self, blob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise RuntimeError("engine exploded: secret internal state")

    def run_detector(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        raise RuntimeError("engine exploded")
