"""The training data loader: py-faster-rcnn's ``RoIDataLayer`` as a ``torch.utils.data`` pipeline.

Glossary: N images per batch (``IMS_PER_BATCH``); E roidb entries; G_i gt boxes and R_i RoIs (gt rows
first, then proposals; Fast R-CNN stages only) of image i; H, W the padded blob size.

Order (``lib/roi_data_layer/layer.py``, reproduced exactly by :class:`AspectGroupedBatchSampler`): the roidb
indices are permuted -- with ``ASPECT_GROUPING`` the horizontal (w >= h) and vertical entries separately,
then concatenated, cut into **pairs** (also when ``IMS_PER_BATCH`` = 1) and the pairs permuted. Batches
are ``IMS_PER_BATCH`` consecutive indices; a new permutation is drawn when ``cur + IMS_PER_BATCH >= E``,
so the last batch of every pass is never used (py-faster-rcnn's quirk, kept). One scale index per image
is drawn from ``SCALES`` for every batch (py-faster-rcnn's ``get_minibatch``).

Determinism: every random draw happens in the main process, from a ``numpy.random.Generator`` seeded by
``seed`` (the order) and from one seeded per global batch number (the scales), so batches do not depend on
``num_workers`` and :func:`make_train_loader` can start at any iteration (resume) without loading images.
Sharding (``num_replicas``/``rank``): every rank computes the same batch stream; step k is the k-th group
of ``num_replicas`` consecutive batches drawn from one permutation and rank r takes the r-th batch of it,
so the ranks of a step never share an image (a pass's incomplete last group is skipped, like the last
batch; with one replica the order is exactly py-faster-rcnn's).

The Fast R-CNN RoI sampling (64 RoIs, 25 % fg) is **not** done here: it runs on the model's device in
``frcnn_trt.targets``. This loader hands over every RoI of an image, scaled by the image scale (not rounded),
with its max_overlaps, max_classes and normalised regression targets.

An image that fails to load (changed or deleted after the roidb's image check) is skipped, named in a warning
and its place in the batch taken by the next readable entry; too many failures stop the run with a
:class:`~frcnn_trt.errors.DatasetError` (:mod:`frcnn_trt.data.load_failures`). Nothing changes while every
image loads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from frcnn_trt.config import Config
from frcnn_trt.data.batch import Batch, Sample, collate_batch
from frcnn_trt.data.blob import prep_im_for_blob
from frcnn_trt.data.images import DEFAULT_MAX_PIXELS, read_image
from frcnn_trt.data.load_failures import FailureBoard
from frcnn_trt.data.roidb_chain import RoidbEntry
from frcnn_trt.errors import DatasetError

__all__ = [
    "AspectGroupedBatchSampler",
    "Batch",
    "RoidbDataset",
    "Sample",
    "collate_batch",
    "make_train_loader",
    "make_train_loader_from_config",
]

_SCALE_STREAM = 0x5CA1E  # separates the per-batch scale draws from other uses of the seed


# --------------------------------------------------------------------------------------------------
# Order.


class AspectGroupedBatchSampler:
    """Batches of roidb indices in py-faster-rcnn's ``RoIDataLayer`` order (see the module docstring).

    Yields ``max_iters - start_iter`` batches (endless when ``max_iters`` is None) for this ``rank``,
    starting at iteration ``start_iter``; every ``iter()`` starts again from ``seed``.
    """

    def __init__(
        self,
        widths: Sequence[int] | np.ndarray,
        heights: Sequence[int] | np.ndarray,
        *,
        ims_per_batch: int,
        seed: int,
        aspect_grouping: bool = True,
        start_iter: int = 0,
        max_iters: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.widths = np.asarray(widths, dtype=np.int64).reshape(-1)
        self.heights = np.asarray(heights, dtype=np.int64).reshape(-1)
        if self.widths.shape != self.heights.shape:
            raise ValueError(f"{self.widths.size} widths but {self.heights.size} heights")
        n = self.widths.size
        if ims_per_batch < 1:
            raise ValueError(f"ims_per_batch must be >= 1, got {ims_per_batch}")
        if n < ims_per_batch:
            raise DatasetError(f"the roidb has {n} entries, fewer than IMS_PER_BATCH = {ims_per_batch}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank {rank}, num_replicas {num_replicas}")
        if start_iter < 0 or (max_iters is not None and max_iters < start_iter):
            raise ValueError(f"need 0 <= start_iter <= max_iters, got {start_iter}, {max_iters}")
        self.ims_per_batch = int(ims_per_batch)
        self.seed = int(seed)
        self.aspect_grouping = bool(aspect_grouping)
        self.start_iter = int(start_iter)
        self.max_iters = None if max_iters is None else int(max_iters)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        if self.num_replicas > self.batches_per_pass():
            raise DatasetError(
                f"the roidb has {n} entries: {self.batches_per_pass()} batch(es) of {ims_per_batch} per "
                f"pass, fewer than num_replicas = {num_replicas}"
            )

    def _permutation(self, rng: np.random.Generator) -> np.ndarray:
        """``_shuffle_roidb_inds``: draws in the original order (horizontal, vertical, pairs)."""
        n = self.widths.size
        if not self.aspect_grouping:
            return rng.permutation(np.arange(n))
        horz = self.widths >= self.heights
        inds = np.concatenate([rng.permutation(np.nonzero(horz)[0]), rng.permutation(np.nonzero(~horz)[0])])
        # py-faster-rcnn reshapes to (-1, 2) and fails for an odd count; the odd one out forms its own group.
        even = n - n % 2
        groups = [inds[i : i + 2] for i in range(0, even, 2)]
        if n % 2:
            groups.append(inds[even:])
        order = rng.permutation(np.arange(len(groups)))
        return np.concatenate([groups[g] for g in order]).astype(np.int64)

    def batches_per_pass(self) -> int:
        """Batches drawn from one permutation: positions 0, B, 2B, ... while ``cur + B < E`` (at least 1)."""
        n, b = self.widths.size, self.ims_per_batch
        return max(1, -(-(n - b) // b))

    def global_batches(self) -> Iterator[tuple[int, list[int]]]:
        """The endless py-faster-rcnn batch stream, as ``(permutation number, batch)``."""
        rng = np.random.default_rng(self.seed)
        n = self.widths.size
        perm_id, perm = 0, self._permutation(rng)
        cur = 0
        while True:
            if cur + self.ims_per_batch >= n:
                perm_id, perm = perm_id + 1, self._permutation(rng)
                cur = 0
            yield perm_id, perm[cur : cur + self.ims_per_batch].tolist()
            cur += self.ims_per_batch

    def steps(self) -> Iterator[list[list[int]]]:
        """The endless stream of steps: ``num_replicas`` consecutive batches of one permutation each.

        A pass whose batch count is not a multiple of ``num_replicas`` drops its incomplete last step, so
        the ranks of a step never share an image. With one replica this is exactly ``global_batches``.
        """
        chunk: list[list[int]] = []
        chunk_perm = -1
        for perm_id, batch in self.global_batches():
            if perm_id != chunk_perm:
                chunk, chunk_perm = [], perm_id
            chunk.append(batch)
            if len(chunk) == self.num_replicas:
                yield chunk
                chunk = []

    def iter_with_index(self) -> Iterator[tuple[int, list[int]]]:
        """``(global batch number, batch)`` for this rank's iterations ``start_iter`` .. ``max_iters - 1``."""
        steps = self.steps()
        it = 0
        while it < self.start_iter:  # fast-forward: indices only, no image is loaded
            next(steps)
            it += 1
        while self.max_iters is None or it < self.max_iters:
            yield it * self.num_replicas + self.rank, next(steps)[self.rank]
            it += 1

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self.iter_with_index():
            yield batch

    def __len__(self) -> int:
        if self.max_iters is None:
            raise TypeError("an endless AspectGroupedBatchSampler has no length")
        return self.max_iters - self.start_iter


class _ScaledBatchSampler:
    """Adds one scale index per image (``npr.randint(0, len(SCALES))``) to each batch of the sampler."""

    def __init__(self, sampler: AspectGroupedBatchSampler, num_scales: int, failures: FailureBoard | None = None
                 ) -> None:
        self.sampler = sampler
        self.num_scales = int(num_scales)
        self.failures = failures

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # runs in the main process: the place where too many load failures (seen by the workers) stop the run
        for g, batch in self.sampler.iter_with_index():
            if self.failures is not None:
                self.failures.check()
            if self.num_scales == 1:
                scale_inds = [0] * len(batch)
            else:
                rng = np.random.default_rng([self.sampler.seed, _SCALE_STREAM, g])
                scale_inds = rng.integers(0, self.num_scales, size=len(batch)).tolist()
            yield list(zip(batch, scale_inds, strict=True))
        if self.failures is not None:
            self.failures.check()

    def __len__(self) -> int:
        return len(self.sampler)


# --------------------------------------------------------------------------------------------------
# Loading samples (Sample, Batch and collate_batch live in frcnn_trt.data.batch).


class RoidbDataset(Dataset):
    """Loads roidb entries: image (flipped if needed), prep_im_for_blob at a scale, scaled boxes and RoIs.

    Items are addressed by ``(roidb index, scale index)`` (a bare index means scale index 0). With
    ``with_rois`` (default: when some entry holds proposal rows) samples carry every RoI of the entry.
    An image over ``max_pixels`` or unreadable is skipped (see the module docstring); ``failures`` is the board
    shared with the workers (one is made when not given).
    """

    def __init__(
        self,
        roidb: Sequence[RoidbEntry],
        *,
        scales: Sequence[int],
        max_size: int,
        pixel_means: Sequence[float],
        with_rois: bool | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        failures: FailureBoard | None = None,
    ) -> None:
        if len(scales) == 0:
            raise ValueError("scales must hold at least one target size")
        self.scales = tuple(int(s) for s in scales)
        self.max_size = int(max_size)
        self.pixel_means = np.asarray(pixel_means, dtype=np.float64).reshape(3)
        if with_rois is None:
            with_rois = any(bool((e.gt_classes == 0).any()) for e in roidb)
        self.with_rois = bool(with_rois)
        self.max_pixels = int(max_pixels)
        self.failures = failures if failures is not None else FailureBoard([e.image for e in roidb])
        # Only what loading needs (no dense gt_overlaps), so worker processes stay small.
        self._records = [
            (
                e.image_id,
                Path(e.image),
                int(e.width),
                int(e.height),
                bool(e.flipped),
                e.boxes,
                e.gt_classes,
                e.max_overlaps if self.with_rois else None,
                e.max_classes if self.with_rois else None,
                e.bbox_targets if self.with_rois else None,
            )
            for e in roidb
        ]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        """The sample of entry ``index``, or of the next readable entry when its image fails to load."""
        index, scale_ind = (key, 0) if isinstance(key, (int, np.integer)) else key
        skipped: list[tuple[str, str]] = []
        n = len(self._records)
        for step in range(min(n, self.failures.cap + 1)):
            j = (int(index) + step) % n
            if self.failures.is_bad(j):
                skipped.append((str(self._records[j][1]), "failed to load earlier in this run"))
                continue
            try:
                sample = self._load(j, int(scale_ind))
            except DatasetError as exc:  # ImageError included: the file changed or went away after the check
                self.failures.mark(j, str(exc))
                skipped.append((str(self._records[j][1]), str(exc)))
                continue
            sample.skipped = skipped
            return sample
        self.failures.check()
        raise DatasetError(f"no readable image found for roidb entry {index} ({len(skipped)} tried)")

    def _load(self, index: int, scale_ind: int) -> Sample:
        image_id, path, width, height, flipped, boxes, gt_classes, max_ov, max_cls, targets = self._records[index]
        im = read_image(path, max_pixels=self.max_pixels, expect_size=(width, height) if width > 0 and height > 0
                        else None)
        if flipped:
            im = im[:, ::-1, :]
        image, im_scale = prep_im_for_blob(im, self.pixel_means, self.scales[int(scale_ind)], self.max_size)
        gt = gt_classes != 0
        sample = Sample(
            index=int(index),
            image_id=image_id,
            flipped=flipped,
            image=image,
            im_scale=im_scale,
            gt_boxes=(boxes[gt] * np.float32(im_scale)).astype(np.float32),
            gt_classes=gt_classes[gt].astype(np.int64),
            path=str(path),
        )
        if self.with_rois:
            sample.rois = (boxes * np.float32(im_scale)).astype(np.float32)
            sample.max_overlaps = np.asarray(max_ov, dtype=np.float32)
            sample.max_classes = np.asarray(max_cls, dtype=np.int64)
            if targets is not None:
                sample.bbox_targets = np.ascontiguousarray(targets[:, 1:], dtype=np.float32)
                sample.bbox_target_classes = targets[:, 0].astype(np.int64)
        return sample


def _worker_init(worker_id: int) -> None:
    """Nothing random happens in workers; seed them anyway so any future draw there is reproducible."""
    info = torch.utils.data.get_worker_info()
    seed = (info.seed if info is not None else worker_id) % 2**32
    np.random.seed(seed)


def make_train_loader(
    roidb: Sequence[RoidbEntry],
    *,
    ims_per_batch: int,
    scales: Sequence[int],
    max_size: int,
    pixel_means: Sequence[float],
    seed: int,
    max_iters: int,
    aspect_grouping: bool = True,
    start_iter: int = 0,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    with_rois: bool | None = None,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_failures: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` yielding the :class:`Batch` es of iterations ``start_iter`` .. ``max_iters - 1``.

    Workers (``num_workers`` > 0) load and resize images in the background; the batches are the same for
    any ``num_workers`` (all random draws happen in the sampler, in the main process). An image that fails to
    load is skipped and replaced; more than ``max_failures`` failed files (default ``max(10, 1 %)``) raise
    :class:`DatasetError` in the main process.
    """
    if len(roidb) == 0:
        raise DatasetError("cannot train on an empty roidb")
    if any(e.width <= 0 or e.height <= 0 for e in roidb):
        raise DatasetError("roidb entries without width/height: run prepare_roidb first")
    sampler = AspectGroupedBatchSampler(
        [e.width for e in roidb],
        [e.height for e in roidb],
        ims_per_batch=ims_per_batch,
        seed=seed,
        aspect_grouping=aspect_grouping,
        start_iter=start_iter,
        max_iters=max_iters,
        num_replicas=num_replicas,
        rank=rank,
    )
    failures = FailureBoard([e.image for e in roidb], cap=max_failures)
    dataset = RoidbDataset(roidb, scales=scales, max_size=max_size, pixel_means=pixel_means, with_rois=with_rois,
                           max_pixels=max_pixels, failures=failures)
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {
            "prefetch_factor": prefetch_factor,
            "worker_init_fn": _worker_init,
            "persistent_workers": False,
        }
    return DataLoader(
        dataset,
        batch_sampler=_ScaledBatchSampler(sampler, len(dataset.scales), failures),
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(int(seed)),
        **extra,
    )


def make_train_loader_from_config(
    roidb: Sequence[RoidbEntry],
    cfg: Config,
    *,
    max_iters: int,
    start_iter: int = 0,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """:func:`make_train_loader` with ``cfg.TRAIN`` (IMS_PER_BATCH, SCALES, MAX_SIZE, ASPECT_GROUPING),
    ``cfg.PIXEL_MEANS`` and ``cfg.RNG_SEED``."""
    t = cfg.TRAIN
    return make_train_loader(
        roidb,
        ims_per_batch=t.IMS_PER_BATCH,
        scales=t.SCALES,
        max_size=t.MAX_SIZE,
        pixel_means=cfg.PIXEL_MEANS,
        seed=cfg.RNG_SEED,
        max_iters=max_iters,
        aspect_grouping=t.ASPECT_GROUPING,
        start_iter=start_iter,
        num_workers=num_workers,
        num_replicas=num_replicas,
        rank=rank,
        pin_memory=pin_memory,
        max_pixels=cfg.MAX_IMAGE_PIXELS,
    )
