"""``frcnn-trt train end2end | pretrain | alt-opt`` and ``test``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from frcnn_trt import config as C
from frcnn_trt.cli.app import (
    BACKEND_CHOICES,
    SET_HELP,
    WITH_SET,
    CfgFiles,
    DataRoot,
    ImdbName,
    app,
    output_dir,
    printer,
    set_pairs,
    train_app,
    train_config,
)

VerifyImages = Annotated[str | None, typer.Option(
    "--verify-images", help="Image check when the roidb is built: header (every header: format, size vs the "
    "annotation, pixel budget; the default) or full (also decode every image). Sets TRAIN.VERIFY_IMAGES.")]


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
    verify_images: VerifyImages = None,
) -> None:
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.train.end2end import train_end2end

    cfg = train_config(net, "end2end", cfg_files, ctx, **({"SOLVER": {"MAX_ITERS": iters}} if iters else {}),
                       **({"TRAIN": {"VERIFY_IMAGES": verify_images}} if verify_images else {}))
    db = get_imdb(imdb, data_root, use_diff=cfg.TRAIN.USE_DIFF)
    run_dir = output_dir(output, cfg, db.name)
    C.write_resolved(cfg, run_dir)
    path = train_end2end(cfg, db, run_dir, weights=weights, resume=resume, device=device)
    printer().print(f"[green]final model[/] {path}")
    printer().print(f"next: frcnn-trt test --model {path} --imdb <test imdb>   or   frcnn-trt export {path}")


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
    printer().print(f"[green]pretrained weights[/] {path}")
    printer().print(f"next: frcnn-trt train alt-opt --net {settings.net} --imdb {imdb} --weights {path}")


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
                              "console": printer()}
    if export is not None:
        if set_pairs(ctx):
            raise ConfigError("--set overrides a checkpoint's config; an export's test settings are in its "
                              "export.json")
        res, name = run_test_export(export, db, output, **common), export.name
    elif model is not None:
        res, name = run_test_checkpoint(model, db, output, overrides=set_pairs(ctx), **common), model.name
    if res.result is not None:
        printer().print(format_ap_table(res.result, title=f"{name} on {db.name}"))
    printer().print(f"detections in {res.output_dir} ({res.seconds_per_image * 1000:.1f} ms/image)")


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
    verify_images: VerifyImages = None,
) -> None:
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.train.alt_opt import parse_iters, summary_table, train_alt_opt, with_iters

    cfg = train_config(net, "alt_opt", cfg_files, ctx,
                       **({"TRAIN": {"VERIFY_IMAGES": verify_images}} if verify_images else {}))
    if iters:
        cfg = with_iters(cfg, parse_iters(iters))
    db = get_imdb(imdb, data_root, use_diff=cfg.TRAIN.USE_DIFF)
    run_dir = output_dir(output, cfg, db.name)
    res = train_alt_opt(cfg, db, run_dir, weights=weights, backend=backend, resume=resume, device=device)
    printer().print(summary_table(res))
    printer().print(f"[green]final model[/] {res.final}")
    printer().print(f"next: frcnn-trt export {res.final}")


