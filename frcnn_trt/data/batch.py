"""Training samples and batches: what :class:`~frcnn_trt.data.loader.RoidbDataset` loads for one image
(:class:`Sample`, numpy, built in a worker) and what the model trains on (:class:`Batch`, torch tensors).

Glossary: N images per batch; G_i gt boxes and R_i RoIs of image i; H, W the padded blob size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

__all__ = ["Batch", "Sample", "collate_batch"]


@dataclass
class Sample:
    """One loaded training image (numpy, produced in a worker)."""

    index: int
    image_id: str
    flipped: bool
    image: np.ndarray  # float32 [H, W, 3] BGR, means subtracted, resized
    im_scale: float
    gt_boxes: np.ndarray  # float32 [G, 4], scaled
    gt_classes: np.ndarray  # int64 [G]
    rois: np.ndarray | None = None  # float32 [R, 4], scaled, not rounded
    max_overlaps: np.ndarray | None = None  # float32 [R]
    max_classes: np.ndarray | None = None  # int64 [R]
    bbox_targets: np.ndarray | None = None  # float32 [R, 4], normalised
    bbox_target_classes: np.ndarray | None = None  # int64 [R]: class of the target row (0 = no target)
    path: str = ""  # the image file
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) that failed before this one


@dataclass
class Batch:
    """A training batch of torch tensors (CPU until :meth:`to`)."""

    images: torch.Tensor  # float32 [N, 3, H, W], zero-padded, BGR
    im_info: torch.Tensor  # float32 [N, 3]: (scaled h, scaled w, scale) of each image
    gt_boxes: list[torch.Tensor]  # float32 [G_i, 4], scaled
    gt_classes: list[torch.Tensor]  # int64 [G_i]
    rois: list[torch.Tensor] | None = None  # float32 [R_i, 4], scaled (Fast R-CNN stages)
    roi_max_overlaps: list[torch.Tensor] | None = None  # float32 [R_i]
    roi_max_classes: list[torch.Tensor] | None = None  # int64 [R_i]
    roi_bbox_targets: list[torch.Tensor] | None = None  # float32 [R_i, 4], normalised
    roi_bbox_target_classes: list[torch.Tensor] | None = None  # int64 [R_i], 0 where no target
    indices: list[int] | None = None  # roidb indices
    image_ids: list[str] | None = None
    flipped: list[bool] | None = None
    paths: list[str] | None = None  # image files
    skipped: list[tuple[str, str]] | None = None  # (file, reason) of images that failed to load and were replaced

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    def _map(self, fn: Any) -> Batch:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = fn(v)
            elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                v = [fn(t) for t in v]
            out[f.name] = v
        return Batch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Used by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())


def collate_batch(samples: Sequence[Sample]) -> Batch:
    """Zero-pad the images into one ``[N, 3, H, W]`` blob and turn every array into a tensor."""
    if not samples:
        raise ValueError("collate_batch needs at least one sample")
    max_h = max(s.image.shape[0] for s in samples)
    max_w = max(s.image.shape[1] for s in samples)
    images = torch.zeros((len(samples), 3, max_h, max_w), dtype=torch.float32)
    for i, s in enumerate(samples):
        images[i, :, : s.image.shape[0], : s.image.shape[1]] = torch.from_numpy(s.image).permute(2, 0, 1)
    im_info = torch.tensor(
        [[float(s.image.shape[0]), float(s.image.shape[1]), s.im_scale] for s in samples], dtype=torch.float32
    )

    def tensors(name: str) -> list[torch.Tensor] | None:
        values = [getattr(s, name) for s in samples]
        if any(v is None for v in values):
            return None
        return [torch.from_numpy(np.ascontiguousarray(v)) for v in values]

    return Batch(
        images=images,
        im_info=im_info,
        gt_boxes=tensors("gt_boxes") or [],
        gt_classes=tensors("gt_classes") or [],
        rois=tensors("rois"),
        roi_max_overlaps=tensors("max_overlaps"),
        roi_max_classes=tensors("max_classes"),
        roi_bbox_targets=tensors("bbox_targets"),
        roi_bbox_target_classes=tensors("bbox_target_classes"),
        indices=[s.index for s in samples],
        image_ids=[s.image_id for s in samples],
        flipped=[s.flipped for s in samples],
        paths=[s.path for s in samples],
        skipped=[x for s in samples for x in s.skipped],
    )
