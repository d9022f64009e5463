"""Run the service: load the export once, warm it up, bind the socket, hand the app to uvicorn, stop cleanly.

Graceful stop (SIGTERM, or Ctrl-C): uvicorn stops accepting connections, lets every request in flight finish
(at most ``grace_s`` seconds), then the app's lifespan ends and the batcher runs every admitted request before
its thread stops. uvicorn re-raises the signal it caught once it is done; :func:`run_server` installs its own
handlers first (uvicorn puts them back before re-raising), so the process ends with exit code 0 after a clean
stop instead of dying by the signal.

The listening socket is bound here, not by uvicorn, so ``--port 0`` picks a free port and the banner names it.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import uvicorn

from frcnn_trt.engines.detector import Detector, InferenceSettings
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.engines.selection import open_backend
from frcnn_trt.errors import ConfigError
from frcnn_trt.log import LOGGER_NAME
from frcnn_trt.serve.app import create_app
from frcnn_trt.serve.settings import ServeSettings

__all__ = ["ServerOptions", "bind_socket", "load_detector", "run_server"]

log = logging.getLogger("frcnn_trt.serve")


@dataclass(frozen=True)
class ServerOptions:
    """Where and how to listen: ``host``, ``port`` (0: any free one), ``grace_s`` for requests in flight at
    shutdown, ``access_log`` one line per request."""

    host: str = "127.0.0.1"
    port: int = 8000
    grace_s: float = 30.0
    access_log: bool = True


def load_detector(export_dir: str | Path, backend: str = "auto", *, device: str | None = None,
                  threads: int | None = None, conf: float | None = None, nms: float | None = None,
                  max_dets: int | None = None) -> tuple[Detector, str]:
    """The export's detector and why its backend was chosen (``auto``: the fastest that runs here).
    ``threads``: ONNX Runtime's intra-op threads (only with the onnxruntime backend)."""
    options: dict[str, Any] = {}
    if threads is not None:
        if backend != "onnxruntime":
            raise ConfigError(f"--threads sets ONNX Runtime's intra-op threads: give --backend onnxruntime "
                              f"with it (got --backend {backend})")
        options["intra_op_threads"] = int(threads)
    info = load_export(export_dir)
    impl, why = open_backend(backend, info, device, options=options)
    det = Detector(impl, InferenceSettings.from_export(info), conf_thresh=conf, nms=nms, max_dets=max_dets,
                   export=info)
    return det, why


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, whichever ``host`` is)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _route_uvicorn_logs() -> None:
    """uvicorn's own lines through the package's handler (one format on stderr), its access log off."""
    ours = logging.getLogger(LOGGER_NAME)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = list(ours.handlers)
        lg.setLevel(logging.INFO)
        lg.propagate = False


def _warm_up(det: Detector) -> None:
    """One detector call on a grey image: the first real request is not the one paying for lazy set-up."""
    s = det.settings
    det.run([np.full((s.target_size, s.target_size, 3), 128, np.uint8)])


def run_server(detector: Detector, settings: ServeSettings, options: ServerOptions, *, reason: str = "",
               warmup: bool = True, console: Any = None) -> int:
    """Serve ``detector`` until SIGTERM / SIGINT; returns 0 after a graceful stop, 3 if it never started."""
    app = create_app(detector, settings, reason=reason)
    if warmup:
        _warm_up(detector)
    sock = bind_socket(options.host, options.port)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    svc = app.state.service
    caught: list[int] = []

    def note(sig: int, _frame: FrameType | None) -> None:
        caught.append(sig)

    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", server_header=False,
                            timeout_graceful_shutdown=int(max(1, round(options.grace_s))),
                            log_level="info")
    _route_uvicorn_logs()
    if not options.access_log:
        logging.getLogger("frcnn_trt.serve.access").setLevel(logging.WARNING)
    line = (f"serving {detector.describe()} on {url} (max batch {svc.max_batch}, wait {settings.batch_wait_ms:g} "
            f"ms, queue {settings.queue_size}); POST {url}/v1/detect -F image=@photo.jpg")
    if console is not None:
        console.print(line, markup=False, highlight=False)
    else:
        print(line, flush=True)
    sys.stdout.flush()
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    if not server.started:
        log.error("the server did not start (see the lines above)")
        return 3
    log.info("stopped%s", f" on {signal.Signals(caught[0]).name}" if caught else "")
    return 0
