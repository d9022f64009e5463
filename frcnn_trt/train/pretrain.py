"""Classification pretraining of a backbone on object crops: a stand-in for ImageNet weights.

py-faster-rcnn starts every network from an ImageNet classifier (conv body + fc6/fc7), and alt-opt goes
back to that classifier for its stage-1 Fast R-CNN. Where no such model exists (the tiny CPU network) or none
can be had, this trains one on the detection training set's own labelled objects, the way the detector's head
will see them:

* a *window* per sample: for an object, a square of side ``object size × U(1.2, 2.0)`` around it, shifted by
  up to ±15 % of the side; for background, of 16 random squares the ones whose central box (side / context
  factor) overlaps the objects least (IoU);
* the window is resampled to ``crop × crop`` pixels (bilinear, :func:`torchvision.ops.roi_align`) from the
  image in the network's input space (BGR minus ``PIXEL_MEANS``), flipped at random;
* body → RoI pool of the object's box inside the crop → fc6/fc7 (``box_head``) → a linear classifier over
  ``background + classes``; cross-entropy, SGD (momentum 0.9, weight decay 5e-4), learning rate ×0.1 for
  the last 20 % (py-faster-rcnn's step policy; a cosine decay learned markedly slower here).

Body and fc6/fc7 are saved (the classifier is dropped, like ImageNet's fc8) as a ``.safetensors`` that
``--weights`` takes, with a JSON sidecar of the settings and the final accuracy; every iteration's loss, accuracy
and learning rate go to ``<name>_metrics.jsonl`` beside it, drawn in ``<name>_curves.png``
(:mod:`frcnn_trt.train.metrics`; images/s there counts crops). Difficult objects are not
used. Seeded: every batch is drawn from its own generator seeded by ``(seed, iteration)``, so the result does
not depend on the number of loader workers. A file made with the same settings from the same annotations is
reused, not retrained.

Not py-faster-rcnn: an addition for users without ImageNet weights. The crops come from the training images
only, so the test split stays unseen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou, roi_align

from frcnn_trt.data.images import read_image
from frcnn_trt.errors import ConfigError, DatasetError
from frcnn_trt.io import atomic_write_json
from frcnn_trt.log import IterationProgress, get_logger
from frcnn_trt.model.backbones import build_network
from frcnn_trt.model.weights import DEFAULT_PIXEL_MEANS, save_weights
from frcnn_trt.ops.roi_pool import RoIPool
from frcnn_trt.train.metrics import METRICS_SUFFIX, draw_stage, metrics_log

__all__ = ["PretrainSettings", "pretrain_backbone"]

logger = get_logger("pretrain")

CONTEXT = (1.2, 2.0)  # window side / object size
SHIFT = 0.15  # window centre jitter, fraction of the side
BG_TRIES = 16


@dataclass(frozen=True)
class PretrainSettings:
    net: str = "tiny"
    iters: int = 600
    crops_per_batch: int = 64
    images_per_batch: int = 32
    crop: int = 64
    base_lr: float = 0.02
    step_at: float = 0.8  # fraction of the iterations after which the learning rate is ×0.1
    bg_fraction: float = 0.25
    seed: int = 3
    pixel_means: tuple[float, float, float] = DEFAULT_PIXEL_MEANS

    def check(self) -> None:
        if self.iters < 1 or self.crops_per_batch < 2 or self.images_per_batch < 1:
            raise ConfigError(f"pretrain needs iters ≥ 1, crops_per_batch ≥ 2 and images_per_batch ≥ 1, got {self}")
        if self.crop < 16 or not 0.0 < self.bg_fraction < 1.0 or self.base_lr <= 0 or not 0.0 < self.step_at <= 1.0:
            raise ConfigError(f"pretrain needs crop ≥ 16, 0 < bg_fraction < 1, base_lr > 0 and 0 < step_at ≤ 1, "
                              f"got {self}")


class CropBatches(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Item ``i`` = the crops ``[B, 3, crop, crop]``, boxes in the crops ``[B, 5]`` (batch index first) and
    labels ``[B]`` of iteration ``i``, drawn from a generator seeded by ``(seed, i)``."""

    def __init__(self, paths: Sequence[Path], boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                 settings: PretrainSettings, cache_bytes: int = 1 << 30) -> None:
        self.paths, self.boxes, self.labels, self.s = list(paths), list(boxes), list(labels), settings
        self.with_objects = [i for i, b in enumerate(self.boxes) if len(b) > 0]
        self.means = torch.tensor(settings.pixel_means, dtype=torch.float32).view(3, 1, 1)
        self.cache_bytes = cache_bytes  # decoded images kept (per loader process), up to this many bytes
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return self.s.iters

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        s = self.s
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + i)
        n_img = min(s.images_per_batch, s.crops_per_batch)
        picks = torch.randint(len(self.with_objects), (n_img,), generator=g).tolist()
        n_bg = max(1, round(s.crops_per_batch * s.bg_fraction))
        fg_counts = _spread(s.crops_per_batch - n_bg, n_img)
        bg_counts = _spread(n_bg, n_img)[::-1]  # background from the other end: every image gets a crop
        crops, rois, labels = [], [], []
        for k, n_fg, n_bg_k in zip(picks, fg_counts, bg_counts, strict=True):
            if n_fg + n_bg_k == 0:
                continue
            c, r, y = self._crops(self.with_objects[k], n_fg, n_bg_k, g)
            crops.append(c)
            rois.append(r)
            labels.append(y)
        x, r, y = torch.cat(crops), torch.cat(rois), torch.cat(labels)
        flip = torch.rand(len(x), generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        r[flip] = torch.stack([s.crop - 1 - r[flip, 2], r[flip, 1], s.crop - 1 - r[flip, 0], r[flip, 3]], dim=1)
        return x, torch.cat([torch.arange(len(x), dtype=torch.float32)[:, None], r], dim=1), y

    def _image(self, j: int) -> Tensor:
        bgr = self._cache.get(j)
        if bgr is None:
            bgr = read_image(self.paths[j])  # uint8 [H, W, 3] BGR, whatever the file's format
            if self._cached_bytes + bgr.nbytes <= self.cache_bytes:
                self._cache[j] = bgr
                self._cached_bytes += bgr.nbytes
        return torch.from_numpy(bgr).permute(2, 0, 1).float() - self.means

    def _crops(self, j: int, n_fg: int, n_bg: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        image = self._image(j)
        h, w = image.shape[1:]
        gt = torch.as_tensor(self.boxes[j], dtype=torch.float32)  # [G, 4] 0-based inclusive
        pick = torch.randint(len(gt), (n_fg,), generator=g)
        obj = gt[pick]
        size = torch.maximum(obj[:, 2] - obj[:, 0], obj[:, 3] - obj[:, 1]) + 1
        win_fg = _windows((obj[:, :2] + obj[:, 2:]) / 2, size * _uniform(n_fg, *CONTEXT, g=g), g)
        # background: windows whose central box (side / context) overlaps no object
        side = _uniform(n_bg * BG_TRIES, 24.0, max(24.0, 0.6 * min(h, w)), g=g)
        centre = torch.stack([_uniform(n_bg * BG_TRIES, 0, w - 1, g=g), _uniform(n_bg * BG_TRIES, 0, h - 1, g=g)], 1)
        inner = side / _uniform(n_bg * BG_TRIES, *CONTEXT, g=g)
        inner_box = torch.cat([centre - inner[:, None] / 2, centre + inner[:, None] / 2], dim=1)
        iou = box_iou(inner_box, gt + torch.tensor([0.0, 0.0, 1.0, 1.0])).amax(dim=1)
        order = torch.sort(iou, stable=True).indices[:n_bg]  # the emptiest candidates first
        win_bg = torch.cat([centre[order] - side[order, None] / 2, centre[order] + side[order, None] / 2], dim=1)
        windows = torch.cat([win_fg, win_bg])
        crops = roi_align(image[None], [windows], self.s.crop, 1.0, sampling_ratio=2, aligned=True)
        # the object's (or the central) box in crop pixels
        scale = (self.s.crop / (windows[:, 2] - windows[:, 0]))[:, None]
        boxes = torch.cat([obj, inner_box[order]]) - windows[:, :2].repeat(1, 2)
        rois = (boxes * scale).clamp(0, self.s.crop - 1)
        fg_labels = torch.as_tensor(self.labels[j], dtype=torch.long)[pick]
        labels = torch.cat([fg_labels, torch.zeros(n_bg, dtype=torch.long)])
        return crops, rois, labels


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts differing by at most one, the larger ones first."""
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def _uniform(n: int, lo: float, hi: float, *, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _windows(centre: Tensor, side: Tensor, g: torch.Generator) -> Tensor:
    c = centre + (torch.rand(centre.shape, generator=g) * 2 - 1) * SHIFT * side[:, None]
    return torch.cat([c - side[:, None] / 2, c + side[:, None] / 2], dim=1)


class _Classifier(nn.Module):
    def __init__(self, net: str, num_classes: int) -> None:
        super().__init__()
        self.backbone = build_network(net)
        self.pool = RoIPool(self.backbone.pooled_size, 1.0 / self.backbone.feat_stride)
        self.cls = nn.Linear(self.backbone.fc_dim, num_classes)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.zeros_(self.cls.bias)

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:
        return self.cls(self.backbone.box_head(self.pool(self.backbone(x), rois)))


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _reusable(path: Path, meta: dict[str, Any]) -> bool:
    side = _sidecar(path)
    if not (path.exists() and side.exists()):
        return False
    try:
        old = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return all(old.get(k) == meta[k] for k in ("settings", "imdb", "annotations"))


def pretrain_backbone(imdb: Any, output: str | Path, settings: PretrainSettings | None = None, *,
                      device: str | torch.device = "cpu", num_workers: int = 1, force: bool = False,
                      display: int = 50) -> Path:
    """Pretrain ``settings.net``'s body and fc6/fc7 on object crops of ``imdb`` → ``output`` (.safetensors).

    Returns ``output``; a file written by an earlier call with the same settings and imdb is reused unless
    ``force``.
    """
    s = settings or PretrainSettings()
    s.check()
    out = Path(output).with_suffix(".safetensors")
    annotations = imdb.annotations()
    keep = [~a.difficult if len(a.difficult) == len(a.classes) else np.ones(len(a.classes), bool) for a in annotations]
    boxes = [a.boxes[k] for a, k in zip(annotations, keep, strict=True)]
    labels = [a.classes[k] for a, k in zip(annotations, keep, strict=True)]
    n_obj = sum(len(b) for b in boxes)
    if n_obj == 0:
        raise DatasetError(f"{imdb.name}: no (non-difficult) objects to pretrain on")
    meta: dict[str, Any] = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()},
                            "imdb": imdb.name, "annotations": imdb.fingerprint(), "classes": list(imdb.classes)}
    if not force and _reusable(out, meta):
        logger.info("pretrain: reusing %s (same settings and imdb)", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(s.seed)
    model = _Classifier(s.net, imdb.num_classes).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=s.base_lr, momentum=0.9, weight_decay=5e-4)
    data = CropBatches([a.path for a in annotations], boxes, labels, s)
    loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=num_workers,
                        prefetch_factor=4 if num_workers > 0 else None)
    logger.info("pretrain %s on %d objects of %s: %d iterations × %d crops of %d px, base lr %g", s.net, n_obj,
                imdb.name, s.iters, s.crops_per_batch, s.crop, s.base_lr)
    t0 = time.perf_counter()
    losses, hits = [], []
    curves = out.with_name(f"{out.stem}{METRICS_SUFFIX}")
    with metrics_log(True, curves, "pretrain", start=0, images_per_iter=s.crops_per_batch,
                     draw=lambda: draw_stage(out.parent, out.stem, f"pretraining curves · {out.stem}")) as mlog, \
            IterationProgress("pretrain", s.iters) as bar:
        for it, (x, rois, y) in enumerate(loader):
            lr = s.base_lr * (0.1 if it >= s.step_at * s.iters else 1.0)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = model(x.to(device), rois.to(device))
            loss = F.cross_entropy(logits, y.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain: loss {loss.item()} at iteration {it + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            hits.append((logits.argmax(1).cpu() == y).float().mean().item())
            bar.update(it + 1, loss.item())
            if mlog is not None:
                mlog.append(it + 1, {"loss": losses[-1]}, lr, {"accuracy": hits[-1]})
            if (it + 1) % display == 0 or it + 1 == s.iters:
                logger.info("pretrain iter %d/%d, loss %.4f, accuracy %.3f, lr %.5f, %.3f s/iter", it + 1, s.iters,
                            np.mean(losses[-display:]), np.mean(hits[-display:]), lr,
                            (time.perf_counter() - t0) / (it + 1))
    seconds = time.perf_counter() - t0
    save_weights(model.backbone, out)
    tail = max(1, min(display, len(hits)))
    meta.update(iterations=s.iters, seconds=round(seconds, 1), final_loss=round(float(np.mean(losses[-tail:])), 4),
                final_accuracy=round(float(np.mean(hits[-tail:])), 4), objects=n_obj)
    atomic_write_json(_sidecar(out), meta)
    logger.info("pretrain: wrote %s (accuracy %.3f over the last %d batches, %.0f s)", out, meta["final_accuracy"],
                tail, seconds)
    return out
