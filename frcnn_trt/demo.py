"""The built-in demo: synthetic data → pretrain → ``train alt-opt`` (tiny net) → ``export`` → ``detect`` → ``eval``.

Everything runs on a laptop CPU in minutes and nothing is downloaded: the dataset is generated
(:mod:`frcnn_trt.data.synthetic`); the tiny network's body and fc6/fc7 are pretrained on object crops of the
training split (:mod:`frcnn_trt.train.pretrain`: the stand-in for the ImageNet model py-faster-rcnn starts
from); the full four-stage schedule trains from those weights (short stages), its RPN generating the
proposals through the engines layer; the final model is exported to ONNX and run by the fastest available
backend on the test split, and scored with VOC2007's 11-point AP. Re-running resumes: finished steps and
files are reused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frcnn_trt import config as C
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.data.synthetic import make_synthetic_dataset
from frcnn_trt.detect import run_detect
from frcnn_trt.distributed import setup_device
from frcnn_trt.evaluation import evaluate_voc, format_ap_table, load_detections
from frcnn_trt.export.onnx_export import run_export
from frcnn_trt.log import console as make_console
from frcnn_trt.log import get_logger
from frcnn_trt.train.alt_opt import summary_table, train_alt_opt, with_iters
from frcnn_trt.train.pretrain import PretrainSettings, pretrain_backbone

logger = get_logger("demo")


@dataclass
class DemoResult:
    mean_ap: float
    final_model: Path
    export_dir: Path
    detect_dir: Path
    seconds: dict[str, float]


#: pretraining of the demo (ImageNet stand-in), see :mod:`frcnn_trt.train.pretrain`: 800 iterations of 48 crops
#: of 64 px. (48 px crops train faster but the stage-1 Fast R-CNN built on them classified far worse.)
PRETRAIN_ITERS = 800
PRETRAIN_CROPS = 48


def run_demo(workdir: str | Path = "runs/demo", *, backend: str = "auto", num_images: int = 400,
             iters: tuple[int, int, int, int] | None = None, pretrain_iters: int = PRETRAIN_ITERS,
             device: str | None = None, console: Any = None) -> DemoResult:

    con = console or make_console()
    work = Path(workdir)
    data = work / "shapes"
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if not (data / "classes.txt").exists():
        s = make_synthetic_dataset(data, num_images=num_images, seed=0)
        con.print(f"[bold]1/6 data[/] {s.num_images} synthetic images ({s.num_trainval} trainval, {s.num_test} test) "
                  f"in {data}")
    else:
        con.print(f"[bold]1/6 data[/] reusing {data}")
    times["data"] = time.perf_counter() - t0

    cfg = C.load(C.builtin("tiny_alt_opt"))
    if iters is not None:
        cfg = with_iters(cfg, iters)
    if device is not None:
        cfg = C.override(cfg, DEVICE=device)
    train, test = get_imdb(f"synth:{data}:trainval"), get_imdb(f"synth:{data}:test")
    con.print(f"[bold]2/6 pretrain[/] tiny body + fc6/fc7 on object crops of the training images, {pretrain_iters} "
              "iterations (the stand-in for ImageNet weights)")
    t0 = time.perf_counter()
    settings = PretrainSettings(net=cfg.MODEL.NET, iters=pretrain_iters, crops_per_batch=PRETRAIN_CROPS,
                                seed=cfg.RNG_SEED, pixel_means=cfg.PIXEL_MEANS)
    weights = pretrain_backbone(train, work / "pretrain" / "tiny_crops.safetensors", settings,
                                device=setup_device(cfg.DEVICE), num_workers=1)
    times["pretrain"] = time.perf_counter() - t0
    con.print(f"[bold]3/6 train alt-opt[/] net tiny, iterations {list(cfg.ALT_OPT.ITERS)}, rpn_generate on "
              f"backend {backend}")
    t0 = time.perf_counter()
    res = train_alt_opt(cfg, train, work / "alt_opt", weights=weights, backend=backend, resume=True)
    times["train"] = time.perf_counter() - t0
    con.print(summary_table(res))

    con.print("[bold]4/6 export[/]")
    t0 = time.perf_counter()
    export_dir = work / "export"
    run_export(res.final, export_dir, console=con)
    times["export"] = time.perf_counter() - t0

    con.print("[bold]5/6 detect[/] on the test images")
    t0 = time.perf_counter()
    det = run_detect([a.path for a in test.annotations()], export_dir=export_dir, backend=backend,
                     output_dir=work / "detect", console=con, started_at=t0)
    times["detect"] = time.perf_counter() - t0

    con.print("[bold]6/6 eval[/] VOC AP of predictions.json on the test split")
    t0 = time.perf_counter()
    annotations = test.annotations()
    dets = load_detections(det.predictions, test.classes, image_ids=[a.image_id for a in annotations])
    result = evaluate_voc(annotations, dets, test.classes, use_07_metric=True)
    times["eval"] = time.perf_counter() - t0
    con.print(format_ap_table(result, title="synthetic test split (VOC07 11-point AP)"))
    total = sum(times.values())
    con.print(f"[bold green]mAP {result.mean_ap:.3f}[/] in {total:.0f} s "
              f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
    con.print(f"annotated images: {det.output_dir}")
    return DemoResult(result.mean_ap, res.final, export_dir, det.output_dir, times)
