"""``frcnn-trt benchmark``: the same model on several backends and precisions, timed side by side.

What is timed: each *contender* (one backend running one export: ``onnxruntime fp32``, ``onnxruntime int8``,
``torch fp32``, …) runs the whole detector (:class:`~frcnn_trt.engines.detector.Detector`) on the same synthetic
images (default 600 × 1000, py-faster-rcnn's largest test blob), one image per call.

Built to hold on a noisy machine (a CPU shared with other jobs):

- **interleaved**: after ``warmup`` untimed calls of every contender (round-robin too), image ``i`` runs on
  contender A, then B, then C, …, then image ``i + 1`` on A, B, C … A burst of load elsewhere then slows every
  contender alike instead of whichever happened to run during it (timing one backend after the other gave
  0.69× … 1.91× for the same pair within minutes);
- **medians with min–max**: per phase (preprocess, RPN, proposals, detector, postprocess) and for the whole
  image; the speed-up over torch eager FP32 is the ratio of the median whole-image times;
- **every sample kept**: the JSON output (``--json``) holds each contender's per-image times, the load average
  before and after, and reads back with :func:`load_benchmark_json`.

Contenders: every export given (``--export DIR``, repeatable; its precision is read from ``export.json``: FP32,
FP16, INT8 or whatever label it carries) on every backend that runs here, plus a checkpoint or ``--net``
(random weights) exported to a temporary FP32 (or ``fp16``) export first. The torch backend runs the source
checkpoint in FP32, once per checkpoint however many exports were made from it. py-faster-rcnn's published
speeds (docs/REFERENCE.md §13) are printed alongside as the historical anchor — other hardware, other decade.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.table import Table

from frcnn_trt.config import from_dict
from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.backends import BACKEND_NAMES, backend_availability, backend_spec
from frcnn_trt.engines.detector import Detector, PhaseTimes
from frcnn_trt.engines.export_format import ExportInfo, load_export, versions
from frcnn_trt.engines.torch_backend import default_memory_format
from frcnn_trt.errors import BackendError, FrcnnError
from frcnn_trt.export.onnx_export import export_model, random_checkpoint
from frcnn_trt.files import load_json
from frcnn_trt.io import atomic_write_json
from frcnn_trt.log import console as make_console
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN

__all__ = ["FORMAT", "PHASES", "REFERENCE_SPEEDS", "BenchmarkResult", "Contender", "load_benchmark_json",
           "run_benchmark", "summarize", "time_interleaved"]

FORMAT = "frcnn-trt-benchmark"
FORMAT_VERSION = 2
#: the timed phases of one image, and their sum
PHASES: tuple[str, ...] = (*PhaseTimes.PHASES, "total")

#: py-faster-rcnn / official MATLAB Faster R-CNN test-time speeds, whole pipeline per image (docs/REFERENCE.md §13).
REFERENCE_SPEEDS: list[dict[str, Any]] = [
    {"source": "MATLAB Faster R-CNN README", "hardware": "K40", "net": "VGG16", "ms_per_image": 198.0},
    {"source": "MATLAB Faster R-CNN README", "hardware": "K40", "net": "ZF", "ms_per_image": 59.0},
    {"source": "MATLAB Faster R-CNN README", "hardware": "Titan X", "net": "VGG16", "ms_per_image": 151.0},
    {"source": "py-faster-rcnn README", "hardware": "K40 (Caffe + Python layers)", "net": "VGG16",
     "ms_per_image": 220.0},
]


class Runnable(Protocol):
    """What :func:`time_interleaved` needs of a detector (a :class:`Detector`, or a fake in tests)."""

    def run(self, images: Sequence[np.ndarray]) -> tuple[list[Any], PhaseTimes]: ...


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of ``values`` (at least one)."""
    if not values:
        raise FrcnnError("no samples to summarize")
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


@dataclass
class Contender:
    """One thing timed: ``backend`` running one export (``export``: its folder; ``None`` for a temporary one).

    ``samples``: per timed image, ms per phase and ``total``; ``detections``: per timed image, how many.
    """

    label: str
    backend: str
    precision: str
    export: str | None = None
    description: str = ""
    samples: list[dict[str, float]] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per phase (and ``total``): median, min and max ms over the timed images (empty when none)."""
        if not self.samples:
            return {}
        return {p: summarize([s[p] for s in self.samples]) for p in PHASES}

    @property
    def median_ms(self) -> float | None:
        return self.stats()["total"]["median"] if self.ok else None

    @property
    def images_per_second(self) -> float:
        m = self.median_ms
        return 1000.0 / m if m else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "backend": self.backend, "precision": self.precision, "export": self.export,
                "description": self.description, "error": self.error, "stats_ms": self.stats(),
                "images_per_second": self.images_per_second, "samples_ms": self.samples,
                "detections": self.detections}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contender:
        return cls(str(d["label"]), str(d["backend"]), str(d["precision"]), d.get("export"),
                   str(d.get("description", "")), [{p: float(s[p]) for p in PHASES} for s in d["samples_ms"]],
                   [int(n) for n in d.get("detections", [])], d.get("error"))


@dataclass
class BenchmarkResult:
    """Every contender's samples plus the conditions they were taken under."""

    net: str
    image_size: tuple[int, int]
    num_images: int
    warmup: int
    threads: int
    device: str
    contenders: list[Contender]
    environment: dict[str, Any] = field(default_factory=dict)

    def reference(self) -> Contender | None:
        """The torch eager FP32 contender the speed-ups are relative to (``None`` when it did not run)."""
        return next((c for c in self.contenders if c.backend == "torch" and c.precision == "fp32" and c.ok), None)

    def speedup(self, c: Contender) -> float | None:
        """Median whole-image time of torch FP32 / that of ``c`` (``None`` without both)."""
        ref = self.reference()
        if ref is None or not c.ok:
            return None
        return ref.median_ms / c.median_ms  # type: ignore[operator]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "net": self.net, "image_size": list(self.image_size),
            "num_images": self.num_images, "warmup": self.warmup, "threads": self.threads, "device": self.device,
            "order": "interleaved: image i on every contender in turn, after warm-up of each",
            "contenders": [{**c.to_dict(), "speedup_vs_torch_fp32": self.speedup(c)} for c in self.contenders],
            "reference": {"note": "historical anchor, other hardware: py-faster-rcnn README / MATLAB README "
                                  "(docs/REFERENCE.md §13), whole pipeline per image", "speeds": REFERENCE_SPEEDS},
            "environment": self.environment,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchmarkResult:
        h, w = (int(v) for v in d["image_size"])
        return cls(str(d["net"]), (h, w), int(d["num_images"]), int(d["warmup"]), int(d["threads"]),
                   str(d["device"]), [Contender.from_dict(c) for c in d["contenders"]], dict(d["environment"]))


# ------------------------------------------------------------------------------------------------ timing


def time_interleaved(detectors: Sequence[Runnable], contenders: Sequence[Contender], images: Sequence[np.ndarray],
                     warmup: int = 1, on_error: Callable[[Contender, FrcnnError], None] | None = None) -> None:
    """Time ``detectors[k]`` into ``contenders[k]``: ``warmup`` untimed rounds (every detector on image
    ``r mod n``), then image by image, each image on every detector in turn. A detector that fails gets the
    error on its contender and leaves the rotation; the others go on."""
    live = list(range(len(detectors)))

    def call(k: int, im: np.ndarray) -> tuple[list[Any], PhaseTimes] | None:
        try:
            return detectors[k].run([im])
        except FrcnnError as exc:
            contenders[k].error = str(exc)
            live.remove(k)
            if on_error is not None:
                on_error(contenders[k], exc)
            return None

    for r in range(warmup):
        for k in list(live):
            call(k, images[r % len(images)])
    for im in images:
        for k in list(live):
            out = call(k, im)
            if out is not None:
                dets, times = out
                contenders[k].samples.append({p: float(v) for p, v in times.per_image().items()})
                contenders[k].detections.append(len(dets[0]))


def _images(size: tuple[int, int], count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = size
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]


# ------------------------------------------------------------------------------------------------ contenders


def precision_label(info: ExportInfo) -> str:
    """An export's precision from ``export.json``: the one value its graphs share (``fp32``, ``fp16``, ``int8``,
    any other string as it is), or ``rpn/detector`` when they differ."""
    p = info.precision
    values = [str(p.get(k, "?")) for k in ("rpn.onnx", "detector.onnx")]
    return values[0] if values[0] == values[1] else "/".join(values)


@dataclass
class _Source:
    """One export to time, and the model it came from when that is in memory (temporary exports)."""

    directory: Path
    model: FasterRCNN | None = None
    temporary: bool = False


def _open_contenders(sources: Sequence[_Source], wanted: Sequence[str], device: str | None,
                     options: dict[str, Any]) -> tuple[list[Contender], list[Detector | None], str]:
    """Every (export, backend) pair as a contender with its detector (``None`` with the error when it cannot
    open); the torch backend once per source checkpoint. Returns the contenders, detectors and the net name."""
    contenders: list[Contender] = []
    detectors: list[Detector | None] = []
    seen_checkpoints: set[str] = set()
    net = "?"
    for src in sources:
        info = load_export(src.directory)
        net = info.net
        for b in wanted:
            if b == "torch":
                key = "memory" if src.model is not None else str(info.source_checkpoint.get("sha256"))
                if key in seen_checkpoints:
                    continue
                seen_checkpoints.add(key)
            precision = "fp32" if b == "torch" else precision_label(info)
            label = _unique_label(f"{b} {precision}", src, contenders)
            c = Contender(label, b, precision, None if src.temporary else str(src.directory))
            contenders.append(c)
            detectors.append(_open(c, src, info, device, {k: v for k, v in options.items()
                                                          if k in backend_spec(b).options}))
    return contenders, detectors, net


def _unique_label(label: str, src: _Source, taken: Sequence[Contender]) -> str:
    if all(c.label != label for c in taken):
        return label
    return f"{label} ({src.directory.name})"


def _open(c: Contender, src: _Source, info: ExportInfo, device: str | None, options: dict[str, Any]) -> Detector | None:
    can, why = backend_availability(device, info)[c.backend]
    if not can:
        c.error = why
        return None
    try:
        det = Detector.from_export(src.directory, c.backend, device=device, model=src.model, backend_options=options)
    except FrcnnError as exc:
        c.error = str(exc)
        return None
    c.description = det.describe()
    return det


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
    return list(dict.fromkeys(backends))


def _temporary_export(tmp_dir: Path, model: str | Path | None, net: str | None, num_classes: int, fp16: bool,
                      con: Any) -> _Source:
    """Export a checkpoint (or a random-init ``net``) into ``tmp_dir``, keeping the model in memory."""
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
    return _Source(tmp_dir / "export", in_memory, temporary=True)


# ------------------------------------------------------------------------------------------------ the command


def _export_list(export_dir: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if export_dir is None:
        return []
    if isinstance(export_dir, (str, Path)):
        return [Path(export_dir)]
    return [Path(e) for e in export_dir]


def run_benchmark(
    model: str | Path | None = None,
    *,
    export_dir: str | Path | Sequence[str | Path] | None = None,
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
    torch_memory_format: str = "auto",
    json_out: str | Path | None = None,
    console: Any = None,
) -> BenchmarkResult:
    """Benchmark exports and/or a model on ``backends`` (default: every one available here), interleaved
    image by image; see the module docstring.

    ``export_dir``: one export folder or several; ``model`` (a checkpoint) or ``net`` (random weights, at most
    one of the two) adds a temporary export of it, ``fp16`` making that one FP16. ``threads``: CPU threads for
    torch (``torch.set_num_threads``, restored afterwards) and every backend that takes an ``intra_op_threads``
    option (ONNX Runtime); default = torch's current setting. ``ort_graph_optimization`` goes to every backend
    that takes a ``graph_optimization`` option, ``torch_memory_format`` to the torch backend (``"auto"``: the
    faster layout for the device, as ``detect`` runs it, also for a model held in memory).
    """
    con = console if console is not None else make_console()
    exports = _export_list(export_dir)
    if model is not None and net is not None:
        raise FrcnnError("benchmark takes a checkpoint or --net NAME, not both (add exports with --export DIR)")
    if model is None and net is None and not exports:
        raise FrcnnError("benchmark needs a checkpoint, --net NAME or at least one --export DIR")
    if num_images < 1 or warmup < 0:
        raise FrcnnError(f"num_images must be ≥ 1 and warmup ≥ 0, got {num_images} and {warmup}")
    wanted = _backends_to_time(backends, device)
    old_threads = torch.get_num_threads()
    n_threads = int(threads) if threads is not None else old_threads
    tmp = tempfile.TemporaryDirectory(prefix="frcnn_bench_")
    try:
        torch.set_num_threads(n_threads)
        sources = [_Source(e) for e in exports]
        if model is not None or net is not None:
            sources.append(_temporary_export(Path(tmp.name), model, net, num_classes, fp16, con))
        layout = default_memory_format(resolve_device(device)) if torch_memory_format == "auto" else torch_memory_format
        options = {"intra_op_threads": n_threads, "graph_optimization": ort_graph_optimization,
                   "memory_format": layout}
        result = _time(sources, wanted, device, options, image_size, num_images, warmup, n_threads, con)
    finally:
        torch.set_num_threads(old_threads)
        tmp.cleanup()
    _print_table(con, result)
    if json_out is not None:
        atomic_write_json(json_out, result.to_dict())
        con.print(f"  JSON → {json_out}")
    return result


def _time(sources: Sequence[_Source], wanted: Sequence[str], device: str | None, options: dict[str, Any],
          image_size: tuple[int, int], num_images: int, warmup: int, threads: int, con: Any) -> BenchmarkResult:
    contenders, detectors, net = _open_contenders(sources, wanted, device, options)
    live = [(c, d) for c, d in zip(contenders, detectors, strict=True) if d is not None]
    con.print(f"  timing {len(live)} contender(s) interleaved, {num_images} image(s) each after {warmup} warm-up: "
              + ", ".join(c.label for c, _ in live))
    env = _environment(threads)
    time_interleaved([d for _, d in live], [c for c, _ in live], _images(image_size, num_images), warmup,
                     on_error=lambda c, e: con.print(f"  [red]{c.label} failed:[/] {e}"))
    env["load_average_after"] = _load_average()
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    h, w = image_size
    return BenchmarkResult(net, (h, w), num_images, warmup, threads, dev, contenders, env)


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without it
        return None


def _environment(threads: int) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "processor": platform.processor() or None, "torch_threads": threads,
                           "cpu_count": os.cpu_count(), "load_average_before": _load_average(),
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


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _medians(r: BenchmarkResult) -> Table:
    h, w = r.image_size
    table = Table(title=f"{r.net}, {h}×{w}, {r.num_images} images per contender (+{r.warmup} warm-up), "
                        f"interleaved, {r.threads} CPU threads: median ms per image")
    table.add_column("contender", no_wrap=True)
    for p in ("pre", "rpn", "prop", "det", "post", "total", "img/s", "gain"):
        table.add_column(p, justify="right", no_wrap=True)
    for c in r.contenders:
        if not c.ok:
            table.add_row(c.label, *["–"] * 7, "failed")
            continue
        st = c.stats()
        sp = r.speedup(c)
        table.add_row(c.label, *[_ms(st[p]["median"]) for p in PHASES], f"{c.images_per_second:.2f}",
                      f"{sp:.2f}×" if sp is not None else "–")
    return table


def _ranges(r: BenchmarkResult) -> Table:
    """Min–max per phase, one column per contender (narrow enough for an 80-column log)."""
    ok = [c for c in r.contenders if c.ok]
    table = Table(title="min–max ms per image")
    table.add_column("phase", no_wrap=True)
    for c in ok:
        table.add_column(c.label, justify="right", no_wrap=True)
    stats = [c.stats() for c in ok]
    for p in PHASES:
        table.add_row(p, *[f"{_ms(st[p]['min'])}–{_ms(st[p]['max'])}" for st in stats])
    return table


def _print_table(con: Any, r: BenchmarkResult) -> None:
    con.print(_medians(r))
    if any(c.ok for c in r.contenders):
        con.print(_ranges(r))
    con.print("  phases: pre(process), rpn, prop(osals), det(ector), post(process); gain = median whole-image "
              "time of torch FP32 / the contender's")
    load = (r.environment.get("load_average_before"), r.environment.get("load_average_after"))
    if all(load):
        con.print(f"  load average (1, 5, 15 min) before {load[0]}, after {load[1]} on {os.cpu_count()} CPUs")
    for c in r.contenders:
        dets = f", {statistics.mean(c.detections):.1f} detections/image" if c.detections else ""
        con.print(f"  {c.label}: " + (f"[red]{c.error}[/]" if c.error else f"{c.description}{dets}"))
    con.print("[dim]historical anchor (docs/REFERENCE.md §13; whole pipeline per image, other hardware, "
              "for orientation only):[/]")
    for ref in REFERENCE_SPEEDS:
        con.print(f"[dim]  {ref['source']}: {ref['net']} on {ref['hardware']}: {ref['ms_per_image']:.0f} ms "
                  f"({1000 / ref['ms_per_image']:.1f} images/s)[/]")


def load_benchmark_json(path: str | Path) -> BenchmarkResult:
    """Read a ``--json`` file back (comparisons across machines); FrcnnError when it is not one."""
    data = load_json(path, "benchmark JSON", error=FrcnnError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FrcnnError(f"{path}: not a {FORMAT} JSON file")
    if data.get("format_version") != FORMAT_VERSION:
        raise FrcnnError(f"{path}: {FORMAT} format version {data.get('format_version')}, this reader takes "
                         f"{FORMAT_VERSION}")
    try:
        return BenchmarkResult.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise FrcnnError(f"{path}: malformed {FORMAT} JSON ({exc!r})") from None
