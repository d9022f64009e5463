"""Approximate joint ("end2end") training, py-faster-rcnn's ``tools/train_net.py`` (docs/REFERENCE.md §10).

The roidb is gt-only (``PROPOSAL_METHOD: gt``), targets are normalised with the precomputed means/stds
(``BBOX_NORMALIZE_TARGETS_PRECOMPUTED: True``), and one model trains the conv body (minus the frozen
layers), the RPN head, fc6/fc7 and the predictor together with the sum of the four losses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from frcnn_trt import config as C
from frcnn_trt import distributed
from frcnn_trt.data.imdb import Imdb
from frcnn_trt.data.roidb import build_training_roidb_from_config
from frcnn_trt.log import get_logger
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.model.weights import load_weights
from frcnn_trt.train.loop import StageSpec, train_stage

logger = get_logger("train")

ALL_TRAINABLE = ("conv", "rpn", "fc", "predictor")


def build_model(cfg: C.Config, num_classes: int, weights: str | Path | None) -> FasterRCNN:
    """A fresh model for ``cfg``; ImageNet (or our own) backbone weights from a local file when given."""
    torch.manual_seed(cfg.RNG_SEED)  # the random init of the heads is part of a seeded run
    model = FasterRCNN.from_config(cfg, num_classes)
    if weights is not None:
        report = load_weights(model.backbone, weights, pixel_means=cfg.PIXEL_MEANS)
        logger.info("initialised %s from %s", cfg.MODEL.NET, report.summary())
    else:
        logger.warning("no --weights given: %s starts from random initialisation (fine for the tiny net on "
                       "synthetic data; the VGG/ZF nets need ImageNet weights to reach published mAP)",
                       cfg.MODEL.NET)
    return model


def precomputed_normalization(cfg: C.Config, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means, stds) [K, 4]`` from TRAIN.BBOX_NORMALIZE_MEANS/STDS (identity when normalisation is off)."""
    t = cfg.TRAIN
    if not t.BBOX_NORMALIZE_TARGETS:
        return torch.zeros(num_classes, 4), torch.ones(num_classes, 4)
    means = torch.tensor(t.BBOX_NORMALIZE_MEANS, dtype=torch.float32).repeat(num_classes, 1)
    stds = torch.tensor(t.BBOX_NORMALIZE_STDS, dtype=torch.float32).repeat(num_classes, 1)
    return means, stds


def train_end2end(cfg: C.Config, imdb: Imdb, output_dir: str | Path, *, weights: str | Path | None = None,
                  resume: bool = False, device: str | None = None, num_workers: int | None = None) -> Path:
    """Train end2end on ``imdb``; returns the final checkpoint (``end2end_final.safetensors``)."""
    out = Path(output_dir)
    dev = distributed.setup_device(device or cfg.DEVICE)
    cfg = C.override(cfg, TRAIN={"HAS_RPN": True})
    roidb = build_training_roidb_from_config(imdb, cfg, cache_dir=out / "cache")
    logger.info("%d roidb entries (%d filtered out)", len(roidb.entries), len(roidb.removed))
    model = build_model(cfg, imdb.num_classes, weights)
    model.predictor.set_normalization(*precomputed_normalization(cfg, imdb.num_classes))
    spec = StageSpec(name="end2end", mode="end2end", max_iters=cfg.SOLVER.MAX_ITERS, base_lr=cfg.SOLVER.BASE_LR,
                     stepsize=cfg.SOLVER.STEPSIZE, trainable=ALL_TRAINABLE, label="end2end")
    return train_stage(model, roidb.entries, cfg, spec, out, class_names=imdb.classes, device=dev,
                       resume=resume, num_workers=num_workers, extra_info={"imdb": imdb.name})
