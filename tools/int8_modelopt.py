"""Quantize an FP32 export with NVIDIA ModelOpt's ONNX PTQ, for comparison with ``frcnn-trt export --int8``.

``frcnn-trt export --int8`` quantizes with ``onnxruntime.quantization``; this script makes the same kind of
export with ``modelopt.onnx.quantization.quantize`` (nvidia-modelopt, *not* a dependency of the project) so that
both run through the same commands. ModelOpt pins its own onnx / onnxruntime-gpu, so give it a separate
environment that also sees this package; how it was measured (README, "INT8 and speed on a CPU")::

    python3 -m venv mo && echo "$PWD/.venv/lib/python3.11/site-packages" > mo/lib/python3.11/site-packages/p.pth
    mo/bin/pip install nvidia-modelopt 'onnxruntime-gpu~=1.24.2' 'onnx~=1.21.0' onnx-graphsurgeon \
        'onnxconverter-common~=1.16.0' onnxscript onnxslim polygraphy ml_dtypes lief cppimport
    PYTHONPATH=$PWD mo/bin/python tools/int8_modelopt.py ...

(``onnxruntime-gpu`` runs on a CPU. ModelOpt imports ``tensorrt`` when it can: where only ``tensorrt-stubs``
is installed that import succeeds and ModelOpt fails on ``trt.Logger``; shadow it in that environment.) Then::

    PYTHONPATH=$PWD mo/bin/python tools/int8_modelopt.py EXPORT_FP32 --calib synth:shapes:trainval -o EXPORT_MO
    frcnn-trt test --export EXPORT_MO --imdb synth:shapes:test --backend onnxruntime
    frcnn-trt benchmark --export EXPORT_FP32 --export EXPORT_INT8 --export EXPORT_MO --backend onnxruntime

Calibration uses the same images as ``export --int8`` through the same preprocessing
(:class:`frcnn_trt.export.calibration.ImageStream`): the RPN on the images, the detector on the features and
proposals of the ModelOpt INT8 RPN (as ``export --int8`` does with its own RPN). ModelOpt calibrates on ONNX
Runtime, which does not know the export's ``frcnn.RoIPool`` node: the detector is quantized in its ONNX Runtime
form (``MaxRoiPool``) and the node is put back afterwards. The output folder is a copy of the FP32 export whose
two graphs and export.json (hashes, precision, a ``quantization`` record naming ModelOpt) are replaced.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from frcnn_trt.engines.detector import Detector, InferenceSettings
from frcnn_trt.engines.export_format import DETECTOR_FILE, EXPORT_FILE, RPN_FILE, load_export
from frcnn_trt.engines.onnxruntime_backend import OnnxRuntimeBackend
from frcnn_trt.export.calibration import Feeds, ImageStream, Preprocess, calibration_paths
from frcnn_trt.export.int8_export import detector_feeds, rpn_feeds
from frcnn_trt.io import atomic_write_bytes, atomic_write_json, sha256_file
from frcnn_trt.ops.roi_pool import ONNX_DOMAIN, ONNX_DOMAIN_VERSION, ONNX_OP_TYPE, to_onnxruntime


class ListReader:
    """An ONNX Runtime CalibrationDataReader over feeds held in memory, with the ``get_first`` / ``rewind`` that
    ModelOpt's readers have (it runs the first feed once before calibrating)."""

    def __init__(self, feeds: list[Feeds]) -> None:
        self.feeds = feeds
        self._it: Iterator[Feeds] = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def get_first(self) -> Feeds:
        return self.feeds[0]

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def set_range(self, start: int, end: int) -> None:
        self._it = iter(self.feeds[start:end])


def _quantize(model: onnx.ModelProto, feeds: list[Feeds], args: argparse.Namespace, what: str) -> onnx.ModelProto:
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory(prefix="frcnn_modelopt_") as tmp:
        src, out = Path(tmp) / f"{what}.onnx", Path(tmp) / f"{what}.int8.onnx"
        onnx.save(model, str(src))
        t0 = time.perf_counter()
        quantize(str(src), quantize_mode="int8", calibration_data_reader=ListReader(feeds),
                 calibration_method=args.method, calibration_eps=["cpu"], output_path=str(out),
                 high_precision_dtype="fp32", dq_only=args.dq_only, log_level="WARNING")
        print(f"{what}: ModelOpt quantized in {time.perf_counter() - t0:.1f} s on {len(feeds)} calibration feeds")
        return onnx.load(str(out))


def _restore_roi_node(qproto: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Put the export's ``frcnn.RoIPool`` node back where the ONNX Runtime form had ``MaxRoiPool``."""
    roi = [n for n in original.graph.node if n.domain == ONNX_DOMAIN and n.op_type == ONNX_OP_TYPE]
    pools = [n for n in qproto.graph.node if n.op_type == "MaxRoiPool"]
    if len(roi) != 1 or len(pools) != 1:
        raise SystemExit(f"expected one RoI node in each detector graph, found {len(roi)} and {len(pools)}")
    pools[0].op_type, pools[0].domain = ONNX_OP_TYPE, ONNX_DOMAIN
    del pools[0].attribute[:]
    pools[0].attribute.extend(roi[0].attribute)
    if not any(o.domain == ONNX_DOMAIN for o in qproto.opset_import):
        qproto.opset_import.append(onnx.helper.make_opsetid(ONNX_DOMAIN, ONNX_DOMAIN_VERSION))
    return qproto


def _write(out: Path, metadata: dict[str, Any], graphs: dict[str, onnx.ModelProto], args: argparse.Namespace,
           images: int) -> None:
    import modelopt

    (out / EXPORT_FILE).unlink(missing_ok=True)
    for name, proto in graphs.items():
        atomic_write_bytes(out / name, proto.SerializeToString())
        metadata["files"][name].update({"sha256": sha256_file(out / name), "size": (out / name).stat().st_size,
                                        "precision": "int8"})
    metadata["precision"] = {name: "int8" for name in graphs}
    # ModelOpt's INT8 activations are symmetric (zero point 0; its use_zero_point option left the graphs
    # byte-identical in 0.47): what TensorRT takes, hence the target
    metadata["precision_notes"] = f"QDQ INT8 by NVIDIA ModelOpt {modelopt.__version__} (symmetric INT8 activations)"
    metadata["quantization"] = {"library": f"nvidia-modelopt {modelopt.__version__}", "format": "QDQ",
                                "target": "tensorrt", "method": args.method,
                                "source": args.calib, "images": {"used": images}, "fp32_layers": {}}
    atomic_write_json(out / EXPORT_FILE, metadata)
    load_export(out)  # hashes and fields read back


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", type=Path, help="FP32 export folder")
    ap.add_argument("--calib", required=True, help="calibration images: imdb name, folder or glob")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--method", default="max", help="ModelOpt calibration method: max or entropy")
    ap.add_argument("--dq-only", action="store_true", help="weights stored INT8 with only a DequantizeLinear "
                    "(ModelOpt dq_only)")
    ap.add_argument("--data-root", type=Path, default=Path("data"))
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)

    info = load_export(args.export)
    settings = InferenceSettings.from_export(info)
    pre = Preprocess(settings.pixel_means, settings.target_size, settings.max_size)
    paths = calibration_paths(args.calib, args.calib_images, data_root=args.data_root)
    if args.output.exists():
        shutil.rmtree(args.output)
    shutil.copytree(args.export, args.output,
                    ignore=shutil.ignore_patterns("ort_cache", "engines", "calibration_cache", "precision_report*"))

    rpn = _quantize(onnx.load(str(args.export / RPN_FILE)), list(rpn_feeds(ImageStream(paths, pre))), args, "rpn")
    float_det = onnx.load(str(args.export / DETECTOR_FILE))
    det = Detector(OnnxRuntimeBackend(rpn.SerializeToString(), args.export / DETECTOR_FILE, device="cpu"), settings)
    det_feeds = list(detector_feeds(ImageStream(paths, pre), det))
    detector = _restore_roi_node(_quantize(to_onnxruntime(float_det), det_feeds, args, "detector"), float_det)
    _write(args.output, dict(info.data), {RPN_FILE: rpn, DETECTOR_FILE: detector}, args, len(paths))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
