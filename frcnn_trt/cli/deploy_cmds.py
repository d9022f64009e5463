"""``frcnn-trt export``, ``import caffe``, ``doctor``, ``detect``, ``benchmark`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frcnn_trt.cli.app import (
    BACKEND_CHOICES,
    app,
    import_app,
    printer,
)


@app.command("export")
def export_cmd(
    model: Annotated[Path | None, typer.Argument(help="Checkpoint (default: the newest *final* model under "
                                                 "output/).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Export folder (default: next to the "
                                                "checkpoint).")] = None,
    fp16: Annotated[bool, typer.Option(help="FP16 graphs (decoding, softmax and NMS stay FP32).")] = False,
    opset: Annotated[int | None, typer.Option(help="ONNX opset, 18-21 (default 20).")] = None,
    parity_images: Annotated[list[Path] | None, typer.Option(help="Images for the parity check (default: "
                                                             "synthetic).")] = None,
    parity_count: Annotated[int, typer.Option(help="Synthetic images for the parity check.")] = 2,
    parity: Annotated[bool, typer.Option(help="Run the ONNX Runtime vs torch parity check.")] = True,
    max_batch: Annotated[int, typer.Option(help="Largest batch in the shape profiles.")] = 4,
    engines: Annotated[bool, typer.Option(help="Build TensorRT engines (when TensorRT and a GPU are here).")] = True,
    force_engines: Annotated[bool, typer.Option(help="Rebuild engines even when cached.")] = False,
    workspace_mib: Annotated[int, typer.Option(help="TensorRT builder workspace limit (MiB).")] = 4096,
    engine_cache: Annotated[Path | None, typer.Option(help="Engine cache folder (default <export>/engines).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="QDQ INT8 graphs calibrated on --calib images.")] = False,
    calib: Annotated[str | None, typer.Option(help="--int8 calibration images: an imdb name (synth:DIR:trainval, "
                                              "voc_2007_trainval), an image folder or a glob.")] = None,
    calib_images: Annotated[int, typer.Option(help="Calibration images used (the first N).")] = 32,
    calib_method: Annotated[str, typer.Option(help="minmax, entropy or percentile.")] = "minmax",
    int8_target: Annotated[str, typer.Option("--int8-target", help="cpu (ONNX Runtime on a CPU: UINT8 activations, "
                                             "fast integer kernels) or tensorrt (symmetric INT8, what TensorRT "
                                             "builds).")] = "cpu",
    int8_max_fp32: Annotated[int, typer.Option("--int8-max-fp32", help="Most layers per graph the sensitivity "
                                               "rule may keep FP32 (0: every Conv/Gemm INT8).")] = 4,
    val: Annotated[str | None, typer.Option(help="An imdb: mAP and ms/image of FP32 torch and of the export, "
                                            "side by side in the precision report.")] = None,
    data_root: Annotated[Path, typer.Option(help="Folder holding VOCdevkit<year>/ (for imdb names).")] = Path("data"),
) -> None:
    """rpn.onnx + detector.onnx (custom frcnn::RoIPool node) + export.json, parity and precision reports,
    TensorRT engines; --int8 --calib SOURCE quantizes the graphs."""
    import json

    from frcnn_trt.engines.tensorrt import BuildSettings, build_export_engines
    from frcnn_trt.errors import ExportError
    from frcnn_trt.export.int8_export import Int8Settings
    from frcnn_trt.export.onnx_export import run_export
    from frcnn_trt.io import atomic_write_json

    if int8 and fp16:
        raise ExportError("--int8 and --fp16 exclude each other: an INT8 export keeps its float layers in FP32")
    if int8 != (calib is not None):
        raise ExportError("--int8 needs --calib SOURCE (imdb, folder or glob)" if int8 else "--calib goes with --int8")
    q = (Int8Settings(calib, num_images=calib_images, method=calib_method, data_root=data_root, target=int8_target,
                      max_fp32_layers=int8_max_fp32) if calib else None)
    res = run_export(model, output, fp16=fp16, opset=opset, parity_images=parity_images,
                     num_parity_images=parity_count, parity=parity, max_batch=max_batch, console=printer(), int8=q)
    if val is not None:
        from frcnn_trt.data.factory import get_imdb
        from frcnn_trt.export.precision_report import print_report
        from frcnn_trt.inference import validate_export_precisions

        print_report(printer(), validate_export_precisions(res.directory, get_imdb(val, data_root), printer()))
    if not engines:
        return
    report = build_export_engines(res.directory, BuildSettings(workspace_mib=workspace_mib), cache_dir=engine_cache,
                                  force=force_engines)
    for line in report.lines():
        printer().print(("[green]" if report.ok else "[yellow]") + "engines[/] " + line)
    meta_path = Path(res.directory) / "export.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["engines"] = report.to_dict()
    atomic_write_json(meta_path, meta)


@import_app.command("caffe")
def import_caffe_cmd(
    model: Annotated[Path, typer.Argument(help="py-faster-rcnn's trained .caffemodel (end2end or alt-opt).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.safetensors + .json).")],
    net: Annotated[str | None, typer.Option(help="VGG16, ZF or VGG_CNN_M_1024 (default: from the file).")] = None,
    classes: Annotated[str | None, typer.Option(help="Class names without background: a,b,c or a file with one "
                                                "per line (default: VOC's 20 for a 21-class model).")] = None,
) -> None:
    """A py-faster-rcnn .caffemodel → a checkpoint that test, export and detect take."""
    from frcnn_trt.model.caffe_import import import_caffemodel

    for line in import_caffemodel(model, output, net=net, classes=classes).lines():
        printer().print(line, markup=False, highlight=False)


@app.command("doctor")
def doctor_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    selftest: Annotated[bool, typer.Option("--selftest", help="Prove each layer end to end on a tiny model made "
                                           "on the fly (exit 1 when a check fails).")] = False,
    device: Annotated[str | None, typer.Option(help="--selftest's device: auto, cpu, cuda, cuda:1.")] = None,
) -> None:
    """What this machine can run: torch/CUDA, ONNX Runtime providers, TensorRT, GPU, plugin status."""
    from frcnn_trt.doctor import run_doctor

    if device is not None and not selftest:
        raise typer.BadParameter("--device goes with --selftest (plain doctor reports every device)")
    if selftest:
        from frcnn_trt.selftest import exit_code, run_selftest

        raise typer.Exit(exit_code(run_selftest(device, as_json=json_out, console=printer())))
    run_doctor(as_json=json_out, console=printer())


@app.command("detect")
def detect_cmd(
    source: Annotated[str, typer.Argument(help="A folder, an image file, or a glob ('imgs/**/*.jpg').")],
    export: Annotated[Path | None, typer.Option("--export", help="Export folder (frcnn-trt export).")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="A checkpoint, run eagerly by torch.")] = None,
    backend: Annotated[str, typer.Option(help=f"{BACKEND_CHOICES}.")] = "auto",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1.")] = None,
    conf: Annotated[float | None, typer.Option(help="Score threshold of the saved detections (default 0.05, as "
                                               "test_net).")] = None,
    show_conf: Annotated[float, typer.Option("--show-conf", help="Score threshold of the boxes drawn on the "
                                             "annotated images.")] = 0.5,
    nms: Annotated[float | None, typer.Option(help="Per-class NMS IoU (default 0.3).")] = None,
    max_dets: Annotated[int | None, typer.Option(help="Detections per image (default 100).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Run folder (default runs/detect/expN).")] = None,
    save_images: Annotated[bool, typer.Option(help="Write annotated images.")] = True,
    coco_json: Annotated[Path | None, typer.Option(help="Also write COCO results JSON here.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 1,
    warmup: Annotated[int, typer.Option(help="Leading batches left out of the speed report.")] = 1,
) -> None:
    """Detect objects in images: annotated images, predictions.json, speed per phase."""
    from frcnn_trt.detect import run_detect
    from frcnn_trt.errors import ConfigError

    if (export is None) == (weights is None):
        raise ConfigError("give exactly one of --export DIR (an export folder) or --weights CKPT (a checkpoint)")
    run_detect(source, export_dir=export, checkpoint=weights, backend=backend, device=device, conf_thresh=conf,
               nms=nms, max_dets=max_dets, output_dir=output, save_images=save_images, show_conf=show_conf,
               coco_json=coco_json,
               batch_size=batch_size, warmup=warmup, console=printer())


@app.command("benchmark")
def benchmark_cmd(
    model: Annotated[Path | None, typer.Argument(help="Checkpoint to time.")] = None,
    export: Annotated[list[Path] | None, typer.Option("--export", help="Export folder to time; repeat it to time "
                                                      "FP32 / FP16 / INT8 exports side by side.")] = None,
    net: Annotated[str | None, typer.Option(help="Also time a random-weight network (e.g. VGG16).")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes incl. background for --net.")] = 21,
    backend: Annotated[list[str] | None, typer.Option("--backend", help="Backend names, as `frcnn-trt doctor` lists "
                                                      "them (default: all available).")] = None,
    size: Annotated[tuple[int, int], typer.Option(help="Image height and width.")] = (600, 1000),
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Timed images per contender (interleaved: "
                                            "each image on every backend/export in turn).")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up images.")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch and ONNX Runtime.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda.")] = None,
    fp16: Annotated[bool, typer.Option(help="Time an FP16 export.")] = False,
    ort_opt: Annotated[str, typer.Option(help="ONNX Runtime graph optimisation: all, extended, basic, "
                                         "disable.")] = "all",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
) -> None:
    """Time exports and a model on every available backend, interleaved image by image (median ms per phase with
    min–max, images/s, speed-up over torch FP32)."""
    from frcnn_trt.benchmark import run_benchmark

    run_benchmark(model, export_dir=export, net=net, num_classes=num_classes, backends=backend, image_size=size,
                  num_images=num_images, warmup=warmup, threads=threads, device=device, fp16=fp16,
                  ort_graph_optimization=ort_opt, json_out=json_out, console=printer())


@app.command("demo")
def demo_cmd(
    workdir: Annotated[Path, typer.Option(help="Where the dataset, models, export and detections go.")] = Path(
        "runs/demo"),
    backend: Annotated[str, typer.Option(help=f"Backend for rpn_generate and detect: {BACKEND_CHOICES}.")] = "auto",
    iters: Annotated[str | None, typer.Option(help="a,b,c,d alt-opt iterations (default: configs/"
                                              "tiny_alt_opt.yml).")] = None,
    pretrain_iters: Annotated[int, typer.Option(help="Iterations of the crop pretraining (ImageNet stand-in).")] = 800,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda.")] = None,
) -> None:
    """The main job on built-in data: synthetic set → pretrain → train alt-opt → export → detect → eval."""
    from frcnn_trt.demo import run_demo
    from frcnn_trt.train.alt_opt import parse_iters

    run_demo(workdir, backend=backend, iters=parse_iters(iters) if iters else None, pretrain_iters=pretrain_iters,
             device=device, console=printer())
