"""The outcome of an evaluation: per-class AP, the mean, and the settings that produced them.

AP values are fractions in [0, 1]. A class without (non-difficult / non-crowd) ground truth has AP NaN and
is left out of the mean; ``to_json`` writes NaN as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ClassResult", "EvalResult"]


def _json_float(v: float | None) -> float | None:
    if v is None or math.isnan(v):
        return None
    return float(v)


@dataclass(frozen=True)
class ClassResult:
    """One class: ``ap`` (NaN when ``npos == 0``), ground truth ``npos`` and ``num_detections``.

    ``extra`` holds metric-specific numbers (VOC: ``recall``, the final recall; COCO: ``AP50``, ``AP75``).
    ``recall`` / ``precision`` are the VOC PR curve in sorted-detection order (None for COCO).
    """

    class_id: int
    name: str
    ap: float
    npos: int
    num_detections: int
    extra: Mapping[str, float] = field(default_factory=dict)
    recall: np.ndarray | None = field(default=None, repr=False, compare=False)
    precision: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class_id": self.class_id,
            "name": self.name,
            "ap": _json_float(self.ap),
            "npos": self.npos,
            "num_detections": self.num_detections,
        }
        out.update({k: _json_float(v) for k, v in self.extra.items()})
        return out


@dataclass(frozen=True)
class EvalResult:
    """Per-class results and their mean.

    ``metric``: ``"voc07"`` (11-point AP), ``"voc"`` (area under the precision envelope) or ``"coco"``
    (AP@[.50:.95], 101-point). ``mean_ap`` is the plain mean of the non-NaN class APs (NaN if none);
    ``summary`` holds the headline numbers (VOC: ``mAP``; COCO: ``AP``, ``AP50``, ``AP75``, ``APs``,
    ``APm``, ``APl``); ``settings`` how they were computed.
    """

    metric: str
    per_class: tuple[ClassResult, ...]
    mean_ap: float
    num_images: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, float] = field(default_factory=dict)

    @property
    def ap_by_class(self) -> dict[str, float]:
        return {c.name: c.ap for c in self.per_class}

    def __getitem__(self, name: str) -> ClassResult:
        for c in self.per_class:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN -> null)."""
        return {
            "metric": self.metric,
            "mAP": _json_float(self.mean_ap),
            "num_images": self.num_images,
            "num_classes_evaluated": sum(not math.isnan(c.ap) for c in self.per_class),
            "summary": {k: _json_float(v) for k, v in self.summary.items()},
            "settings": dict(self.settings),
            "per_class": [c.to_json() for c in self.per_class],
        }
