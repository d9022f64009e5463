"""The ``frcnn-trt`` command line (typer).

Each command is a thin layer over the Python API: it parses options, calls one function and prints.
The project's own errors (:class:`frcnn_trt.errors.FrcnnError`) become one red line and exit code 1;
``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from frcnn_trt import config as C
from frcnn_trt.errors import FrcnnError
from frcnn_trt.log import console, setup_logging

#: ``--backend`` choices in help texts (the backends' own list, fastest first)
#: ``--backend`` help. The names come from the backend specs (``frcnn_trt.engines.backends``); importing them here
#: would import torch and every runtime for ``--help``, so the help points to ``doctor``, which lists them, and an
#: unknown name is refused with the list when the command runs.
BACKEND_CHOICES = "auto (the fastest that can run here) or a backend name (`frcnn-trt doctor` lists them)"

_state: dict[str, Any] = {"verbose": False}


class _ErrorsAsLines(TyperGroup):
    """Turn FrcnnError into one red line and exit code 1 (or a traceback with ``--verbose``)."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except FrcnnError as exc:
            if _state["verbose"]:
                raise
            console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_ErrorsAsLines,
    help="py-faster-rcnn in PyTorch: train (alt-opt / end2end), export to ONNX, run with TensorRT / ONNX "
    "Runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Datasets: make the synthetic set, inspect an imdb.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")] = False,
) -> None:
    _state["verbose"] = verbose
    setup_logging(verbose)


# Options shared by several commands.
DataRoot = Annotated[Path, typer.Option("--data-root", help="Folder holding VOCdevkit<year>/ (py-faster-rcnn's "
                                        "data/).")]
ImdbName = Annotated[str, typer.Option(
    "--imdb", help="voc_2007_trainval, a+b, voc:FOLDER[:split], coco:JSON[:IMAGES], synth:FOLDER[:split]")]
CfgFiles = Annotated[list[Path] | None, typer.Option("--cfg", help="YAML config file(s), applied in order.")]
WITH_SET = {"allow_extra_args": True, "ignore_unknown_options": True}
SET_HELP = (" Trailing `--set KEY VALUE ...` overrides config keys (py-faster-rcnn's form), e.g. "
            "--set TRAIN.SCALES [480].")


def _set_pairs(ctx: typer.Context) -> list[str]:
    """py-faster-rcnn's ``--set KEY VALUE ...`` (argparse REMAINDER): everything after ``--set``."""
    args = list(ctx.args)
    if not args:
        return []
    if args[0] != "--set":
        raise typer.BadParameter(f"unexpected arguments: {' '.join(args)} (config overrides go after --set)")
    return args[1:]


def _config(cfg_files: list[Path] | None, ctx: typer.Context, **sections: Any) -> Any:

    cfg = C.resolve(cfg_files or [], [])
    if sections:
        cfg = C.override(cfg, **sections)
    return C.from_list(_set_pairs(ctx), cfg)


def main() -> None:
    app()


def _out() -> Any:
    from rich.console import Console

    from frcnn_trt.distributed import is_main_process

    return console() if is_main_process() else Console(quiet=True)  # under torchrun only rank 0 prints


# ------------------------------------------------------------------------------------------------ data


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Output folder (VOC layout: JPEGImages, Annotations, ImageSets).")],
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images in all (trainval + test).")] = 400,
    width: Annotated[int, typer.Option(help="Typical image width.")] = 320,
    height: Annotated[int, typer.Option(help="Typical image height.")] = 240,
    classes: Annotated[str, typer.Option(help="Comma-separated shape classes.")] = "circle,square,triangle,star,cross",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    test_fraction: Annotated[float, typer.Option(help="Fraction of images in the test split.")] = 0.25,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier synthetic dataset in OUT.")] = False,
) -> None:
    """Make the synthetic shapes dataset (VOC format) used by the demo and the tests."""
    from frcnn_trt.data.synthetic import make_synthetic_dataset

    s = make_synthetic_dataset(out, num_images=num_images, image_size=(width, height),
                               classes=[c.strip() for c in classes.split(",") if c.strip()], seed=seed,
                               test_fraction=test_fraction, overwrite=overwrite)
    _out().print(f"[green]wrote[/] {s.num_images} images ({s.num_trainval} trainval, {s.num_test} test) to {s.root}: "
                 + ", ".join(f"{k} {v}" for k, v in s.objects_per_class.items())
                 + f"; {s.num_difficult} difficult")
    _out().print(f"imdb names: synth:{s.root}:trainval  synth:{s.root}:test")


@data_app.command("inspect")
def data_inspect(
    imdb: Annotated[str, typer.Argument(help="imdb name (voc_2007_trainval, voc:FOLDER[:split], "
                                        "synth:FOLDER:split, ...)")],
    data_root: DataRoot = Path("data"),
    use_diff: Annotated[bool, typer.Option(help="Keep difficult objects in the roidb.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on the first bad record instead of skipping it.")] = False,
    flipped: Annotated[bool, typer.Option(help="Count flipped copies as training does (TRAIN.USE_FLIPPED).")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
) -> None:
    """Images, boxes per class, flipped count, and entries filtered (and why) for an imdb."""
    from collections import Counter

    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.data.inspect import inspect_imdb, print_report
    from frcnn_trt.data.roidb import build_training_roidb
    from frcnn_trt.io import atomic_write_json

    db = get_imdb(imdb, data_root, use_diff=use_diff, strict=strict)
    report = inspect_imdb(db)
    roidb = build_training_roidb(db, use_flipped=flipped, use_diff=use_diff, bbox_reg=False)
    report.add_row("roidb", "training entries", str(len(roidb.entries)))
    report.add_row("roidb", "flipped copies", str(sum(e.flipped for e in roidb.entries)))
    report.add_row("roidb", "entries filtered", str(len(roidb.removed)))
    for reason, n in Counter(r[2] for r in roidb.removed).most_common():
        report.add_row("roidb", f"  filtered: {reason}", str(n))
    print_report(report, _out())
    if json_out:
        atomic_write_json(json_out, report.to_dict())


# ------------------------------------------------------------------------------------------------ eval


@app.command("eval")
def eval_cmd(
    imdb: ImdbName,
    dets: Annotated[Path, typer.Option("--dets", help="Detections: per-class results files (dir/glob), "
                                       "COCO results JSON, or predictions.json.")],
    data_root: DataRoot = Path("data"),
    metric: Annotated[str, typer.Option(help="voc (py-faster-rcnn's voc_eval) or coco.")] = "voc",
    use_07_metric: Annotated[bool | None, typer.Option(
        "--use-07-metric/--no-use-07-metric", help="11-point AP (default: VOC year < 2010).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")] = None,
) -> None:
    """Evaluate a detections file against an imdb: per-class AP table and mAP."""
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.errors import ConfigError
    from frcnn_trt.evaluation import evaluate_coco, evaluate_voc, format_ap_table, load_detections
    from frcnn_trt.io import atomic_write_json

    db = get_imdb(imdb, data_root)
    annotations = db.annotations()
    detections = load_detections(dets, db.classes, image_ids=[a.image_id for a in annotations])
    if metric == "voc":
        use07 = db.use_07_metric if use_07_metric is None else use_07_metric
        result = evaluate_voc(annotations, detections, db.classes, use_07_metric=use07)
    elif metric == "coco":
        result = evaluate_coco(annotations, detections, db.classes)
    else:
        raise ConfigError(f"--metric must be voc or coco, got {metric!r}")
    _out().print(format_ap_table(result, title=f"{db.name} · {dets}"))
    if json_out:
        atomic_write_json(json_out, result.to_json())
        _out().print(f"wrote {json_out}")


# ------------------------------------------------------------------------------------------------ train


train_app = typer.Typer(help="Train: end2end (approximate joint) or alt-opt (four stages).", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train_config(net: str, mode: str, cfg_files: list[Path] | None, ctx: typer.Context, **sections: Any) -> Any:

    files = list(cfg_files) if cfg_files else [C.default_for(net, mode)]
    cfg = C.override(C.resolve(files), MODEL={"NET": net}, **sections)
    return C.from_list(_set_pairs(ctx), cfg)


def _output_dir(output: Path | None, cfg: C.Config, imdb_name: str) -> Path:
    """py-faster-rcnn's ``output/<EXP_DIR>/<imdb name>/`` unless given."""
    return output or Path("output") / cfg.EXP_DIR / imdb_name.replace("/", "_").replace(":", "_")


@train_app.command("end2end", context_settings=WITH_SET,
                   help="Approximate joint training (tools/train_net.py)." + SET_HELP)
def train_end2end_cmd(
    ctx: typer.Context,
    imdb: ImdbName,
    net: Annotated[str, typer.Option(help="VGG16, ZF, VGG_CNN_M_1024, tiny, resnet50_c4.")] = "VGG16",
    weights: Annotated[Path | None, typer.Option(help="ImageNet weights (torchvision .pth or safetensors).")] = None,
    iters: Annotated[int | None, typer.Option(help="Iterations (SOLVER.MAX_ITERS; py-faster-rcnn: 70000).")] = None,
    cfg_files: CfgFiles = None,
    output: Annotated[Path | None, typer.Option(help="Output folder (default output/<EXP_DIR>/<imdb>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest snapshot in the output folder.")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 (default: DEVICE of the config).")] = None,
    data_root: DataRoot = Path("data"),
) -> None:
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.train.end2end import train_end2end

    cfg = _train_config(net, "end2end", cfg_files, ctx, **({"SOLVER": {"MAX_ITERS": iters}} if iters else {}))
    db = get_imdb(imdb, data_root, use_diff=cfg.TRAIN.USE_DIFF)
    out = _output_dir(output, cfg, db.name)
    C.write_resolved(cfg, out)
    path = train_end2end(cfg, db, out, weights=weights, resume=resume, device=device)
    _out().print(f"[green]final model[/] {path}")
    _out().print(f"next: frcnn-trt test --model {path} --imdb <test imdb>   or   frcnn-trt export {path}")


@train_app.command("pretrain", help="Classification pretraining of a backbone (body + fc6/fc7) on the object crops "
                   "of a training imdb: a stand-in for ImageNet weights where there are none (the tiny net). The "
                   "file it writes is what --weights of `train end2end` / `train alt-opt` takes.")
def train_pretrain_cmd(
    imdb: ImdbName,
    output: Annotated[Path, typer.Option(help="The weights file to write (.safetensors, JSON sidecar beside it).")],
    net: Annotated[str, typer.Option(help="tiny, VGG16, ZF, VGG_CNN_M_1024, resnet50_c4.")] = "tiny",
    iters: Annotated[int, typer.Option(help="Iterations.")] = 600,
    crops: Annotated[int, typer.Option(help="Crops per iteration.")] = 64,
    crop_size: Annotated[int, typer.Option(help="Crop side in pixels.")] = 64,
    lr: Annotated[float, typer.Option(help="Base learning rate (cosine decay to 0).")] = 0.02,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 3,
    workers: Annotated[int, typer.Option(help="Data loader processes.")] = 1,
    force: Annotated[bool, typer.Option(help="Retrain even if OUTPUT was made with the same settings.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1.")] = "auto",
    data_root: DataRoot = Path("data"),
) -> None:
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.distributed import setup_device
    from frcnn_trt.model.backbones import canonical_network_name
    from frcnn_trt.train.pretrain import PretrainSettings, pretrain_backbone

    settings = PretrainSettings(net=canonical_network_name(net), iters=iters, crops_per_batch=crops,
                                crop=crop_size, base_lr=lr, seed=seed)
    path = pretrain_backbone(get_imdb(imdb, data_root), output, settings, device=setup_device(device),
                             num_workers=workers, force=force)
    _out().print(f"[green]pretrained weights[/] {path}")
    _out().print(f"next: frcnn-trt train alt-opt --net {settings.net} --imdb {imdb} --weights {path}")


# ------------------------------------------------------------------------------------------------ test


@app.command("test", context_settings=WITH_SET, help="py-faster-rcnn's test_net: detections and the per-class AP "
             "table for an imdb, from a checkpoint (eager torch) or from an export on any backend (the same "
             "measurement)." + SET_HELP)
def test_cmd(
    ctx: typer.Context,
    imdb: ImdbName,
    model: Annotated[Path | None, typer.Option("--model", help="Checkpoint (.safetensors with its .json sidecar), "
                                               "run by eager torch.")] = None,
    export: Annotated[Path | None, typer.Option("--export", help="Export folder (frcnn-trt export), run by "
                                                "--backend.")] = None,
    backend: Annotated[str, typer.Option(help=f"Backend: {BACKEND_CHOICES} (a checkpoint runs on torch).")] = "auto",
    output: Annotated[Path | None, typer.Option(help="Folder for detections (default: next to the model or "
                                                "export).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 1,
    max_images: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    data_root: DataRoot = Path("data"),
) -> None:
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.distributed import setup_device
    from frcnn_trt.errors import ConfigError
    from frcnn_trt.evaluation import format_ap_table
    from frcnn_trt.inference import run_test_checkpoint, run_test_export

    if (model is None) == (export is None):
        raise ConfigError("give exactly one of --model CKPT (a checkpoint) or --export DIR (an export folder)")
    dev = str(setup_device(device))
    db = get_imdb(imdb, data_root)
    common: dict[str, Any] = {"backend": backend, "device": dev, "batch_size": batch_size, "max_images": max_images,
                              "console": _out()}
    if export is not None:
        if _set_pairs(ctx):
            raise ConfigError("--set overrides a checkpoint's config; an export's test settings are in its "
                              "export.json")
        res, name = run_test_export(export, db, output, **common), export.name
    elif model is not None:
        res, name = run_test_checkpoint(model, db, output, overrides=_set_pairs(ctx), **common), model.name
    if res.result is not None:
        _out().print(format_ap_table(res.result, title=f"{name} on {db.name}"))
    _out().print(f"detections in {res.output_dir} ({res.seconds_per_image * 1000:.1f} ms/image)")


@train_app.command("alt-opt", context_settings=WITH_SET,
                   help="The four-stage alternating optimisation (tools/train_faster_rcnn_alt_opt.py): RPN, "
                   "rpn_generate, Fast R-CNN, twice. rpn_generate runs on the fastest backend." + SET_HELP)
def train_alt_opt_cmd(
    ctx: typer.Context,
    imdb: ImdbName,
    net: Annotated[str, typer.Option(help="VGG16, ZF, VGG_CNN_M_1024, tiny, resnet50_c4.")] = "VGG16",
    weights: Annotated[Path | None, typer.Option(help="ImageNet weights (torchvision .pth or safetensors).")] = None,
    iters: Annotated[str | None, typer.Option(help="a,b,c,d iterations of the four stages "
                                              "(py-faster-rcnn: 80000,40000,80000,40000).")] = None,
    cfg_files: CfgFiles = None,
    backend: Annotated[str, typer.Option(help=f"rpn_generate backend: {BACKEND_CHOICES}.")] = "auto",
    output: Annotated[Path | None, typer.Option(help="Output folder (default output/<EXP_DIR>/<imdb>).")] = None,
    resume: Annotated[bool, typer.Option(help="Skip finished stages, continue the one in progress.")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 (default: DEVICE of the config).")] = None,
    data_root: DataRoot = Path("data"),
) -> None:
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.train.alt_opt import parse_iters, summary_table, train_alt_opt, with_iters

    cfg = _train_config(net, "alt_opt", cfg_files, ctx)
    if iters:
        cfg = with_iters(cfg, parse_iters(iters))
    db = get_imdb(imdb, data_root, use_diff=cfg.TRAIN.USE_DIFF)
    out = _output_dir(output, cfg, db.name)
    res = train_alt_opt(cfg, db, out, weights=weights, backend=backend, resume=resume, device=device)
    _out().print(summary_table(res))
    _out().print(f"[green]final model[/] {res.final}")
    _out().print(f"next: frcnn-trt export {res.final}")


# ------------------------------------------------------------------------------------------------ deploy


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
) -> None:
    """rpn.onnx + detector.onnx (custom frcnn::RoIPool node) + export.json, parity report, TensorRT engines."""
    import json

    from frcnn_trt.engines.tensorrt import BuildSettings, build_export_engines
    from frcnn_trt.export.onnx_export import run_export
    from frcnn_trt.io import atomic_write_json

    res = run_export(model, output, fp16=fp16, opset=opset, parity_images=parity_images,
                     num_parity_images=parity_count, parity=parity, max_batch=max_batch, console=_out())
    if not engines:
        return
    report = build_export_engines(res.directory, BuildSettings(workspace_mib=workspace_mib), cache_dir=engine_cache,
                                  force=force_engines)
    for line in report.lines():
        _out().print(("[green]" if report.ok else "[yellow]") + "engines[/] " + line)
    meta_path = Path(res.directory) / "export.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["engines"] = report.to_dict()
    atomic_write_json(meta_path, meta)


import_app = typer.Typer(help="Import models trained elsewhere as frcnn-trt checkpoints.", no_args_is_help=True)
app.add_typer(import_app, name="import")


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
        _out().print(line, markup=False, highlight=False)


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

        raise typer.Exit(exit_code(run_selftest(device, as_json=json_out, console=_out())))
    run_doctor(as_json=json_out, console=_out())


@app.command("detect")
def detect_cmd(
    source: Annotated[str, typer.Argument(help="A folder, an image file, or a glob ('imgs/**/*.jpg').")],
    export: Annotated[Path | None, typer.Option("--export", help="Export folder (frcnn-trt export).")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="A checkpoint, run eagerly by torch.")] = None,
    backend: Annotated[str, typer.Option(help=f"{BACKEND_CHOICES}.")] = "auto",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1.")] = None,
    conf: Annotated[float | None, typer.Option(help="Score threshold (default 0.05, as test_net).")] = None,
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
               nms=nms, max_dets=max_dets, output_dir=output, save_images=save_images, coco_json=coco_json,
               batch_size=batch_size, warmup=warmup, console=_out())


@app.command("benchmark")
def benchmark_cmd(
    model: Annotated[Path | None, typer.Argument(help="Checkpoint to time.")] = None,
    export: Annotated[Path | None, typer.Option("--export", help="Export folder to time.")] = None,
    net: Annotated[str | None, typer.Option(help="Time a random-weight network instead (e.g. VGG16).")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes incl. background for --net.")] = 21,
    backend: Annotated[list[str] | None, typer.Option("--backend", help="Backend names, as `frcnn-trt doctor` lists "
                                                      "them (default: all available).")] = None,
    size: Annotated[tuple[int, int], typer.Option(help="Image height and width.")] = (600, 1000),
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Timed images per backend.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up images.")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch and ONNX Runtime.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda.")] = None,
    fp16: Annotated[bool, typer.Option(help="Time an FP16 export.")] = False,
    ort_opt: Annotated[str, typer.Option(help="ONNX Runtime graph optimisation: all, extended, basic, "
                                         "disable.")] = "all",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
) -> None:
    """Time the same model on every available backend side by side (ms per phase, images/s, vs torch)."""
    from frcnn_trt.benchmark import run_benchmark

    run_benchmark(model, export_dir=export, net=net, num_classes=num_classes, backends=backend, image_size=size,
                  num_images=num_images, warmup=warmup, threads=threads, device=device, fp16=fp16,
                  ort_graph_optimization=ort_opt, json_out=json_out, console=_out())


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
             device=device, console=_out())
