"""One image's detections, or its proposals: the result type every inference path shares.

Glossary: ``D`` detections (or proposals) of one image, ``n`` images, ``K`` classes including background.

:meth:`Detector.detect <frcnn_trt.engines.detector.Detector.detect>`, :meth:`~frcnn_trt.engines.detector.
Detector.propose`, the runner over many images (:mod:`frcnn_trt.engines.runner`) and everything built on it
(``detect``, ``test``, alt-opt's ``rpn_generate``) hand one :class:`ImageDetections` per image around.
Proposals are the same type without classes (``labels`` is ``None``). Evaluation reads detection *files*
into float64 arrays of its own (:class:`frcnn_trt.evaluation.DetectionArrays`).

:func:`pack` / :func:`unpack` turn a list of them into plain named arrays and back (what travels between
torchrun processes: npz, never pickle); a round trip gives the same arrays bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ImageDetections", "pack", "unpack"]


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections in original-image pixels (0-based inclusive x1, y1, x2, y2).

    ``boxes`` float32 ``[D, 4]``, ``scores`` float32 ``[D]``, ``labels`` int64 ``[D]`` (class index ≥ 1;
    ``None`` for proposals, which have no class), ``label_names`` the class name of each detection. Detections
    are sorted by class, then descending score; proposals by descending score. ``image_id`` names the image
    in a run (empty for a bare :meth:`Detector.detect` call); ``size`` is its original ``(height, width)``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None = None
    label_names: list[str] = field(default_factory=list)
    image_id: str = ""
    size: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def is_proposals(self) -> bool:
        """Class-agnostic boxes (``rpn_generate``), not detections."""
        return self.labels is None

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def named(self, image_id: str) -> ImageDetections:
        """The same detections, as those of image ``image_id``."""
        return dataclasses.replace(self, image_id=image_id)


def pack(items: Sequence[ImageDetections | None]) -> dict[str, np.ndarray]:
    """Named arrays holding ``items`` (``None``: an image without a result, e.g. unreadable).

    ``counts [n]``, ``sizes [n, 2]``, ``present [n]``, ``boxes [ΣD, 4]``, ``scores [ΣD]`` and, when the items
    are detections, ``labels [ΣD]``. Image ids are not packed (the caller knows them).
    """
    real = [d for d in items if d is not None]
    with_labels = bool(real) and not real[0].is_proposals
    out = {
        "counts": np.array([len(d) if d is not None else 0 for d in items], np.int64),
        "sizes": np.array([d.size if d is not None else (0, 0) for d in items], np.int64).reshape(-1, 2),
        "present": np.array([d is not None for d in items], bool),
        "boxes": np.concatenate([d.boxes for d in real]).reshape(-1, 4) if real else np.zeros((0, 4), np.float32),
        "scores": np.concatenate([d.scores for d in real]) if real else np.zeros(0, np.float32),
    }
    if with_labels:
        out["labels"] = np.concatenate([d.labels for d in real])  # type: ignore[misc]
    return out


def unpack(arrays: dict[str, np.ndarray], class_names: Sequence[str], image_ids: Sequence[str]) -> list[
        ImageDetections | None]:
    """Undo :func:`pack`; ``image_ids`` names the items in order, ``class_names`` gives ``label_names``."""
    counts = arrays["counts"].tolist()
    if len(counts) != len(image_ids):
        raise ValueError(f"{len(counts)} packed images for {len(image_ids)} image ids")
    labels = arrays.get("labels")
    ends = np.cumsum(counts).tolist()
    out: list[ImageDetections | None] = []
    for c, e, (h, w), present, image_id in zip(counts, ends, arrays["sizes"].tolist(), arrays["present"].tolist(),
                                               image_ids, strict=True):
        if not present:
            out.append(None)
            continue
        lab = labels[e - c:e] if labels is not None else None
        names = [class_names[i] for i in lab.tolist()] if lab is not None else []
        out.append(ImageDetections(arrays["boxes"][e - c:e], arrays["scores"][e - c:e], lab, names, image_id,
                                   (int(h), int(w))))
    return out
