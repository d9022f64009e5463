"""Training records ("roidb"): one typed entry per (image, flipped) pair, and py-faster-rcnn's chain of steps
that builds them (:mod:`frcnn_trt.data.roidb` runs the chain, cached).

Glossary: R RoIs of an entry (its G ground-truth boxes first, then its P stored proposals), K object
classes (class 0 is ``__background__``, so arrays over classes have K+1 columns), E entries.

The chain (``lib/datasets/imdb.py``, ``lib/roi_data_layer/roidb.py``, ``lib/fast_rcnn/train.py``)::

    gt_roidb -> [merge_proposals] -> [append_flipped_images] -> prepare_roidb -> filter_roidb
             -> [add_bbox_regression_targets]

``gt_overlaps`` is py-faster-rcnn's "one-hot-per-class" overlap matrix ``[R, K+1]``: each row holds at most
one non-zero, the IoU with its best ground-truth box at that box's class (1.0 for the gt rows). It is
therefore exactly described by ``max_overlaps`` and ``max_classes``; an entry stores those two and builds
the dense matrix on demand (:attr:`RoidbEntry.gt_overlaps`), which keeps a VOC alt-opt roidb (10k entries
x 2000 RoIs x 21 classes) at a twentieth of the memory and makes the cache exact.

Differences from py-faster-rcnn, on purpose: boxes are float32 (not uint16, so a box at x1 = 0 cannot wrap
round to 65535 when flipped); a gt box outside its image raises :class:`~frcnn_trt.errors.DatasetError`
naming the image instead of an ``assert``; a class whose regression targets have zero variance gets a
std of 1 (py-faster-rcnn would divide 0 by 0).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from frcnn_trt.data.images import image_size
from frcnn_trt.data.imdb import ImageAnnotation
from frcnn_trt.errors import DatasetError

__all__ = [
    "RoidbEntry",
    "TrainingRoidb",
    "add_bbox_regression_targets",
    "append_flipped_images",
    "bbox_overlaps_np",
    "bbox_transform_np",
    "best_overlaps",
    "filter_roidb",
    "gt_roidb",
    "merge_proposals",
    "prepare_roidb",
]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class RoidbEntry:
    """One training record: an image (possibly flipped) with its RoIs and their targets."""

    image_id: str
    image: Path
    width: int  # 0 until known (then from the image header)
    height: int
    flipped: bool
    boxes: np.ndarray  # float32 [R, 4]: gt first, then proposals; in this entry's (flipped) coordinates
    gt_classes: np.ndarray  # int64 [R]: class of the gt rows, 0 for proposals
    max_overlaps: np.ndarray  # float32 [R]: best IoU with a gt box (1 for gt rows)
    max_classes: np.ndarray  # int64 [R]: class of that gt box (0 where max_overlaps == 0)
    num_classes: int  # K + 1, background included
    bbox_targets: np.ndarray | None = None  # float32 [R, 5]: (class, dx, dy, dw, dh), normalised

    @property
    def gt_overlaps(self) -> np.ndarray:
        """float32 ``[R, K+1]`` one-hot-per-class IoU, py-faster-rcnn's ``gt_overlaps`` (built on demand)."""
        out = np.zeros((self.num_rois, self.num_classes), dtype=np.float32)
        out[np.arange(self.num_rois), self.max_classes] = self.max_overlaps
        return out

    @property
    def num_rois(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_gt(self) -> int:
        return int(np.count_nonzero(self.gt_classes))


@dataclass
class TrainingRoidb:
    """What :func:`build_training_roidb` returns."""

    entries: list[RoidbEntry]
    removed: list[tuple[str, bool, str]]  # (image_id, flipped, reason) dropped by filter_roidb
    bbox_means: np.ndarray | None  # float64 [K+1, 4] or None without bbox regression
    bbox_stds: np.ndarray | None
    cache_path: Path | None = None
    from_cache: bool = False
    #: ``skipped: <file>: <reason>`` lines of the readers and of filter_roidb (see frcnn_trt.data.skipped)
    skipped: list[str] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Box maths (numpy, float64, py-faster-rcnn's +1 geometry). The model-side versions live in boxes.py.


def bbox_overlaps_np(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` float64 with inclusive pixel ends (``lib/utils/bbox.pyx``: w = x2 - x1 + 1)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    q = np.asarray(query_boxes, dtype=np.float64).reshape(-1, 4)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    area_q = (q[:, 2] - q[:, 0] + 1) * (q[:, 3] - q[:, 1] + 1)
    iw = np.minimum(b[:, None, 2], q[None, :, 2]) - np.maximum(b[:, None, 0], q[None, :, 0]) + 1
    ih = np.minimum(b[:, None, 3], q[None, :, 3]) - np.maximum(b[:, None, 1], q[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_b[:, None] + area_q[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(inter > 0, inter / union, 0.0)
    return out


def bbox_transform_np(ex_rois: np.ndarray, gt_rois: np.ndarray) -> np.ndarray:
    """py-faster-rcnn ``bbox_transform``: float64 ``[N, 4]`` (dx, dy, dw, dh) with +1 widths."""
    ex = np.asarray(ex_rois, dtype=np.float64)
    gt = np.asarray(gt_rois, dtype=np.float64)
    ex_w = ex[:, 2] - ex[:, 0] + 1.0
    ex_h = ex[:, 3] - ex[:, 1] + 1.0
    ex_cx = ex[:, 0] + 0.5 * ex_w
    ex_cy = ex[:, 1] + 0.5 * ex_h
    gt_w = gt[:, 2] - gt[:, 0] + 1.0
    gt_h = gt[:, 3] - gt[:, 1] + 1.0
    gt_cx = gt[:, 0] + 0.5 * gt_w
    gt_cy = gt[:, 1] + 0.5 * gt_h
    return np.stack([(gt_cx - ex_cx) / ex_w, (gt_cy - ex_cy) / ex_h, np.log(gt_w / ex_w), np.log(gt_h / ex_h)], axis=1)


#: the most IoU values computed at once (a row chunk of the [N, M] matrix): memory stays bounded in the
#: number of objects of one image (20,000 gt boxes would otherwise need a 3 GB float64 matrix per temporary)
OVERLAP_CHUNK = 1 << 20


def best_overlaps(boxes: np.ndarray, query_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(argmax, max)`` over ``query_boxes`` of each row of :func:`bbox_overlaps_np` ``(boxes, query_boxes)``,
    computed in row chunks of at most :data:`OVERLAP_CHUNK` values. Each row's IoUs are computed exactly as
    the full matrix would hold them, so the result is identical to ``iou.argmax(1)``, ``iou.max(1)``."""
    n, m = int(boxes.shape[0]), int(query_boxes.shape[0])
    arg = np.zeros(n, dtype=np.int64)
    best = np.zeros(n, dtype=np.float64)
    step = max(1, OVERLAP_CHUNK // max(m, 1))
    for start in range(0, n, step):
        iou = bbox_overlaps_np(boxes[start:start + step], query_boxes)
        a = iou.argmax(axis=1)
        arg[start:start + step] = a
        best[start:start + step] = iou[np.arange(iou.shape[0]), a]
    return arg, best


def _flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """x1' = W - x2 - 1, x2' = W - x1 - 1 (computed in float64, stored float32)."""
    b = boxes.astype(np.float64)
    out = b.copy()
    out[:, 0] = width - b[:, 2] - 1
    out[:, 2] = width - b[:, 0] - 1
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The chain.


def _check_boxes(boxes: np.ndarray, what: str) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DatasetError(f"{what}: boxes must be [N, 4], got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise DatasetError(f"{what}: boxes contain NaN/inf")
    bad = np.nonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
    if bad.size:
        raise DatasetError(f"{what}: box {int(bad[0])} has x2 < x1 or y2 < y1: {boxes[bad[0]].tolist()}")


def gt_roidb(annotations: Sequence[ImageAnnotation], *, num_classes: int, use_diff: bool = False) -> list[RoidbEntry]:
    """One entry per image with its ground truth (``pascal_voc.gt_roidb``).

    ``annotations``: :class:`~frcnn_trt.data.imdb.ImageAnnotation` s; ``num_classes`` = K + 1. Difficult
    objects are dropped unless ``use_diff``; an image left with no object is kept here (``filter_roidb``
    reports it). Width/height are taken from the annotation (0 = unknown, read later from the header).
    """
    entries: list[RoidbEntry] = []
    for ann in annotations:
        what = f"image {ann.image_id!r} ({ann.path})"
        boxes = np.asarray(ann.boxes, dtype=np.float32).reshape(-1, 4)
        classes = np.asarray(ann.classes, dtype=np.int64).reshape(-1)
        difficult = np.asarray(ann.difficult, dtype=bool).reshape(-1)
        if difficult.size == 0:
            difficult = np.zeros(boxes.shape[0], dtype=bool)
        if classes.shape[0] != boxes.shape[0] or difficult.shape[0] != boxes.shape[0]:
            raise DatasetError(
                f"{what}: {boxes.shape[0]} boxes but {classes.shape[0]} classes / {difficult.shape[0]} difficult flags"
            )
        _check_boxes(boxes, what)
        if classes.size and (classes.min() < 1 or classes.max() >= num_classes):
            raise DatasetError(f"{what}: class index out of 1..{num_classes - 1}: {sorted(set(classes.tolist()))}")
        keep = np.ones_like(difficult) if use_diff else ~difficult
        g = int(keep.sum())
        entries.append(
            RoidbEntry(
                image_id=str(ann.image_id),
                image=Path(ann.path),
                width=int(ann.width or 0),
                height=int(ann.height or 0),
                flipped=False,
                boxes=np.ascontiguousarray(boxes[keep]),
                gt_classes=classes[keep].copy(),
                max_overlaps=np.ones(g, dtype=np.float32),
                max_classes=classes[keep].copy(),
                num_classes=int(num_classes),
            )
        )
    return entries


def _resolve_size(entry: RoidbEntry) -> None:
    if entry.width <= 0 or entry.height <= 0:
        entry.width, entry.height = image_size(entry.image)


def append_flipped_images(roidb: Sequence[RoidbEntry]) -> list[RoidbEntry]:
    """``roidb`` followed by a horizontally flipped copy of every entry (``imdb.append_flipped_images``).

    All boxes (gt and proposals) are flipped in float: x1' = W - x2 - 1, x2' = W - x1 - 1. Ground-truth boxes
    must lie inside the image (0 <= x1 <= x2 <= W - 1); a box outside raises DatasetError naming the image.
    Proposals are only required to have x2 >= x1 (RPN proposals divided by the image scale can pass W - 1
    by less than a pixel, as in py-faster-rcnn).
    """
    flipped: list[RoidbEntry] = []
    for e in roidb:
        if e.flipped:
            raise ValueError(f"append_flipped_images: entry {e.image_id!r} is already flipped")
        if e.bbox_targets is not None:
            raise ValueError("append_flipped_images must run before add_bbox_regression_targets")
        _resolve_size(e)
        what = f"image {e.image_id!r} ({e.image}, width {e.width})"
        _check_boxes(e.boxes, what)
        gt = e.gt_classes > 0
        gtb = e.boxes[gt]
        outside = np.nonzero((gtb[:, 0] < 0) | (gtb[:, 2] > e.width - 1))[0]
        if outside.size:
            raise DatasetError(
                f"{what}: ground-truth box {gtb[outside[0]].tolist()} lies outside the image "
                f"(x must be in 0..{e.width - 1}); fix or clip the annotation"
            )
        boxes = _flip_boxes(e.boxes, e.width)
        if not (boxes[:, 2] >= boxes[:, 0]).all():  # cannot happen after the checks above; kept as a guard
            raise DatasetError(f"{what}: flipping produced x2 < x1")
        flipped.append(dataclasses.replace(e, flipped=True, boxes=boxes))
    return list(roidb) + flipped


def merge_proposals(roidb: Sequence[RoidbEntry], proposals: Mapping[str, np.ndarray]) -> list[RoidbEntry]:
    """Append stored proposals after each entry's gt boxes (``create_roidb_from_box_list``, ``merge_roidbs``).

    ``proposals`` maps image_id to float32 ``[P, 4]`` boxes in original (unflipped) image coordinates;
    flipped entries get them flipped. Each proposal row's overlap is its best +1 IoU with a gt box, at
    that box's class (IoU computed in unflipped coordinates, so an image and its flip agree exactly).
    """
    seen: set[tuple[str, bool]] = set()
    out: list[RoidbEntry] = []
    for e in roidb:
        if (e.image_id, e.flipped) in seen:
            raise DatasetError(f"image id {e.image_id!r} occurs twice in the roidb: proposals would be ambiguous")
        seen.add((e.image_id, e.flipped))
        if (e.gt_classes == 0).any():
            raise ValueError(f"merge_proposals: entry {e.image_id!r} already holds non-gt RoIs")
        if e.image_id not in proposals:
            raise DatasetError(f"no proposals for image {e.image_id!r} ({e.image})")
        props = np.asarray(proposals[e.image_id], dtype=np.float32)
        if props.size == 0:
            props = props.reshape(0, 4)
        what = f"proposals of image {e.image_id!r}"
        if props.ndim != 2 or props.shape[1] != 4:
            raise DatasetError(f"{what}: expected [P, 4] boxes, got shape {props.shape}")
        _check_boxes(props, what)
        gt_boxes = e.boxes
        if e.flipped:
            _resolve_size(e)
            gt_boxes = _flip_boxes(e.boxes, e.width)
        p = props.shape[0]
        p_over = np.zeros(p, dtype=np.float32)
        p_cls = np.zeros(p, dtype=np.int64)
        if gt_boxes.shape[0] > 0 and p > 0:
            arg, best = best_overlaps(props, gt_boxes)
            pos = best > 0
            p_over[pos] = best[pos]
            p_cls[pos] = e.gt_classes[arg[pos]]
        stored = _flip_boxes(props, e.width) if e.flipped else props
        out.append(
            dataclasses.replace(
                e,
                boxes=np.concatenate([e.boxes, stored]).astype(np.float32, copy=False),
                gt_classes=np.concatenate([e.gt_classes, np.zeros(p, dtype=np.int64)]),
                max_overlaps=np.concatenate([e.max_overlaps, p_over]).astype(np.float32, copy=False),
                max_classes=np.concatenate([e.max_classes, p_cls]),
            )
        )
    return out


def prepare_roidb(roidb: Sequence[RoidbEntry]) -> None:
    """In place: fill width/height from image headers where unknown; check max_overlaps/max_classes.

    (py-faster-rcnn's ``prepare_roidb`` derives max_overlaps/max_classes from the dense gt_overlaps; here they
    are what an entry stores, so this checks its invariants: zero overlap <=> background class.)
    """
    for e in roidb:
        _resolve_size(e)
        r = e.num_rois
        if e.gt_classes.shape != (r,) or e.max_overlaps.shape != (r,) or e.max_classes.shape != (r,):
            raise DatasetError(f"roidb entry {e.image_id!r}: arrays disagree on the number of RoIs ({r})")
        zero = e.max_overlaps == 0
        if (e.max_classes[zero] != 0).any() or (e.max_classes[~zero] == 0).any():
            raise DatasetError(f"roidb entry {e.image_id!r}: max_classes inconsistent with max_overlaps")


def _compute_targets(rois: np.ndarray, overlaps: np.ndarray, labels: np.ndarray, bbox_thresh: float) -> np.ndarray:
    """float32 ``[R, 5]`` (class, dx, dy, dw, dh) to the best gt RoI for RoIs with overlap >= bbox_thresh.

    The "gt RoIs" are the rows with overlap exactly 1 (py-faster-rcnn). Such a row's IoU with itself is exactly
    1.0, the largest an IoU can be, so its best gt RoI is an identical box and its target is exactly zero: only
    the other rows are matched, in chunks (:func:`best_overlaps`), so memory stays bounded in the number of
    objects of one image and the result is the one the full ``[E, G]`` matrix gives.
    """
    targets = np.zeros((rois.shape[0], 5), dtype=np.float32)
    gt_inds = np.nonzero(overlaps == 1)[0]
    if gt_inds.size == 0:
        return targets
    ex_inds = np.nonzero(overlaps >= bbox_thresh)[0]
    if ex_inds.size == 0:
        return targets
    targets[ex_inds, 0] = labels[ex_inds]
    rest = ex_inds[overlaps[ex_inds] != 1]
    if rest.size:
        arg, _ = best_overlaps(rois[rest], rois[gt_inds])
        targets[rest, 1:] = bbox_transform_np(rois[rest], rois[gt_inds[arg]])
    return targets


def add_bbox_regression_targets(
    roidb: Sequence[RoidbEntry],
    *,
    num_classes: int,
    bbox_thresh: float = 0.5,
    normalize_targets: bool = True,
    precomputed: bool = False,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
    eps: float = 1e-14,
) -> tuple[np.ndarray, np.ndarray]:
    """Set ``bbox_targets`` of every entry (in place) and return the per-class ``(means, stds)`` ``[K+1, 4]``.

    Targets: for RoIs with max_overlap >= ``bbox_thresh``, the +1 ``bbox_transform`` to the best gt RoI
    (a RoI with overlap exactly 1). Statistics: ``precomputed`` tiles ``means``/``stds``; otherwise the
    empirical per-class mean and ``sqrt(E[x^2] - E[x]^2)`` over all entries (counts start at ``eps``; class 0
    and classes without targets get mean 0, std 0 as in py-faster-rcnn; a class with targets but zero
    variance gets std 1). With ``normalize_targets`` rows of class c >= 1 become ``(t - mean_c) / std_c``.
    The returned values un-normalise ``bbox_pred`` at snapshot time (``W *= std``, ``b = b * std + mean``).
    """
    if len(roidb) == 0:
        raise DatasetError("add_bbox_regression_targets: the roidb is empty")
    for e in roidb:
        if e.num_classes != num_classes:
            raise ValueError(f"entry {e.image_id!r} has {e.num_classes} classes, expected {num_classes}")
        e.bbox_targets = _compute_targets(e.boxes, e.max_overlaps, e.max_classes, bbox_thresh)

    if precomputed:
        means_a = np.tile(np.asarray(means, dtype=np.float64).reshape(1, 4), (num_classes, 1))
        stds_a = np.tile(np.asarray(stds, dtype=np.float64).reshape(1, 4), (num_classes, 1))
    else:
        all_t = np.concatenate([e.bbox_targets for e in roidb if e.bbox_targets is not None])
        cls = all_t[:, 0].astype(np.int64)
        vals = all_t[:, 1:].astype(np.float64)
        sel = cls > 0
        counts = np.zeros((num_classes, 1)) + eps
        sums = np.zeros((num_classes, 4))
        squared = np.zeros((num_classes, 4))
        np.add.at(counts[:, 0], cls[sel], 1.0)
        np.add.at(sums, cls[sel], vals[sel])
        np.add.at(squared, cls[sel], vals[sel] ** 2)
        means_a = sums / counts
        var = squared / counts - means_a**2
        stds_a = np.sqrt(np.clip(var, 0.0, None))
        degenerate = (counts >= 1.0) & (stds_a <= 0.0)
        if degenerate.any():
            flat = sorted(set(np.nonzero(degenerate)[0].tolist()))
            logger.warning("bbox targets of class(es) %s have zero variance: std set to 1", flat)
            stds_a = np.where(degenerate, 1.0, stds_a)

    if normalize_targets:
        for e in roidb:
            t = e.bbox_targets
            assert t is not None
            rows = np.nonzero(t[:, 0] > 0)[0]
            if rows.size:
                c = t[rows, 0].astype(np.int64)
                # float32 -= float64, then /= float64: rounded to float32 after each step, as numpy in place.
                centred = (t[rows, 1:].astype(np.float64) - means_a[c]).astype(np.float32)
                t[rows, 1:] = (centred.astype(np.float64) / stds_a[c]).astype(np.float32)
    return means_a, stds_a


def filter_roidb(
    roidb: Sequence[RoidbEntry], *, fg_thresh: float, bg_thresh_hi: float, bg_thresh_lo: float
) -> tuple[list[RoidbEntry], list[tuple[str, bool, str]]]:
    """Keep entries with a fg (IoU >= fg_thresh) or bg (lo <= IoU < hi) RoI (``train.filter_roidb``).

    Returns ``(kept, removed)``; ``removed`` holds ``(image_id, flipped, reason)``. An entry without RoIs is
    an image whose objects were all dropped (difficult) or absent: it cannot train the RPN (no gt box), and
    py-faster-rcnn's rule removes it too; its reason says so.
    """
    kept: list[RoidbEntry] = []
    removed: list[tuple[str, bool, str]] = []
    for e in roidb:
        ov = e.max_overlaps
        if ov.size == 0:
            removed.append((e.image_id, e.flipped, "no ground-truth boxes (none annotated or all difficult)"))
            continue
        has_fg = bool((ov >= fg_thresh).any())
        has_bg = bool(((ov < bg_thresh_hi) & (ov >= bg_thresh_lo)).any())
        if has_fg or has_bg:
            kept.append(e)
        else:
            removed.append(
                (
                    e.image_id,
                    e.flipped,
                    f"no RoI with IoU >= {fg_thresh} (fg) or in [{bg_thresh_lo}, {bg_thresh_hi}) (bg)",
                )
            )
    return kept, removed
