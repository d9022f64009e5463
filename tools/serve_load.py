"""Load benchmark of ``frcnn-trt serve`` on loopback: requests/s and p50 / p99 latency at 1, 4 and 16 concurrent
clients, each sending a bounded number of real images one after the other.

It starts the server as a separate process (``python -m frcnn_trt serve --port 0``), waits for its banner, sends a
few warm-up requests, runs each concurrency level in turn (latency: from sending the request to the full answer;
requests/s: answers over the level's wall time), reads the mean batch size of each level from the server's
``/metrics``, stops the server with SIGTERM and prints a table (``--json`` also writes the numbers, with the
machine they were measured on). Non-200 answers are counted and reported, never timed as successes.

    python tools/serve_load.py --export /path/to/export --images /path/to/JPEGImages
    python tools/serve_load.py --export EXPORT --images IMAGES --concurrency 1 4 16 --requests 16 --json load.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from frcnn_trt.io import atomic_write_json  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
START_TIMEOUT_S = 180.0


@dataclass
class Level:
    """The numbers of one concurrency level."""

    clients: int
    requests: int
    ok: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", type=Path, required=True, help="export folder to serve")
    p.add_argument("--images", type=Path, required=True, help="folder of JPEG/PNG images to send")
    p.add_argument("--backend", default="onnxruntime", help="serve's --backend (default onnxruntime)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client counts (default 1 4 16)")
    p.add_argument("--requests", type=int, default=12, help="requests per client per level (default 12)")
    p.add_argument("--max-images", type=int, default=32, help="distinct images loaded (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="serve's --batch-wait-ms (default 5)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take (default 120)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.requests < 1 or min(args.concurrency) < 1 or max(args.concurrency) > 256:
        p.error("--requests must be >= 1 and each --concurrency in 1..256")
    return args


def _images(folder: Path, limit: int) -> list[bytes]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise SystemExit(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    return [p.read_bytes() for p in paths]


# ------------------------------------------------------------------------------------------------ server


def _start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str, list[str]]:
    cmd = [sys.executable, "-m", "frcnn_trt", "serve", "--export", str(args.export), "--backend", args.backend,
           "--port", "0", "--batch-wait-ms", str(args.batch_wait_ms), "--no-access-log",
           "--queue-size", str(max(64, 2 * max(args.concurrency)))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []  # every line the server prints, appended by the reader thread
    threading.Thread(target=_read_lines, args=(proc, log), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        new = log[seen:]
        seen += len(new)
        for line in new:
            if m := re.search(r"serving .* on (http://\S+?) \(", line):
                return proc, m.group(1), log
    proc.kill()
    raise SystemExit("the server did not start:\n" + "".join(log))


def _read_lines(proc: subprocess.Popen[str], log: list[str]) -> None:
    assert proc.stdout is not None  # Popen(stdout=PIPE)
    for line in iter(proc.stdout.readline, ""):
        log.append(line)


def _stop_server(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


# ------------------------------------------------------------------------------------------------ load


async def _client(c: httpx.AsyncClient, images: list[bytes], first: int, n: int) -> list[tuple[float, int]]:
    out = []
    for i in range(first, first + n):
        start = time.perf_counter()
        try:
            r = await c.post("/v1/detect", files={"image": (f"{i}.jpg", images[i % len(images)], "image/jpeg")})
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        out.append(((time.perf_counter() - start) * 1000.0, status))
    return out


def _batches(url: str) -> tuple[float, float]:
    """``(detector calls, images)`` so far, from ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=30.0).text
    calls = re.search(r"^frcnn_serve_batch_size_count ([0-9.e+]+)$", text, re.MULTILINE)
    images = re.search(r"^frcnn_serve_batch_size_sum ([0-9.e+]+)$", text, re.MULTILINE)
    return (float(calls.group(1)) if calls else 0.0), (float(images.group(1)) if images else 0.0)


async def _level(url: str, images: list[bytes], clients: int, n: int, timeout: float) -> Level:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
        start = time.perf_counter()
        runs = await asyncio.gather(*(_client(c, images, k * n, n) for k in range(clients)))
        seconds = time.perf_counter() - start
    done = [x for run in runs for x in run]
    ok_ms = np.array([ms for ms, status in done if status == 200])
    ok = int(ok_ms.size)
    return Level(clients, len(done), ok, len(done) - ok, seconds, ok / seconds,
                 float(np.percentile(ok_ms, 50)) if ok else float("nan"),
                 float(np.percentile(ok_ms, 99)) if ok else float("nan"), 0.0)


def _machine() -> dict[str, object]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), re.MULTILINE)
        model = found.group(1).strip() if found else ""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": model,
            "cpus": os.cpu_count(), "load_average_at_start": [round(v, 2) for v in load]}


def _table(levels: list[Level]) -> str:
    rows = ["clients  requests  ok  errors  req/s   p50 ms   p99 ms  mean batch"]
    rows += [f"{lv.clients:>7}  {lv.requests:>8}  {lv.ok:>3}  {lv.errors:>6}  {lv.requests_per_s:>5.1f}  "
             f"{lv.p50_ms:>7.1f}  {lv.p99_ms:>7.1f}  {lv.mean_batch:>10.2f}" for lv in levels]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    images = _images(args.images, args.max_images)
    machine = _machine()
    proc, url, log = _start_server(args)
    levels: list[Level] = []
    try:
        asyncio.run(_level(url, images, 1, 3, args.timeout))  # warm-up, not reported
        for clients in args.concurrency:
            calls0, images0 = _batches(url)
            lv = asyncio.run(_level(url, images, clients, args.requests, args.timeout))
            calls1, images1 = _batches(url)
            lv.mean_batch = (images1 - images0) / max(calls1 - calls0, 1.0)
            levels.append(lv)
            print(f"{clients} client(s): {lv.requests_per_s:.1f} req/s, p50 {lv.p50_ms:.1f} ms, "
                  f"p99 {lv.p99_ms:.1f} ms", flush=True)
    finally:
        code = _stop_server(proc)
    print(f"\nfrcnn-trt serve, {args.backend}, {args.export} on loopback; {machine['cpus']} CPU(s) {machine['cpu']}, "
          f"load average at start {machine['load_average_at_start']}")
    print(_table(levels))
    print(f"server exit code after SIGTERM: {code}")
    if args.json is not None:
        atomic_write_json(args.json, {"export": str(args.export), "backend": args.backend, "machine": machine,
                                      "requests_per_client": args.requests, "batch_wait_ms": args.batch_wait_ms,
                                      "levels": [asdict(lv) for lv in levels], "server_exit_code": code})
    failed = code != 0 or any(lv.errors for lv in levels)
    if failed:
        sys.stderr.write("".join(log[-40:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
