"""Where an export's time goes on ONNX Runtime: milliseconds per operator type, from ONNX Runtime's profiler.

    python tools/ort_profile.py EXPORT [EXPORT ...] [--size 600 1000] [--rois 300] [--runs 3] [--threads N]

Each export's two graphs run as the onnxruntime backend runs them (graph optimisation ``all``, the detector's
RoI node as ``MaxRoiPool``, the backend's session options) on a random image of ``--size`` and ``--rois`` random
proposals; the first run is a warm-up and is left out. Prints, per graph, the median run time and the time per
kernel (operator type after optimisation, e.g. ``QLinearConv`` for an integer convolution, ``FusedConv`` for an
FP32 one), summed over the graph's nodes and averaged over the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from frcnn_trt.engines.export_format import DETECTOR_FILE, RPN_FILE, load_export
from frcnn_trt.engines.onnxruntime_backend import session_options
from frcnn_trt.ops.roi_pool import to_onnxruntime


def _profile(model: bytes, feeds: dict[str, np.ndarray], runs: int, threads: int | None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The graph's run time and per-kernel times, and its outputs by name."""
    with tempfile.TemporaryDirectory(prefix="frcnn_prof_") as tmp:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            outputs = sess.run(None, feeds)
        names = [o.name for o in sess.get_outputs()]
        events = json.loads(Path(sess.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm_end = model_runs[0]["ts"] + model_runs[0]["dur"]
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > warm_end:
            per_op[e.get("args", {}).get("op_name", "?")] += e["dur"] / 1000.0 / runs
    run_ms = [e["dur"] / 1000.0 for e in model_runs[1:]]
    timing = {"run_ms": statistics.median(run_ms), "ops": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}
    return timing, dict(zip(names, outputs, strict=True))


def _feeds(size: tuple[int, int], num_rois: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    h, w = size
    image = rng.normal(0.0, 50.0, (1, 3, h, w)).astype(np.float32)
    xy = rng.uniform(0, [w - 32, h - 32], (num_rois, 2))
    wh = rng.uniform(16, [w / 2, h / 2], (num_rois, 2))
    rois = np.concatenate([np.zeros((num_rois, 1)), xy, np.minimum(xy + wh, [w - 1, h - 1])], axis=1)
    return {"image": image}, {"rois": rois.astype(np.float32)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exports", type=Path, nargs="+")
    ap.add_argument("--size", type=int, nargs=2, default=(600, 1000))
    ap.add_argument("--rois", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    for export in args.exports:
        load_export(export)  # a complete export whose hashes match
        rpn_feeds, det_feeds = _feeds((args.size[0], args.size[1]), args.rois)
        rpn, outputs = _profile((export / RPN_FILE).read_bytes(), rpn_feeds, args.runs, args.threads)
        # the detector runs on the RPN's real features (their value range matters to integer kernels)
        det_feeds["features"] = outputs["features"]
        detector = to_onnxruntime(onnx.load(str(export / DETECTOR_FILE))).SerializeToString()
        results[str(export)] = {"rpn": rpn, "detector": _profile(detector, det_feeds, args.runs, args.threads)[0]}
        for g, r in results[str(export)].items():
            print(f"{export} {g}: {r['run_ms']:.0f} ms per run (median of {args.runs})")
            for op, ms in r["ops"].items():
                if ms >= 0.5:
                    print(f"    {op:<22} {ms:9.1f} ms  {100 * ms / r['run_ms']:5.1f} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
