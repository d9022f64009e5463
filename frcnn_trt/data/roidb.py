"""The training roidb of an imdb: py-faster-rcnn's chain (:mod:`frcnn_trt.data.roidb_chain`), its images
checked (:mod:`frcnn_trt.data.image_check`), cached (:mod:`frcnn_trt.data.roidb_cache`).

:func:`build_training_roidb` runs::

    gt_roidb -> check images -> [merge_proposals] -> [append_flipped_images] -> prepare_roidb -> filter_roidb
             -> [add_bbox_regression_targets]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from frcnn_trt.config import Config
from frcnn_trt.data.image_check import ImageCheckReport, ImageRecord, check_images, image_cache_file, log_skips
from frcnn_trt.data.images import DEFAULT_MAX_PIXELS
from frcnn_trt.data.imdb import Imdb
from frcnn_trt.data.roidb_cache import CachedRoidb, cache_files, cache_key, load_cache, save_cache, writes_cache
from frcnn_trt.data.roidb_chain import (
    RoidbEntry,
    TrainingRoidb,
    add_bbox_regression_targets,
    append_flipped_images,
    filter_roidb,
    gt_roidb,
    merge_proposals,
    prepare_roidb,
)
from frcnn_trt.data.skipped import log_skipped, skipped_lines
from frcnn_trt.errors import DatasetError, FrcnnError

__all__ = ["ImageCheck", "build_training_roidb", "build_training_roidb_from_config"]

logger = logging.getLogger(__name__)


def _read_cache(json_path: Path, npz_path: Path, key: str) -> CachedRoidb | None:
    """The cached roidb, or None where there is none or it is unreadable, stale or corrupt (said in the log)."""
    if not json_path.exists():
        return None
    try:
        cached = load_cache(json_path, npz_path, key)
    except (FrcnnError, OSError, ValueError, KeyError, TypeError, IndexError, EOFError) as exc:
        logger.warning("roidb cache %s is unreadable or corrupt (%s); rebuilding", json_path, exc)
        return None
    return cached


@dataclass(frozen=True)
class ImageCheck:
    """How the images of a roidb are checked: ``mode`` (``header`` | ``full``), the decoded-pixel budget and
    where the checks are cached (None: not cached)."""

    mode: str = "header"
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_file: Path | None = None

    def run(self, records: Sequence[ImageRecord]) -> ImageCheckReport:
        return check_images(records, mode=self.mode, max_pixels=self.max_pixels, cache_file=self.cache_file,
                            write_cache=writes_cache())


def _cache_still_valid(cached: CachedRoidb, check: ImageCheck, json_path: Path) -> bool:
    """Whether the cached roidb's images still check as they did (unchanged files are answered by the cache)."""
    report = check.run(cached.images)
    if report.signature() != cached.image_signature:
        logger.info("images changed since the roidb cache %s was written; rebuilding", json_path)
        return False
    logger.info("roidb loaded from cache %s (%d entries)", json_path, len(cached.roidb.entries))
    return True


def _checked_gt_roidb(imdb: Imdb, check: ImageCheck, use_diff: bool) -> tuple[list[RoidbEntry], list[ImageRecord],
                                                                               ImageCheckReport]:
    """gt_roidb of the imdb with every image checked: sizes filled in (or corrected for EXIF), bad ones out."""
    entries = gt_roidb(imdb.annotations(), num_classes=int(imdb.num_classes), use_diff=use_diff)
    records = [ImageRecord(e.image_id, Path(e.image), int(e.width), int(e.height)) for e in entries]
    report = check.run(records)
    log_skips(report.skipped, str(imdb.name))
    kept = []
    for e, size in zip(entries, report.sizes, strict=True):
        if size is not None:
            e.width, e.height = size
            kept.append(e)
    return kept, records, report


def build_training_roidb(
    imdb: Imdb,
    *,
    use_flipped: bool = True,
    use_diff: bool = False,
    proposals: Mapping[str, np.ndarray] | None = None,
    bbox_reg: bool = True,
    bbox_thresh: float = 0.5,
    normalize_targets: bool = True,
    precomputed: bool = False,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
    fg_thresh: float = 0.5,
    bg_thresh_hi: float = 0.5,
    bg_thresh_lo: float = 0.1,
    eps: float = 1e-14,
    cache_dir: str | Path | None = None,
    verify_images: str = "header",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> TrainingRoidb:
    """The training roidb of ``imdb``: gt [+ proposals] [+ flipped], prepared, filtered [+ bbox targets].

    ``imdb`` needs ``name``, ``num_classes`` (K + 1), ``annotations()`` and, with ``cache_dir``,
    ``fingerprint()``. ``proposals`` (alt-opt Fast R-CNN stages) map image_id to original-coordinate boxes.
    Every image is checked first (:mod:`frcnn_trt.data.image_check`, ``verify_images`` = ``header`` | ``full``,
    ``max_pixels`` the decoded-pixel budget): a bad one is left out and listed in ``removed`` as
    ``(image_id, False, "<file>: <reason>")``. With ``cache_dir`` the result is cached as npz + JSON
    keyed by the imdb fingerprint, every setting and the proposals' digest, and used while its images still
    check the same (the checks are cached too, by file stats); a stale, unreadable or corrupt cache is reported
    and rebuilt.
    """
    settings = {
        "use_flipped": bool(use_flipped),
        "use_diff": bool(use_diff),
        "bbox_reg": bool(bbox_reg),
        "bbox_thresh": float(bbox_thresh),
        "normalize_targets": bool(normalize_targets),
        "precomputed": bool(precomputed),
        "means": [float(v) for v in means],
        "stds": [float(v) for v in stds],
        "fg_thresh": float(fg_thresh),
        "bg_thresh_hi": float(bg_thresh_hi),
        "bg_thresh_lo": float(bg_thresh_lo),
        "eps": float(eps),
        "num_classes": int(imdb.num_classes),
    }
    check = ImageCheck(verify_images, int(max_pixels),
                       None if cache_dir is None else image_cache_file(Path(cache_dir), str(imdb.name)))
    json_path = npz_path = None
    key = ""
    if cache_dir is not None:
        key = cache_key(str(imdb.fingerprint()), str(imdb.name), settings, proposals)
        json_path, npz_path = cache_files(Path(cache_dir), str(imdb.name), key)
        cached = _read_cache(json_path, npz_path, key)
        if cached is not None and _cache_still_valid(cached, check, json_path):
            return cached.roidb

    roidb, records, report = _checked_gt_roidb(imdb, check, use_diff)
    if proposals is not None:
        roidb = merge_proposals(roidb, proposals)
    if use_flipped:
        roidb = append_flipped_images(roidb)
    prepare_roidb(roidb)
    kept, removed = filter_roidb(roidb, fg_thresh=fg_thresh, bg_thresh_hi=bg_thresh_hi, bg_thresh_lo=bg_thresh_lo)
    if removed:
        logger.info("filter_roidb removed %d of %d entries", len(removed), len(roidb))
    skipped = [f"skipped: {s.file}: {s.reason}" for s in report.skipped] + skipped_lines((), removed)
    removed = [(s.image_id, False, f"{s.file}: {s.reason}") for s in report.skipped] + removed
    if not kept:
        raise DatasetError(f"no usable training images in {imdb.name!r} ({len(removed)} entries filtered out or "
                           f"skipped{'; first: ' + removed[0][2] if removed else ''})")
    bbox_means = bbox_stds = None
    if bbox_reg:
        bbox_means, bbox_stds = add_bbox_regression_targets(
            kept,
            num_classes=int(imdb.num_classes),
            bbox_thresh=bbox_thresh,
            normalize_targets=normalize_targets,
            precomputed=precomputed,
            means=means,
            stds=stds,
            eps=eps,
        )
    result = TrainingRoidb(kept, removed, bbox_means, bbox_stds, skipped=skipped)
    if json_path is not None and npz_path is not None and save_cache(
        json_path, npz_path, key, result, records, report.signature()
    ):
        result.cache_path = json_path
        logger.info("roidb cached to %s", json_path)
    return result


def build_training_roidb_from_config(
    imdb: Imdb,
    cfg: Config,
    *,
    proposals: Mapping[str, np.ndarray] | None = None,
    cache_dir: str | Path | None = None,
) -> TrainingRoidb:
    """:func:`build_training_roidb` with settings from ``cfg.TRAIN`` and ``cfg.EPS``; the image check's mode and
    budget from ``cfg.TRAIN.VERIFY_IMAGES`` and ``cfg.MAX_IMAGE_PIXELS``."""
    t = cfg.TRAIN
    roidb = build_training_roidb(
        imdb,
        use_flipped=t.USE_FLIPPED,
        use_diff=t.USE_DIFF,
        proposals=proposals,
        bbox_reg=t.BBOX_REG,
        bbox_thresh=t.BBOX_THRESH,
        normalize_targets=t.BBOX_NORMALIZE_TARGETS,
        precomputed=t.BBOX_NORMALIZE_TARGETS_PRECOMPUTED,
        means=t.BBOX_NORMALIZE_MEANS,
        stds=t.BBOX_NORMALIZE_STDS,
        fg_thresh=t.FG_THRESH,
        bg_thresh_hi=t.BG_THRESH_HI,
        bg_thresh_lo=t.BG_THRESH_LO,
        eps=cfg.EPS,
        cache_dir=cache_dir,
        verify_images=t.VERIFY_IMAGES,
        max_pixels=cfg.MAX_IMAGE_PIXELS,
    )
    log_skipped(str(imdb.name), skipped_lines(getattr(imdb, "issues", ())) + roidb.skipped)
    return roidb
