"""Checkpoint → ``rpn.onnx`` + ``detector.onnx`` + ``export.json``, then a parity check in ONNX Runtime.

Glossary: ``N`` images, ``H × W`` blob size, ``C`` feature channels, ``H' × W'`` feature map, ``A`` anchors
per location, ``R`` RoIs, ``K`` classes including background.

The two graphs (mmdeploy's two-stage split; the ProposalLayer and the per-class NMS stay outside, shared
torch code in :mod:`frcnn_trt.engines.detector`, because py-faster-rcnn's ``rpn_generate`` needs an uncapped
NMS that neither ONNX nor TensorRT can express exactly, docs/REFERENCE.md §14):

- ``rpn.onnx``: ``image [N, 3, H, W]`` float32 → ``features [N, C, H', W']``, ``rpn_cls_prob (N, 2A, H', W')``,
  ``rpn_bbox_pred (N, 4A, H', W')``; dynamic ``batch``, ``height``, ``width``;
- ``detector.onnx``: ``features [N, C, H', W']`` + ``rois [R, 5]`` float32 → ``cls_prob [R, K]``,
  ``bbox_pred [R, 4K]`` (raw deltas); dynamic ``batch``, ``feat_height``, ``feat_width``, ``num_rois``.
  The RoI op is the model's (``model.box_roi_pool``), as ONE node: RoIPool is the custom node
  ``frcnn.RoIPool`` (attributes ``pooled_shape``, ``spatial_scale``, ``plugin_namespace="frcnn"``,
  ``plugin_version="1"``), what TensorRT maps to our plugin and ONNX Runtime runs as ``MaxRoiPool``
  (:func:`frcnn_trt.ops.roi_pool.to_onnxruntime`); RoIAlign is the standard ``RoiAlign`` node
  (:mod:`frcnn_trt.ops.roi_align`), which both runtimes run natively. ``export.json``'s ``roi_op`` section
  is the op's own ``export_spec()``.

Both go through ``torch.onnx.export(..., dynamo=True)`` with the RoI ops' translation tables, from the model in
eval mode (ZF's ×(1 − p) test-time dropout scaling is folded into the graph), and pass ``onnx.checker``'s
full check. ``fp16=True`` exports float16 graphs (see :mod:`frcnn_trt.export.wrappers` for what stays
float32). Every file is written atomically; ``export.json`` last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from frcnn_trt import config
from frcnn_trt.config import Config
from frcnn_trt.data.images import read_image
from frcnn_trt.engines.detector import Detector, InferenceSettings
from frcnn_trt.engines.export_format import DETECTOR_FILE, EXPORT_FILE, RPN_FILE, export_json, load_export
from frcnn_trt.errors import ExportError
from frcnn_trt.export.int8_export import Int8Settings, fp32_layer_summary, fp32_speed_hint, quantize_export
from frcnn_trt.export.parity import ort_compute_precision, parity_report, synthetic_images
from frcnn_trt.export.precision_report import precision_report, print_report
from frcnn_trt.export.wrappers import DetectorPart, RPNPart, prepare_for_export
from frcnn_trt.io import atomic_write_bytes, atomic_write_json, sha256_file
from frcnn_trt.log import console as make_console
from frcnn_trt.model.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.ops.roi_align import onnx_translation_table as roi_align_translation
from frcnn_trt.ops.roi_pool import onnx_translation_table as roi_pool_translation

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_OPSET",
    "ExportResult",
    "export_model",
    "find_default_checkpoint",
    "random_checkpoint",
    "run_export",
    "run_parity",
]

log = logging.getLogger("frcnn_trt.export")

#: torch's dynamo exporter default; ONNX Runtime's MaxRoiPool (the RoIPool stand-in) exists up to opset 21.
DEFAULT_OPSET = 20
MIN_OPSET, MAX_OPSET = 18, 21
DEFAULT_MAX_BATCH = 4
#: smallest blob side in the shape profile (an extreme aspect ratio can scale the short side below 600)
MIN_IMAGE_SIDE = 32
PRECISION_NOTES = {
    "fp16": ("float16 conv body, RPN head and box head; float32 image input, RoI coordinates, RoI op, "
             "softmaxes and outputs (box decoding and NMS run in float32 outside)"),
    "fp32": "float32 throughout",
}
OnArtifact = Callable[[str, Path, float], None]


@dataclass
class ExportResult:
    """What :func:`export_model` / :func:`run_export` produced."""

    directory: Path
    metadata: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    parity: dict[str, Any] | None = None

    @property
    def files(self) -> dict[str, Path]:
        return {name: self.directory / name for name in [*self.metadata["files"], EXPORT_FILE]}

    def next_command(self) -> str:
        return f"frcnn-trt detect IMAGES --export {self.directory}"


# ------------------------------------------------------------------------------------------------ helpers


def find_default_checkpoint(search_dir: str | Path = "output") -> Path:
    """The newest ``*final*.safetensors`` under ``search_dir`` (what training writes last)."""
    root = Path(search_dir)
    found = sorted(root.rglob("*final*.safetensors"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise ExportError(f"no checkpoint given and no '*final*.safetensors' under {root.resolve()}: "
                          "pass the checkpoint path")
    return found[-1]


def random_checkpoint(path: str | Path, net: str = "VGG16", num_classes: int = 21, *, cfg: Config | None = None,
                      seed: int = 0, rpn_spread: float = 1.0, anchor_proposals: bool = False) -> Path:
    """Save a randomly initialised model as a checkpoint (benchmarks and tests; nothing downloaded).

    ``rpn_spread`` ≠ 1 multiplies the RPN score weights and draws a N(0, 1) bias per score channel, so that
    foreground scores spread over (0, 1) instead of all sitting near 0.5 (random-init proposals are
    otherwise near-ties). ``anchor_proposals`` zeroes the RPN box regressor, so proposals are the anchors
    themselves and a realistic number (the full 300 at 600 × 1000) survives NMS — random deltas on random
    features blow most boxes up to the whole image, and NMS then keeps only a few dozen.
    """
    cfg = cfg if cfg is not None else config.override(Config(), MODEL={"NET": net})
    torch.manual_seed(seed)
    model = FasterRCNN.from_config(cfg, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if rpn_spread != 1.0:
            model.rpn.cls_score.weight.mul_(rpn_spread)
            model.rpn.cls_score.bias.normal_(0.0, 1.0, generator=gen)  # type: ignore[union-attr]
        if anchor_proposals:
            model.rpn.bbox_pred.weight.zero_()
            model.rpn.bbox_pred.bias.zero_()  # type: ignore[union-attr]
    names = ["__background__", *[f"class{i}" for i in range(1, num_classes)]]
    info = CheckpointInfo(net=cfg.MODEL.NET, class_names=names, stage="random", iteration=0,
                          config=config.to_dict(cfg))
    return save_checkpoint(path, model, info)


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in value_info.type.tensor_type.shape.dim]


def _signature(proto: Any) -> dict[str, Any]:
    import onnx

    def one(v: Any) -> dict[str, Any]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        return {"name": v.name, "dtype": dtype, "shape": _dims(v)}

    inits = {i.name for i in proto.graph.initializer}
    return {"inputs": [one(v) for v in proto.graph.input if v.name not in inits],
            "outputs": [one(v) for v in proto.graph.output]}


def _translation_table() -> dict[Any, Any]:
    """Both RoI ops' ONNX forms (a graph holds the one its model uses)."""
    return {**roi_pool_translation(), **roi_align_translation()}


def _export_part(module: torch.nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
                 output_names: list[str], dynamic_shapes: dict[str, dict[int, str]], opset: int, what: str) -> Any:
    try:
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes, opset_version=opset, custom_translation_table=_translation_table(),
            verbose=False,
        )
    except Exception as exc:  # torch.export / onnxscript raise many types; name the part that failed
        raise ExportError(f"torch.onnx.export of {what} failed: {type(exc).__name__}: {exc}") from exc
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError(f"torch.onnx.export of {what} returned nothing")
    proto = program.model_proto
    proto.doc_string = f"frcnn-trt {what}"
    _check(proto, what)
    return proto


def _check(proto: Any, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{what}: onnx.checker rejects the exported graph: {exc}") from None


def _rename_output_dims(proto: Any, names: Sequence[str]) -> dict[str, str]:
    """Give the first output's symbolic dims 2, 3 readable names (``feat_height``, ``feat_width``) everywhere
    in the graph; returns ``{new name: the exporter's expression}`` (e.g. ``((height - 1)//16) + 1``)."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    mapping = {dims[i + 2].dim_param: new for i, new in enumerate(names) if dims[i + 2].dim_param}
    for v in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]
    return {new: old for old, new in mapping.items()}


def _check_roi_node(proto: Any, spec: Mapping[str, Any]) -> None:
    """``detector.onnx`` holds exactly one node of the model's RoI op (``spec`` = its ``export_spec()``)."""
    domains = {spec["domain"]} if spec["domain"] else {"", "ai.onnx"}
    found = [n for n in proto.graph.node if n.op_type == spec["op_type"] and n.domain in domains]
    if len(found) != 1:
        name = f"{spec['domain']}.{spec['op_type']}" if spec["domain"] else spec["op_type"]
        raise ExportError(f"detector.onnx should hold exactly one {name} node, found {len(found)}")


def _profiles(model: FasterRCNN, settings: InferenceSettings, max_batch: int) -> dict[str, Any]:
    target, max_size = settings.target_size, settings.max_size
    opt_hw = (target, min(max_size, round(target * 4 / 3)))  # 4:3 landscape, VOC's typical 500 x 375
    lo_hw = (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)
    hi_hw = (max_size, max_size)  # either orientation: the longer side never passes max_size
    c = model.backbone.out_channels
    fs = model.backbone.feature_size
    max_rois = max(2000, settings.rpn_post_nms_top_n * max_batch)
    return {
        RPN_FILE: {"image": {"min": [1, 3, *lo_hw], "opt": [1, 3, *opt_hw], "max": [max_batch, 3, *hi_hw]}},
        DETECTOR_FILE: {
            "features": {"min": [1, c, *fs(*lo_hw)], "opt": [1, c, *fs(*opt_hw)], "max": [max_batch, c, *fs(*hi_hw)]},
            "rois": {"min": [1, 5], "opt": [settings.rpn_post_nms_top_n, 5], "max": [max_rois, 5]},
        },
        "notes": (f"image sides {MIN_IMAGE_SIDE}..{max_size} px cover the scale rule's blobs (short side "
                  f"{target} unless the long side hits {max_size}); RoIs up to max(2000, TEST post-NMS "
                  f"{settings.rpn_post_nms_top_n} × max batch {max_batch})"),
    }


# ------------------------------------------------------------------------------------------------ export steps


def _checked_opset(model: FasterRCNN, class_names: Sequence[str], opset: int | None, max_batch: int) -> int:
    """The request's opset after checking the request (opset range, max batch, class names)."""
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} not supported: use {MIN_OPSET}..{MAX_OPSET} (ONNX Runtime's "
                          f"MaxRoiPool, which runs the RoIPool node, exists up to opset {MAX_OPSET})")
    if max_batch < 1:
        raise ExportError(f"max_batch must be ≥ 1, got {max_batch}")
    if len(class_names) != model.num_classes:
        raise ExportError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    return opset


def _fresh_output_dir(output_dir: str | Path) -> Path:
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"output path {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    # a half-rewritten folder must not pass for a valid export: export.json goes first and comes back last
    (out / EXPORT_FILE).unlink(missing_ok=True)
    return out


def _example_image() -> torch.Tensor:
    """Batch 2 and sizes ≠ 1, so that nothing specialises to a constant."""
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 50


def _export_rpn(net: FasterRCNN, image: torch.Tensor, fp16: bool, opset: int) -> tuple[Any, dict[str, str]]:
    """``rpn.onnx`` and its renamed feature dims (``{feat_height: expression, feat_width: ...}``)."""
    what = "the RPN part (rpn.onnx)"
    proto = _export_part(RPNPart(net, half=fp16).eval(), (image,), ["image"],
                         ["features", "rpn_cls_prob", "rpn_bbox_pred"],
                         {"image": {0: "batch", 2: "height", 3: "width"}}, opset, what)
    feature_dims = _rename_output_dims(proto, ("feat_height", "feat_width"))
    _check(proto, f"{what} after renaming its feature dims")
    return proto, feature_dims


def _export_detector(net: FasterRCNN, features: torch.Tensor, fp16: bool, opset: int) -> Any:
    """``detector.onnx`` with exactly one node of the model's RoI op."""
    rois = torch.tensor([[0, 0, 0, 40, 30], [1, 8, 8, 60, 50], [0, 20, 10, 90, 63]], dtype=torch.float32)
    proto = _export_part(
        DetectorPart(net, half=fp16).eval(), (features, rois), ["features", "rois"], ["cls_prob", "bbox_pred"],
        {"features": {0: "batch", 2: "feat_height", 3: "feat_width"}, "rois": {0: "num_rois"}}, opset,
        "the detector part (detector.onnx)")
    _check_roi_node(proto, net.box_roi_pool.export_spec())
    return proto


def _write_artifact(out: Path, name: str, proto: Any, started: float, seconds: dict[str, float],
                    on_artifact: OnArtifact | None) -> None:
    atomic_write_bytes(out / name, proto.SerializeToString())
    seconds[name] = time.perf_counter() - started
    if on_artifact:
        on_artifact(name, out / name, seconds[name])


def _file_entries(out: Path, protos: Mapping[str, Any], precision: str) -> dict[str, dict[str, Any]]:
    return {name: {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size, "precision": precision,
                   **_signature(proto)} for name, proto in protos.items()}


def export_model(
    model: FasterRCNN,
    *,
    cfg: Config,
    class_names: Sequence[str],
    output_dir: str | Path,
    fp16: bool = False,
    opset: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    source: dict[str, Any] | None = None,
    on_artifact: OnArtifact | None = None,
) -> ExportResult:
    """Export ``model`` (a :class:`FasterRCNN`; left untouched) into ``output_dir`` and write ``export.json``
    (without parity; see :func:`run_parity`). ``on_artifact(name, path, seconds)`` is called per file."""
    opset = _checked_opset(model, class_names, opset, max_batch)
    out = _fresh_output_dir(output_dir)
    settings = InferenceSettings.from_config(cfg, class_names)
    precision = "fp16" if fp16 else "fp32"
    net = prepare_for_export(model, half=fp16)
    image = _example_image()
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    rpn_proto, feature_dims = _export_rpn(net, image, fp16, opset)
    _write_artifact(out, RPN_FILE, rpn_proto, t0, seconds, on_artifact)
    with torch.no_grad():
        features = RPNPart(net, half=fp16).eval()(image)[0]
    t0 = time.perf_counter()
    det_proto = _export_detector(net, features, fp16, opset)
    _write_artifact(out, DETECTOR_FILE, det_proto, t0, seconds, on_artifact)
    del net

    metadata = export_json(
        net=cfg.MODEL.NET, class_names=class_names, settings=settings, roi_op=model.box_roi_pool.export_spec(),
        shape_profiles=_profiles(model, settings, max_batch),
        feature_map={"channels": int(model.backbone.out_channels), "stride": settings.feat_stride, **feature_dims},
        opset=opset, precision=precision, precision_notes=PRECISION_NOTES[precision],
        files=_file_entries(out, {RPN_FILE: rpn_proto, DETECTOR_FILE: det_proto}, precision), source=source)
    atomic_write_json(out / EXPORT_FILE, metadata)
    return ExportResult(out, metadata, seconds)


# ------------------------------------------------------------------------------------------------ parity


def _fp16_compute_note(directory: Path) -> dict[str, Any]:
    """What ONNX Runtime's CPU provider really computed in float16 (``ort_compute``) and what that means."""
    compute = {
        RPN_FILE: ort_compute_precision(directory / RPN_FILE),
        DETECTOR_FILE: ort_compute_precision(directory / DETECTOR_FILE, rewrite=True),
    }
    n16 = sum(c["float16"] for c in compute.values())
    if n16 == 0:
        note = ("FP16 graphs vs the FP32 torch model, run by ONNX Runtime's CPU provider, which has no float16 "
                "Conv/Gemm kernels: it computes those nodes in float32 on float16-rounded weights (0 of "
                f"{sum(c['float32'] for c in compute.values())} heavy nodes ran in float16). These numbers "
                "measure the rounding of weights (and of the float16 feature map between the graphs), NOT "
                "float16 arithmetic; that needs a GPU (CUDA EP or TensorRT) and was not measured here.")
    else:
        note = f"FP16 graphs vs the FP32 torch model; {n16} heavy nodes ran in float16"
    return {"ort_compute": compute, "fp16_note": note}


def run_parity(
    result: ExportResult,
    model: FasterRCNN,
    images: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    iou_thresh: float = 0.9,
) -> dict[str, Any]:
    """ONNX Runtime (CPU) running the export vs the float32 torch ``model``; stored in ``export.json``."""
    torch_det = Detector.from_export(result.directory, "torch", device="cpu", model=model, verify=False)
    ort_det = Detector.from_export(result.directory, "onnxruntime", device="cpu", verify=False)
    report = parity_report(torch_det, ort_det, images, iou_thresh=iou_thresh, names=names)
    report["precision"] = dict(result.metadata["precision"])
    if "fp16" in result.metadata["precision"].values():
        report.update(_fp16_compute_note(result.directory))
    result.parity = report
    result.metadata["parity"] = report
    atomic_write_json(result.directory / EXPORT_FILE, result.metadata)
    load_export(result.directory, verify=False)  # the rewritten export.json still reads back
    return report


# ------------------------------------------------------------------------------------------------ CLI-facing


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _fmt_io(v: dict[str, Any]) -> str:
    return f"{v['name']} [{', '.join(str(d) for d in v['shape'])}] {v['dtype']}"


def _artifact_printer(con: Console, precision: str) -> OnArtifact:
    """One line per written graph (size, time, precision) and its inputs → outputs."""

    def artifact(name: str, path: Path, secs: float) -> None:
        import onnx

        con.print(f"  [green]✓[/] {name:<14} {_fmt_size(path.stat().st_size):>9}  {secs:6.1f} s  ({precision})")
        sig = _signature(onnx.load(str(path), load_external_data=False))
        con.print("      " + ", ".join(_fmt_io(v) for v in sig["inputs"]) + " → "
                  + ", ".join(_fmt_io(v) for v in sig["outputs"]), style="dim", markup=False)

    return artifact


def _parity_images(paths: Sequence[str | Path] | None, count: int) -> tuple[list[np.ndarray], list[str]]:
    """The given images, else ``count`` synthetic ones; with their names."""
    if paths:
        files = [Path(p) for p in paths]
        return [read_image(p) for p in files], [str(p) for p in files]
    images = synthetic_images(count)
    return images, [f"synthetic_{i}" for i in range(len(images))]


def _print_parity(con: Console, report: dict[str, Any], seconds: float) -> None:
    e, d = report["max_abs_error"], report["detections"]
    con.print(f"  parity ({report['images']} image(s), {seconds:.1f} s): {report['candidate']} vs "
              f"{report['reference']}")
    con.print("    max |Δ| " + ", ".join(f"{k} {v:.2e}" for k, v in e.items()))
    con.print(f"    detections: {d['matched']}/{d['reference']} torch detections matched "
              f"({100 * d['matched_fraction']:.1f} %, same class, IoU ≥ {d['iou_thresh']}), "
              f"{d['unmatched_other']} unmatched export detections, max box err {d['max_box_error']:.3g} px, "
              f"max score err {d['max_score_error']:.3g}")
    if "fp16_note" in report:
        con.print(f"    [yellow]fp16:[/] {report['fp16_note']}")


def run_export(
    model_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    *,
    fp16: bool = False,
    opset: int | None = None,
    parity_images: Sequence[str | Path] | None = None,
    num_parity_images: int = 2,
    parity: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    search_dir: str | Path = "output",
    console: Console | None = None,
    int8: Int8Settings | None = None,
    report_precision: bool = True,
) -> ExportResult:
    """Export a checkpoint (default: the newest ``*final*.safetensors`` under ``search_dir``) and check it.

    ``output_dir`` default: ``<checkpoint dir>/<checkpoint stem>_export[_fp16]``. Prints a banner, one line
    per artifact (time, size), the parity summary and the next command; returns an :class:`ExportResult`.
    ``int8``: quantize the graphs (:func:`frcnn_trt.export.int8_export.quantize_export`); ``report_precision``:
    write and print the precision report (:mod:`frcnn_trt.export.precision_report`).
    """
    if int8 is not None and fp16:
        raise ExportError("--int8 and --fp16 exclude each other: an INT8 export keeps its float layers in FP32")
    con = console if console is not None else make_console()
    ckpt = Path(model_path) if model_path is not None else find_default_checkpoint(search_dir)
    ckpt = ckpt.with_suffix(".safetensors")
    model, info = load_checkpoint(ckpt, device="cpu")
    if not isinstance(model, FasterRCNN):  # pragma: no cover - load_checkpoint builds a FasterRCNN
        raise ExportError(f"{ckpt} did not load as a FasterRCNN ({type(model).__name__})")
    precision = "INT8" if int8 is not None else "FP16" if fp16 else "FP32"
    suffix = "" if precision == "FP32" else f"_{precision.lower()}"
    out = Path(output_dir) if output_dir is not None else ckpt.parent / f"{ckpt.stem}_export{suffix}"
    con.print(f"[bold]frcnn-trt export[/] {ckpt} → {out}")
    con.print(f"  {info.net}, {info.num_classes} classes (stage {info.stage}, iter {info.iteration}); "
              f"{precision}, {model.box_roi_pool.export_spec()['type']}, opset {opset or DEFAULT_OPSET}, "
              f"torch {torch.__version__}")
    source = {"checkpoint": str(ckpt.resolve()), "sha256": sha256_file(ckpt), "stage": info.stage,
              "iteration": info.iteration, "net": info.net}
    result = export_model(model, cfg=config.from_dict(info.config), class_names=info.class_names, output_dir=out,
                          fp16=fp16, opset=opset, max_batch=max_batch, source=source,
                          on_artifact=_artifact_printer(con, "FP32, quantized next" if int8 else precision))
    if int8 is not None:
        result.metadata = quantize_export(out, int8)
        for line in fp32_layer_summary(result.metadata):
            con.print(f"  [green]✓[/] int8 {line}", highlight=False)
        hint = fp32_speed_hint(result.metadata)
        if hint:
            con.print(f"    {hint}", highlight=False, markup=False)
    con.print(f"  [green]✓[/] {EXPORT_FILE:<14} {_fmt_size((out / EXPORT_FILE).stat().st_size):>9}")
    if parity:
        images, names = _parity_images(parity_images, num_parity_images)
        t0 = time.perf_counter()
        report = run_parity(result, model, images, names)
        _print_parity(con, report, time.perf_counter() - t0)
    if report_precision:
        images, _ = _parity_images(parity_images, num_parity_images)
        print_report(con, precision_report(out, model, images))
    con.print(f"[bold]next:[/] {result.next_command()}")
    return result
