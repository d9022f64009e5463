"""py-faster-rcnn's ``im_detect`` and ``test_net`` (docs/REFERENCE.md §11).

``im_detect(model, image)`` returns per-class scores ``[R, K]`` and boxes ``[R, 4K]`` in original-image
pixels, exactly what py-faster-rcnn's ``fast_rcnn.test.im_detect`` returns. ``test_net`` runs an eager model
over an imdb with the test rules (scores > 0.05, per-class NMS 0.3, at most 100 detections per image),
writes the detections in the formats ``frcnn-trt eval`` reads, and evaluates them (the AP table as JSON and
the per-class precision–recall curves next to the detections); :func:`run_test` does the
same with any :class:`~frcnn_trt.engines.detector.Detector` (an export on ONNX Runtime or TensorRT is
measured exactly as eager torch is). Both are thin callers of the runner
(:class:`~frcnn_trt.engines.runner.Runner`: batches, torchrun shards, gathering).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn_trt import distributed
from frcnn_trt.config import Config, from_list, write_resolved
from frcnn_trt.data.blob import preprocess_images
from frcnn_trt.data.images import read_image
from frcnn_trt.data.imdb import ImageAnnotation, Imdb
from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.engines.precision import export_precision
from frcnn_trt.engines.runner import Runner, RunResult, rank_zero_first
from frcnn_trt.errors import BackendError, CheckpointError, DatasetError, FrcnnError, ImageError
from frcnn_trt.evaluation import (
    Detections,
    EvalResult,
    PredictionsWriter,
    evaluate_voc,
    prediction_record,
    write_voc_results,
)
from frcnn_trt.evaluation.report import write_eval_files
from frcnn_trt.export.precision_report import add_validation
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN


def _model_cfg(model: Any) -> tuple[Sequence[float], int, int]:
    cfg = getattr(model, "cfg", None) or Config()
    return cfg.PIXEL_MEANS, cfg.TEST.SCALES[0], cfg.TEST.MAX_SIZE


@torch.no_grad()
def im_detect(model: Any, image: np.ndarray | str | Path, *, pixel_means: Sequence[float] | None = None,
              scale: int | None = None, max_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (BGR uint8 array or a path) → ``(scores [R, K], boxes [R, 4K])`` in original pixels.

    Preprocessing defaults to the settings of the model's config (``model.cfg``: PIXEL_MEANS,
    TEST.SCALES[0], TEST.MAX_SIZE).
    """
    im = read_image(image) if isinstance(image, (str, Path)) else image
    means, s, m = _model_cfg(model)
    device = next(model.parameters()).device
    blob, im_info = preprocess_images([im], pixel_means or means, scale or s, max_size or m, device)
    orig = torch.tensor([[im.shape[0], im.shape[1]]], dtype=torch.float32, device=device)
    return model.im_detect(blob, im_info, orig)[0]


@dataclass
class TestOutput:
    """What :func:`test_net` / :func:`run_test` did (``result`` is None when not evaluated, or not rank 0)."""

    __test__ = False

    detections: Detections
    result: EvalResult | None
    output_dir: Path
    seconds_per_image: float


def test_net(model: FasterRCNN, imdb: Imdb, cfg: Config, output_dir: str | Path, *, batch_size: int = 1,
             evaluate: bool = True, max_images: int | None = None, threads: int = 1,
             console: Any = None) -> TestOutput:
    """py-faster-rcnn's test_net on an eager model: :func:`run_test` with ``model`` on the torch backend, on
    the model's device, with ``cfg``'s test settings (TEST.SCALES[0], MAX_SIZE, SCORE_THRESH, NMS,
    MAX_PER_IMAGE)."""
    device = next(model.parameters()).device
    distributed.init_distributed(device)  # under torchrun: join the process group
    det = Detector.from_model(model, cfg, imdb.classes, device=device)
    return run_test(det, imdb, output_dir, batch_size=batch_size, evaluate=evaluate, max_images=max_images,
                    threads=threads, console=console)


def run_test(det: Detector, imdb: Imdb, output_dir: str | Path, *, batch_size: int = 1, evaluate: bool = True,
             max_images: int | None = None, threads: int = 1, console: Any = None) -> TestOutput:
    """Detect on every image of ``imdb`` with ``det`` (any backend), write the results (per-class VOC files,
    predictions.json) and evaluate them (eval.json).

    Under torchrun every rank detects its shard of the images (every W-th batch of ``batch_size``, so the
    batches are those of one process); the detections are gathered on every rank, and rank 0 writes the
    files a single process would write and evaluates (``result`` is None on the other ranks).
    """
    out = Path(output_dir)
    annotations = _test_annotations(det, imdb, evaluate, max_images)
    runner = Runner(det, batch_size=batch_size, threads=threads, label="test", console=console, log_every=100)
    run = runner.run([a.path for a in annotations], [a.image_id for a in annotations])
    if run.skipped:
        raise ImageError(f"{len(run.skipped)} image(s) of {imdb.name} cannot be read: "
                         + "; ".join(str(r.error) for r in run.skipped[:5]))
    dets = Detections()
    for d in run.detections:
        dets.add(d.image_id, d.boxes, d.scores, d.labels)  # type: ignore[arg-type]
    spi = run.wall_seconds / max(len(annotations), 1)
    if not distributed.is_main_process():
        return TestOutput(dets, None, out, spi)
    result = _write_and_evaluate(run, dets, annotations, imdb, out, evaluate)
    return TestOutput(dets, result, out, spi)


def _test_annotations(det: Detector, imdb: Imdb, evaluate: bool, max_images: int | None) -> list[ImageAnnotation]:
    """The images to test on, after checking that they can be evaluated with this detector's classes."""
    if list(det.class_names) != list(imdb.classes):
        raise DatasetError(f"the detector knows classes {list(det.class_names[1:])} but {imdb.name} has "
                           f"{list(imdb.classes[1:])}")
    annotations = imdb.annotations()
    if max_images is not None:
        annotations = annotations[:max_images]
    if evaluate and not any(a.num_objects for a in annotations):
        raise FrcnnError(f"imdb {imdb.name} has no ground truth to evaluate against")
    return list(annotations)


def _write_and_evaluate(run: RunResult, dets: Detections, annotations: list[ImageAnnotation], imdb: Imdb,
                        out: Path, evaluate: bool) -> EvalResult | None:
    """predictions.json, the per-class results files and (``evaluate``) eval.json with the precision–recall curves
    (pr_curves.png / .json), in ``out``."""
    names = list(imdb.classes)
    out.mkdir(parents=True, exist_ok=True)
    with PredictionsWriter(out / "predictions.json", names) as writer:
        for r in run.results:  # every image was read (run_test checked)
            d = r.detections
            if d is not None and d.labels is not None:
                writer.write(prediction_record(r.image_id, r.path, d.width, d.height, d.boxes, d.scores, d.labels,
                                               names))
    write_voc_results(dets, out / "results", names, image_ids=[a.image_id for a in annotations])
    if not evaluate:
        return None
    result = evaluate_voc(annotations, dets, names, use_07_metric=imdb.use_07_metric)
    write_eval_files(result, out, title=imdb.name)  # eval.json, pr_curves.png, pr_curves.json
    return result


def run_test_checkpoint(checkpoint: str | Path, imdb: Imdb, output_dir: str | Path | None = None, *,
                        overrides: Sequence[str] = (), backend: str = "torch", device: str | None = None,
                        batch_size: int = 1, max_images: int | None = None, console: Any = None) -> TestOutput:
    """:func:`test_net` on a checkpoint (eager torch), its config with py-faster-rcnn's ``--set`` ``overrides``
    applied and written next to the results (default folder: ``test_<imdb>`` next to the checkpoint)."""
    path = Path(checkpoint)
    if backend not in ("auto", "torch"):
        raise BackendError(f"backend {backend!r} runs an export folder, not a checkpoint: run `frcnn-trt export "
                           f"{path}` and test the export, or use the torch backend")
    model, info = load_checkpoint(path, distributed.resolve_device(device))
    if not isinstance(model, FasterRCNN):  # pragma: no cover - load_checkpoint builds a FasterRCNN
        raise CheckpointError(f"{path} does not hold a FasterRCNN")
    cfg = from_list(list(overrides), model.cfg)
    model.configure(cfg)
    if list(imdb.classes) != list(info.class_names):
        raise DatasetError(f"{path} was trained on classes {info.class_names[1:]} but {imdb.name} has "
                           f"{list(imdb.classes[1:])}")
    out = Path(output_dir) if output_dir is not None else path.parent / f"test_{imdb.name}"
    write_resolved(cfg, out)
    return test_net(model, imdb, cfg, out, batch_size=batch_size, max_images=max_images, console=console)


def run_test_export(directory: str | Path, imdb: Imdb, output_dir: str | Path | None = None, *,
                    backend: str = "auto", device: str | None = None, batch_size: int = 1,
                    max_images: int | None = None, console: Any = None) -> TestOutput:
    """:func:`run_test` on an export run by ``backend`` (test settings: its export.json; default folder:
    ``test_<imdb>_<export>_<backend>`` next to the export). Under torchrun rank 0 opens it first (engine caches)."""
    export = Path(directory)
    det = rank_zero_first(lambda: Detector.from_export(export, backend, device=device))
    default = export.parent / f"test_{imdb.name}_{export.name}_{det.backend.name}"
    out = Path(output_dir) if output_dir is not None else default
    return run_test(det, imdb, out, batch_size=batch_size, max_images=max_images, console=console)


def validate_export_precisions(directory: str | Path, imdb: Imdb, console: Any = None) -> dict[str, Any]:
    """``export --val``: the mAP and ms/image of the FP32 torch checkpoint the export came from and of the export
    on ONNX Runtime (its own precision), both measured by :func:`run_test_checkpoint` / :func:`run_test_export`
    on ``imdb``, added side by side to the export's precision report (returned)."""
    directory = Path(directory)
    info = load_export(directory, verify=False)
    ckpt = Path(info.source_checkpoint["checkpoint"])
    runs = (
        ("fp32", "torch", lambda: run_test_checkpoint(ckpt, imdb, directory / "val_fp32_torch", console=console)),
        (export_precision(info), "onnxruntime", lambda: run_test_export(
            directory, imdb, directory / "val_onnxruntime", backend="onnxruntime", console=console)),
    )
    rows = []
    for precision, backend, run in runs:
        out = run()
        rows.append({"imdb": imdb.name, "precision": precision, "backend": backend,
                     "map": float(out.result.mean_ap) if out.result else float("nan"),
                     "ms_per_image": 1000.0 * out.seconds_per_image})
    return add_validation(directory, rows)
