"""``frcnn-trt benchmark``: the same model on every available backend, side by side.

Each backend runs the whole detector (:class:`~frcnn_trt.engines.detector.Detector`) on the same synthetic
images (default 600 × 1000, py-faster-rcnn's largest test blob), one image per call, after ``warmup``
untimed calls. Reported per backend: ms per phase (preprocess, RPN, proposals, detector, postprocess;
GPU-synchronised), images/s and the speed-up over torch eager. py-faster-rcnn's published speeds
(docs/REFERENCE.md §13) are printed alongside as the historical anchor — other hardware, other decade.

The model: an export directory, a checkpoint (exported to a temporary directory first) or ``net`` alone
(a randomly initialised model of that network, exported to a temporary directory: timing does not
depend on the weights, only the postprocess phase does, through the number of detections).
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from frcnn_trt.config import from_dict
from frcnn_trt.engines.backends import BACKEND_NAMES, backend_availability, backend_spec
from frcnn_trt.engines.detector import Detector, PhaseTimes
from frcnn_trt.engines.export_format import versions
from frcnn_trt.errors import BackendError, FrcnnError
from frcnn_trt.export.onnx_export import export_model, random_checkpoint
from frcnn_trt.io import atomic_write_json
from frcnn_trt.log import console as make_console
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN

__all__ = ["REFERENCE_SPEEDS", "BackendTiming", "BenchmarkResult", "benchmark_detector", "load_benchmark_json",
           "run_benchmark"]

log = logging.getLogger("frcnn_trt.benchmark")

#: py-faster-rcnn / official MATLAB Faster R-CNN test-time speeds, whole pipeline per image (docs/REFERENCE.md §13).
REFERENCE_SPEEDS: list[dict[str, Any]] = [
    {"source": "MATLAB Faster R-CNN README", "hardware": "K40", "net": "VGG16", "ms_per_image": 198.0},
    {"source": "MATLAB Faster R-CNN README", "hardware": "K40", "net": "ZF", "ms_per_image": 59.0},
    {"source": "MATLAB Faster R-CNN README", "hardware": "Titan X", "net": "VGG16", "ms_per_image": 151.0},
    {"source": "py-faster-rcnn README", "hardware": "K40 (Caffe + Python layers)", "net": "VGG16",
     "ms_per_image": 220.0},
]


@dataclass
class BackendTiming:
    """One backend's result (``ms`` per image per phase, over the timed images)."""

    backend: str
    description: str
    ms_per_image: dict[str, float] = field(default_factory=dict)
    images: int = 0
    detections_per_image: float = 0.0
    error: str | None = None

    @property
    def images_per_second(self) -> float:
        total = self.ms_per_image.get("total", 0.0)
        return 1000.0 / total if total > 0 else 0.0


@dataclass
class BenchmarkResult:
    """All backends' timings plus the conditions they were taken under."""

    net: str
    image_size: tuple[int, int]
    num_images: int
    warmup: int
    threads: int
    device: str
    timings: list[BackendTiming]
    environment: dict[str, Any] = field(default_factory=dict)

    def speedup_vs_torch(self, t: BackendTiming) -> float | None:
        ref = next((x for x in self.timings if x.backend == "torch" and not x.error), None)
        if ref is None or t.error or not t.ms_per_image.get("total"):
            return None
        return ref.ms_per_image["total"] / t.ms_per_image["total"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "net": self.net, "image_size": list(self.image_size), "num_images": self.num_images,
            "warmup": self.warmup, "threads": self.threads, "device": self.device,
            "backends": [{"backend": t.backend, "description": t.description, "ms_per_image": t.ms_per_image,
                          "images_per_second": t.images_per_second, "images": t.images,
                          "detections_per_image": t.detections_per_image,
                          "speedup_vs_torch": self.speedup_vs_torch(t), "error": t.error} for t in self.timings],
            "reference": {"note": "historical anchor, other hardware: py-faster-rcnn README / MATLAB README "
                                  "(docs/REFERENCE.md §13), whole pipeline per image",
                          "speeds": REFERENCE_SPEEDS},
            "environment": self.environment,
        }


def _images(size: tuple[int, int], count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = size
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]


def benchmark_detector(detector: Detector, images: Sequence[np.ndarray], warmup: int = 1) -> BackendTiming:
    """Time ``detector.detect`` on each image alone (``warmup`` untimed calls first, on ``images[0]``)."""
    for _ in range(warmup):
        detector.detect([images[0]])
    total = PhaseTimes()
    dets = 0
    for im in images:
        out = detector.detect([im])
        total.add(detector.last_timing)
        dets += len(out[0])
    return BackendTiming(detector.backend.name, detector.describe(), total.per_image(), total.images,
                         dets / max(len(images), 1))


def run_benchmark(
    model: str | Path | None = None,
    *,
    export_dir: str | Path | None = None,
    net: str | None = None,
    num_classes: int = 21,
    backends: Sequence[str] | None = None,
    image_size: tuple[int, int] = (600, 1000),
    num_images: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    device: str | None = None,
    fp16: bool = False,
    ort_graph_optimization: str = "all",
    json_out: str | Path | None = None,
    console: Any = None,
) -> BenchmarkResult:
    """Benchmark one model on ``backends`` (default: every one available here); see the module docstring.

    Exactly one of ``model`` (checkpoint), ``export_dir`` or ``net`` (random weights). ``threads``: CPU
    threads for torch (``torch.set_num_threads``, restored afterwards) and every backend that takes an
    ``intra_op_threads`` option (ONNX Runtime); default = torch's current setting. ``fp16`` applies to the
    temporary export (checkpoint / ``net``). ``ort_graph_optimization`` goes to every backend that takes a
    ``graph_optimization`` option.
    """
    con = console if console is not None else make_console()
    if sum(x is not None for x in (model, export_dir, net)) != 1:
        raise FrcnnError("benchmark needs exactly one of a checkpoint, --export DIR or --net NAME")
    if num_images < 1 or warmup < 0:
        raise FrcnnError(f"num_images must be ≥ 1 and warmup ≥ 0, got {num_images} and {warmup}")
    wanted = _backends_to_time(backends, device)
    old_threads = torch.get_num_threads()
    n_threads = int(threads) if threads is not None else old_threads
    tmp = tempfile.TemporaryDirectory(prefix="frcnn_bench_")
    in_memory: FasterRCNN | None = None
    try:
        torch.set_num_threads(n_threads)
        if export_dir is None:
            export_dir, in_memory = _temporary_export(Path(tmp.name), model, net, num_classes, fp16, con)
        images = _images(image_size, num_images)
        timings: list[BackendTiming] = []
        net_name = "?"
        common = {"intra_op_threads": n_threads, "graph_optimization": ort_graph_optimization}
        for b in wanted:
            options = {k: v for k, v in common.items() if k in backend_spec(b).options}
            try:
                det = Detector.from_export(export_dir, b, device=device, model=in_memory, backend_options=options)
                net_name = det.export.net if det.export else net_name
                con.print(f"  timing {det.describe()} …")
                timings.append(benchmark_detector(det, images, warmup))
                del det
            except FrcnnError as exc:
                timings.append(BackendTiming(b, b, error=str(exc)))
        result = BenchmarkResult(net_name, tuple(image_size), num_images, warmup, n_threads,  # type: ignore[arg-type]
                                 device or ("cuda" if torch.cuda.is_available() else "cpu"), timings,
                                 _environment(n_threads))
    finally:
        torch.set_num_threads(old_threads)
        tmp.cleanup()
    _print_table(con, result)
    if json_out is not None:
        atomic_write_json(json_out, result.to_dict())
        con.print(f"  JSON → {json_out}")
    return result


def _backends_to_time(backends: Sequence[str] | None, device: str | None) -> list[str]:
    """The backends asked for (each must exist and run here), or every one that runs here, fastest first."""
    avail = backend_availability(device)
    if not backends:
        return [b for b in BACKEND_NAMES if avail[b][0]]
    for b in backends:
        if b not in avail:
            raise BackendError(f"unknown backend {b!r}; expected some of {', '.join(BACKEND_NAMES)}")
        if not avail[b][0]:
            raise BackendError(f"backend {b!r} cannot run here: {avail[b][1]}")
    return list(backends)


def _temporary_export(tmp_dir: Path, model: str | Path | None, net: str | None, num_classes: int, fp16: bool,
                      con: Any) -> tuple[Path, FasterRCNN]:
    """Export a checkpoint (or a random-init ``net``) into ``tmp_dir``: ``(export dir, the model in memory)``."""
    if net is not None:
        con.print(f"[bold]benchmark[/] random-init {net} ({num_classes} classes): exporting to {tmp_dir}")
        ckpt = random_checkpoint(tmp_dir / f"{net}_random", net=net, num_classes=num_classes,
                                 rpn_spread=10.0, anchor_proposals=True)
    else:
        ckpt = Path(model).with_suffix(".safetensors")  # type: ignore[arg-type]
        con.print(f"[bold]benchmark[/] {ckpt}: exporting to {tmp_dir}")
    in_memory, info = load_checkpoint(ckpt, device="cpu")
    if not isinstance(in_memory, FasterRCNN):  # pragma: no cover - load_checkpoint builds a FasterRCNN
        raise FrcnnError(f"{ckpt} does not hold a FasterRCNN")
    t0 = time.perf_counter()
    export_model(in_memory, cfg=from_dict(info.config), class_names=info.class_names,
                 output_dir=tmp_dir / "export", fp16=fp16, source={"checkpoint": str(ckpt.resolve()), "net": info.net})
    con.print(f"  exported in {time.perf_counter() - t0:.1f} s")
    return tmp_dir / "export", in_memory


def _environment(threads: int) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "processor": platform.processor() or None, "torch_threads": threads,
                           "versions": versions()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    else:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
        except OSError:
            env["cpu"] = None
    return env


def _print_table(con: Any, r: BenchmarkResult) -> None:
    h, w = r.image_size
    table = Table(title=f"{r.net}, {h}×{w} images, {r.num_images} timed (+{r.warmup} warm-up), "
                        f"{r.threads} CPU threads: ms per image")
    table.add_column("backend", no_wrap=True)
    for p in ("pre", "rpn", "prop", "det", "post", "total"):
        table.add_column(p, justify="right", no_wrap=True)
    table.add_column("img/s", justify="right", no_wrap=True)
    table.add_column("gain", justify="right", no_wrap=True)
    for t in r.timings:
        if t.error:
            table.add_row(t.backend, *["–"] * 8, "failed")
            continue
        sp = r.speedup_vs_torch(t)
        table.add_row(t.backend, *[f"{t.ms_per_image[p]:.1f}" for p in (*PhaseTimes.PHASES, "total")],
                      f"{t.images_per_second:.2f}", f"{sp:.2f}×" if sp is not None else "–")
    con.print(table)
    con.print("  phases: pre(process), rpn, prop(osals), det(ector), post(process); gain = speed-up over torch eager")
    for t in r.timings:
        con.print(f"  {t.backend}: " + (f"[red]{t.error}[/]" if t.error else
                                        f"{t.description}, {t.detections_per_image:.1f} detections/image"))
    con.print("[dim]historical anchor (docs/REFERENCE.md §13; whole pipeline per image, other hardware, "
              "for orientation only):[/]")
    for ref in REFERENCE_SPEEDS:
        con.print(f"[dim]  {ref['source']}: {ref['net']} on {ref['hardware']}: {ref['ms_per_image']:.0f} ms "
                  f"({1000 / ref['ms_per_image']:.1f} images/s)[/]")


def load_benchmark_json(path: str | Path) -> dict[str, Any]:
    """Read a ``--json`` file back (for comparisons across machines)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
