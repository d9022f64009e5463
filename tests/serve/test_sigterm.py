"""``frcnn-trt serve`` as a real process: it starts from the command line, and SIGTERM lets the requests in
flight finish before it exits with 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import HTTP_TIMEOUT, encode, scene

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # importing torch on a busy 2-core machine


def _lines(stream: object, out: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        out.put(line)


@pytest.fixture
def served(serve_export: Path) -> Iterator[tuple[subprocess.Popen[str], str, queue.Queue[str]]]:
    """``python -m frcnn_trt serve`` on a free port; a batch waits 1.5 s for more requests (so requests stay in
    flight long enough to be caught by the signal)."""
    cmd = [sys.executable, "-m", "frcnn_trt", "serve", "--export", str(serve_export), "--backend", "onnxruntime",
           "--port", "0", "--batch-wait-ms", "1500", "--no-warmup", "--grace-s", "20"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        url = _wait_for_url(proc, lines)
        yield proc, url, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _wait_for_url(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if m := re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line):
            return m.group(1)
    raise AssertionError("the server did not start:\n" + "".join(seen))


def _in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=HTTP_TIMEOUT).text
    m = re.search(r"^frcnn_serve_in_flight ([0-9.]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_sigterm_finishes_requests_in_flight(served: tuple[subprocess.Popen[str], str, queue.Queue[str]]) -> None:
    proc, url, lines = served
    assert httpx.get(f"{url}/healthz", timeout=HTTP_TIMEOUT).json() == {"status": "ok"}
    data = encode(scene())

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{url}/v1/detect", files={"image": ("s.png", data, "image/png")}, timeout=HTTP_TIMEOUT)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(post, i) for i in range(3)]
        deadline = time.monotonic() + 30.0
        while _in_flight(url) < 3:  # all three are waiting for their batch (1.5 s window, batch of 4)
            assert time.monotonic() < deadline, "the requests never reached the server"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        responses = [f.result(timeout=60) for f in futures]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all(r.json()["batch_size"] == 3 for r in responses)
    assert proc.wait(60) == 0
    log = []
    while not lines.empty():
        log.append(lines.get())
    text = "".join(log)
    assert "Traceback" not in text
    assert "batcher drained and stopped" in text and "stopped on SIGTERM" in text
    assert text.count("path=/v1/detect status=200") == 3  # the access log: one line per request
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5.0)


def test_cli_refuses_a_missing_export(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from frcnn_trt.cli import app

    res = CliRunner().invoke(app, ["serve", "--export", str(tmp_path / "nothing"), "--port", "0"])
    assert res.exit_code == 1 and "does not exist" in res.output
