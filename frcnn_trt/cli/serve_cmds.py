"""``frcnn-trt serve``: the detection service over HTTP (:mod:`frcnn_trt.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frcnn_trt.cli.app import BACKEND_CHOICES, app, printer


@app.command("serve")
def serve_cmd(
    export: Annotated[Path, typer.Option("--export", help="Export folder (frcnn-trt export).")],
    backend: Annotated[str, typer.Option(help=f"{BACKEND_CHOICES}.")] = "auto",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one, named in the banner).")] = 8000,
    max_batch: Annotated[int | None, typer.Option(help="Images per detector call (default: the export's "
                                                  "largest batch).")] = None,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more requests (ms).")] = 5.0,
    queue_size: Annotated[int, typer.Option(help="Requests waiting beyond one batch; more get 503.")] = 32,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body (MiB); more get 413.")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image, width x height; more get 413.")] = 25_000_000,
    conf: Annotated[float | None, typer.Option(help="Default score threshold (export's: 0.05).")] = None,
    nms: Annotated[float | None, typer.Option(help="Default per-class NMS IoU (export's: 0.3).")] = None,
    max_dets: Annotated[int | None, typer.Option(help="Default detections per image (export's: 100).")] = None,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime intra-op threads (--backend onnxruntime).")
                       ] = None,
    grace_s: Annotated[float, typer.Option(help="Seconds requests in flight get to finish on SIGTERM.")] = 30.0,
    warmup: Annotated[bool, typer.Option(help="Run one detector call before listening.")] = True,
    access_log: Annotated[bool, typer.Option(help="One log line per request.")] = True,
) -> None:
    """Serve detections over HTTP: POST /v1/detect (multipart field 'image'), /healthz, /v1/model, /metrics."""
    from frcnn_trt.errors import ConfigError
    from frcnn_trt.serve import ServerOptions, ServeSettings, load_detector, run_server

    if not 0 < max_body_mb <= 1024:
        raise ConfigError(f"--max-body-mb must be in (0, 1024], got {max_body_mb}")
    settings = ServeSettings(max_batch=max_batch, batch_wait_ms=batch_wait_ms, queue_size=queue_size,
                             max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=max_pixels)
    options = ServerOptions(host=host, port=port, grace_s=grace_s, access_log=access_log)
    det, reason = load_detector(export, backend, device=device, threads=threads, conf=conf, nms=nms,
                                max_dets=max_dets)
    code = run_server(det, settings, options, reason=reason, warmup=warmup, console=printer())
    if code:
        raise typer.Exit(code)
