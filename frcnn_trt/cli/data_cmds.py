"""``frcnn-trt data synth``, ``data inspect`` and ``eval``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from frcnn_trt.cli.app import (
    DataRoot,
    ImdbName,
    app,
    data_app,
    printer,
)

VerifyImages = Annotated[str, typer.Option(
    "--verify-images", help="Image check when the roidb is built: header (every header: format, size vs the "
    "annotation, pixel budget) or full (also decode every image).")]

if TYPE_CHECKING:
    from frcnn_trt.data.imdb import Imdb
    from frcnn_trt.data.inspect import InspectReport


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
    printer().print(f"[green]wrote[/] {s.num_images} images ({s.num_trainval} trainval, {s.num_test} test) "
                    f"to {s.root}: " + ", ".join(f"{k} {v}" for k, v in s.objects_per_class.items())
                    + f"; {s.num_difficult} difficult")
    printer().print(f"imdb names: synth:{s.root}:trainval  synth:{s.root}:test")


@data_app.command("inspect")
def data_inspect(
    imdb: Annotated[str, typer.Argument(help="imdb name (voc_2007_trainval, voc:FOLDER[:split], "
                                        "synth:FOLDER:split, ...)")],
    data_root: DataRoot = Path("data"),
    use_diff: Annotated[bool, typer.Option(help="Keep difficult objects in the roidb.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on the first bad record instead of skipping it.")] = False,
    flipped: Annotated[bool, typer.Option(help="Count flipped copies as training does (TRAIN.USE_FLIPPED).")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
    verify_images: VerifyImages = "header",
) -> None:
    """Images, boxes per class, flipped count, and what was skipped (and why) for an imdb."""
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.data.inspect import inspect_imdb, print_report
    from frcnn_trt.io import atomic_write_json

    db = get_imdb(imdb, data_root, use_diff=use_diff, strict=strict)
    report = inspect_imdb(db)
    _add_roidb_rows(report, db, flipped=flipped, use_diff=use_diff, verify_images=verify_images)
    print_report(report, printer())
    if json_out:
        atomic_write_json(json_out, report.to_dict())


def _add_roidb_rows(report: InspectReport, db: Imdb, *, flipped: bool, use_diff: bool,
                    verify_images: str = "header") -> None:
    """The roidb section of ``data inspect`` (entries, flipped copies, what filter_roidb removed and why) and
    the removed entries as ``skipped:`` lines; a roidb that cannot be built is a row, not the end of the report."""
    from collections import Counter

    from frcnn_trt.data.roidb import build_training_roidb
    from frcnn_trt.data.skipped import skipped_lines
    from frcnn_trt.errors import DatasetError

    try:
        roidb = build_training_roidb(db, use_flipped=flipped, use_diff=use_diff, bbox_reg=False,
                                     verify_images=verify_images)
    except DatasetError as exc:
        report.add_row("roidb", "error", str(exc))
        return
    report.add_row("roidb", "training entries", str(len(roidb.entries)))
    report.add_row("roidb", "flipped copies", str(sum(e.flipped for e in roidb.entries)))
    report.add_row("roidb", "entries filtered", str(len(roidb.removed)))
    for reason, n in Counter(r[2] for r in roidb.removed).most_common():
        report.add_row("roidb", f"  filtered: {reason}", str(n))
    report.skipped = skipped_lines(report.issues) + roidb.skipped


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
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the AP table as JSON here (default: "
                                                  "eval.json in the output folder).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Folder for eval.json, pr_curves.png and "
                                                 "pr_curves.json (default: --json's folder, else the "
                                                 "detections').")] = None,
) -> None:
    """Evaluate a detections file against an imdb: per-class AP table and mAP, written as JSON with the
    per-class precision-recall curves (PNG + JSON; VOC metric)."""
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.errors import ConfigError
    from frcnn_trt.evaluation import evaluate_coco, evaluate_voc, format_ap_table, load_detections
    from frcnn_trt.evaluation.report import detections_folder, write_eval_files

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
    printer().print(format_ap_table(result, title=f"{db.name} · {dets}"))
    folder = out_dir or (json_out.parent if json_out else detections_folder(dets))
    for path in write_eval_files(result, folder, json_out, title=db.name):
        printer().print(f"wrote {path}")


# ------------------------------------------------------------------------------------------------ train
