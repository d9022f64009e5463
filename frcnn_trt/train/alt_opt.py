"""The four-stage alternating optimisation: py-faster-rcnn's ``tools/train_faster_rcnn_alt_opt.py``
(docs/REFERENCE.md §9).

========================  ===================================  =========================================  =====
step                      initialised from                     trains (parameter groups)                  imgs
========================  ===================================  =========================================  =====
1 stage-1 RPN             ImageNet (``--weights``)             conv (minus frozen), rpn                   1
2 stage-1 rpn_generate    stage-1 RPN, on the engines layer    —                                          —
3 stage-1 Fast R-CNN      ImageNet again (RPN head: new init)  conv (minus frozen), fc, predictor          2
4 stage-2 RPN             stage-1 Fast R-CNN (whole model)     rpn only (its never-trained random init)    1
5 stage-2 rpn_generate    stage-2 RPN                          —                                          —
6 stage-2 Fast R-CNN      stage-2 RPN; predictor re-init       fc, predictor                              2
7 final                   stage-2 Fast R-CNN                   —                                          —
========================  ===================================  =========================================  =====

Each stage's config is derived from the run's config with :func:`frcnn_trt.config.override` (nothing global
is mutated); the random seeds are reset to ``RNG_SEED`` at the start of every stage, as py-faster-rcnn ran
each stage in a fresh process. Outputs: one folder per stage (weights, proposals, logs, resolved config,
``<stage>_metrics.jsonl``), ``training_curves.png`` (the four stages side by side, redrawn at every snapshot and
stage end) and ``<NET>_faster_rcnn_final.safetensors``. With ``resume`` finished stages are skipped, a stage in progress
continues from its newest snapshot and proposals are reused when their model hash and settings match.
The two stage-2 stages share one cache of per-image conv features (:mod:`frcnn_trt.train.feature_cache`):
their conv is frozen and the same, so each training image's features are computed once for both.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from frcnn_trt import config as C
from frcnn_trt import distributed
from frcnn_trt.data.imdb import Imdb
from frcnn_trt.data.roidb import build_training_roidb_from_config
from frcnn_trt.errors import ConfigError
from frcnn_trt.io import atomic_open
from frcnn_trt.log import get_logger
from frcnn_trt.model.checkpoint import load_state_into, load_tensors
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.model.weights import load_weights
from frcnn_trt.train.feature_cache import FeatureCache
from frcnn_trt.train.loop import StageSpec, train_stage
from frcnn_trt.train.metrics import plot_run
from frcnn_trt.train.rpn_generate import load_proposals, rpn_generate

logger = get_logger("alt_opt")

#: (name, mode, trainable parameter groups) of the four training stages
TRAIN_STAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("stage1_rpn", "rpn", ("conv", "rpn")),
    ("stage1_fast_rcnn", "fast_rcnn", ("conv", "fc", "predictor")),
    ("stage2_rpn", "rpn", ("rpn",)),
    ("stage2_fast_rcnn", "fast_rcnn", ("fc", "predictor")),
)
STEP_LABELS = ("stage 1 RPN", "stage 1 rpn_generate", "stage 1 Fast R-CNN", "stage 2 RPN",
               "stage 2 rpn_generate", "stage 2 Fast R-CNN")


@dataclass
class AltOptResult:
    final: Path
    stage_checkpoints: dict[str, Path]
    proposals: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)
    generate_stats: dict[str, dict[str, Any]] = field(default_factory=dict)


def summary_table(res: AltOptResult) -> Table:
    """A rich table of the steps: time, output file and, for rpn_generate, backend and ms/image."""
    table = Table(title="alt-opt", title_justify="left")
    table.add_column("step")
    table.add_column("time", justify="right")
    table.add_column("output")
    for name, secs in res.seconds.items():
        path = res.stage_checkpoints.get(name) or res.proposals.get(name)
        extra = res.generate_stats.get(name)
        note = f" ({extra['backend']}, {extra['ms_per_image']} ms/image)" if extra else ""
        table.add_row(name, f"{secs:.1f} s", f"{path}{note}")
    return table


def parse_iters(text: str) -> tuple[int, int, int, int]:
    """``--iters a,b,c,d`` → four positive ints."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--iters takes four comma-separated integers, got {text!r}") from None
    if len(values) != 4 or any(v <= 0 for v in values):
        raise ConfigError("--iters takes four positive integers (RPN 1, Fast R-CNN 1, RPN 2, Fast R-CNN 2), "
                          f"got {text!r}")
    return values  # type: ignore[return-value]


def with_iters(cfg: C.Config, iters: Sequence[int]) -> C.Config:
    """Set ALT_OPT.ITERS; step sizes keep their fraction of the default schedule (60k of 80k, 30k of 40k)."""
    a = cfg.ALT_OPT
    steps = [max(1, round(s * n / m)) for s, n, m in zip(a.STEPSIZES, iters, a.ITERS, strict=True)]
    return C.override(cfg, ALT_OPT={"ITERS": list(iters), "STEPSIZES": steps})


def stage_config(cfg: C.Config, mode: str) -> C.Config:
    """A stage's config, derived (py-faster-rcnn's per-stage ``cfg.TRAIN.*`` assignments)."""
    if mode == "rpn":
        return C.override(cfg, TRAIN={"HAS_RPN": True, "BBOX_REG": False, "PROPOSAL_METHOD": "gt",
                                      "IMS_PER_BATCH": cfg.ALT_OPT.RPN_IMS_PER_BATCH})
    return C.override(cfg, TRAIN={"HAS_RPN": False, "PROPOSAL_METHOD": "rpn",
                                  "IMS_PER_BATCH": cfg.ALT_OPT.FAST_RCNN_IMS_PER_BATCH})


def _load_weights(model: FasterRCNN, path: Path) -> None:
    """Initialise from a stage checkpoint (bbox_pred is stored un-normalised; buffers identity)."""
    load_state_into(model, load_tensors(path), path)


def train_alt_opt(
    cfg: C.Config,
    imdb: Imdb,
    output_dir: str | Path,
    *,
    weights: str | Path | None = None,
    backend: str = "auto",
    resume: bool = False,
    device: str | None = None,
    num_workers: int | None = None,
    on_step: Callable[[int, str], None] | None = None,
) -> AltOptResult:
    """Run the whole schedule on ``imdb``; returns the final model and every stage's outputs."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = distributed.setup_device(device or cfg.DEVICE)
    C.write_resolved(cfg, out)
    a = cfg.ALT_OPT
    names = list(imdb.classes)
    result = AltOptResult(final=out / f"{cfg.MODEL.NET}_faster_rcnn_final.safetensors", stage_checkpoints={},
                          proposals={})
    gen_dev = str(dev)
    # stage 2 (RPN, then Fast R-CNN) keeps the stage-1 Fast R-CNN's conv frozen: one feature cache for both
    cache = FeatureCache(int(cfg.TRAIN.FEATURE_CACHE_MB), bool(cfg.TRAIN.FEATURE_CACHE_UNPADDED))

    def run_stage(index: int, init: Callable[[FasterRCNN], None], proposals: Path | None) -> Path:
        name, mode, trainable = TRAIN_STAGES[index]
        step = (0, 2, 3, 5)[index]
        label = f"Stage {step + 1}/6 · {STEP_LABELS[step]}"
        if on_step is not None:
            on_step(step, label)
        logger.info("%s", label)
        t0 = time.perf_counter()
        scfg = stage_config(cfg, mode)
        props = load_proposals(proposals).as_mapping() if proposals is not None else None
        roidb = build_training_roidb_from_config(imdb, scfg, proposals=props, cache_dir=out / "cache")
        logger.info("%s: %d roidb entries (%d filtered out)", name, len(roidb.entries), len(roidb.removed))
        torch.manual_seed(scfg.RNG_SEED)
        model = FasterRCNN.from_config(scfg, imdb.num_classes)
        init(model)
        if mode == "fast_rcnn" and roidb.bbox_means is not None:
            model.predictor.set_normalization(torch.as_tensor(roidb.bbox_means), torch.as_tensor(roidb.bbox_stds))
        spec = StageSpec(name=name, mode=mode, max_iters=a.ITERS[index], base_lr=a.BASE_LRS[index],
                         stepsize=a.STEPSIZES[index], trainable=trainable, label=label)
        path = train_stage(model, roidb.entries, scfg, spec, out / name, class_names=names, device=dev,
                           resume=resume, num_workers=num_workers, feature_cache=cache,
                           extra_info={"imdb": imdb.name, "schedule": "alt_opt"}, curves=lambda: plot_run(out))
        result.seconds[name] = time.perf_counter() - t0
        result.stage_checkpoints[name] = path
        return path

    def generate(step: int, checkpoint: Path, tag: str) -> Path:
        label = f"Stage {step + 1}/6 · {STEP_LABELS[step]}"
        if on_step is not None:
            on_step(step, label)
        logger.info("%s", label)
        t0 = time.perf_counter()
        path, stats = rpn_generate(checkpoint, imdb, cfg, out / tag / "proposals", backend=backend,
                                   device=gen_dev, resume=resume)
        result.seconds[tag] = time.perf_counter() - t0
        result.proposals[tag] = path
        result.generate_stats[tag] = stats
        return path

    def from_imagenet(model: FasterRCNN) -> None:
        if weights is not None:
            report = load_weights(model.backbone, weights, pixel_means=cfg.PIXEL_MEANS)
            logger.info("initialised %s from %s", cfg.MODEL.NET, report.summary())
        else:
            logger.warning("no --weights: %s starts from random initialisation", cfg.MODEL.NET)

    # 1. stage-1 RPN from ImageNet
    rpn1 = run_stage(0, from_imagenet, None)
    # 2. proposals of the stage-1 RPN
    props1 = generate(1, rpn1, "stage1_proposals")
    # 3. stage-1 Fast R-CNN from ImageNet again; its RPN head is a fresh random init, never trained
    frcn1 = run_stage(1, from_imagenet, props1)
    # 4. stage-2 RPN from the stage-1 Fast R-CNN model: only the RPN head (its random init) trains
    rpn2 = run_stage(2, lambda m: _load_weights(m, frcn1), None)
    # 5. proposals of the stage-2 RPN
    props2 = generate(4, rpn2, "stage2_proposals")

    # 6. stage-2 Fast R-CNN from the stage-2 RPN model; cls_score / bbox_pred re-initialised
    def from_rpn2(model: FasterRCNN) -> None:
        _load_weights(model, rpn2)
        model.predictor.reset_parameters()
        model.predictor.set_normalization(torch.zeros(4 * imdb.num_classes), torch.ones(4 * imdb.num_classes))

    frcn2 = run_stage(3, from_rpn2, props2)
    cache.clear()
    # 7. the final model: shared conv + stage-2 RPN head + stage-2 Fast R-CNN head (= the stage-2 FRCN model)
    if distributed.is_main_process():  # under torchrun rank 0 alone writes
        for suffix in (".safetensors", ".json"):
            with frcn2.with_suffix(suffix).open("rb") as src, atomic_open(result.final.with_suffix(suffix)) as dst:
                shutil.copyfileobj(src, dst)
    distributed.barrier()
    logger.info("final model: %s", result.final)
    return result
