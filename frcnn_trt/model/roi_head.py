"""The Fast R-CNN predictor: ``cls_score`` and ``bbox_pred`` on top of the box head (fc6, fc7).

Glossary: ``N`` images, ``C`` feature channels, ``R`` RoIs, ``P`` pooled size, ``D`` fc7 width,
``K`` classes including background.

``bbox_pred`` regresses *normalised* targets while training (``(t − mean) / std`` per class, docs/REFERENCE.md §6);
the buffers ``bbox_means`` / ``bbox_stds`` ``[4K]`` turn its output back into raw deltas at inference, and
a saved checkpoint folds them into the weights (py-faster-rcnn's ``snapshot``) so exports and engines
apply raw deltas with no extra op.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FastRCNNPredictor(nn.Module):
    """``cls_score`` ~ N(0, 0.01) and ``bbox_pred`` ~ N(0, 0.001), biases 0 (py-faster-rcnn prototxts)."""

    bbox_means: Tensor
    bbox_stds: Tensor

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
        self.register_buffer("bbox_means", torch.zeros(4 * num_classes))
        self.register_buffer("bbox_stds", torch.ones(4 * num_classes))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.cls_score.weight.normal_(0.0, 0.01, generator=generator)
            self.cls_score.bias.zero_()
            self.bbox_pred.weight.normal_(0.0, 0.001, generator=generator)
            self.bbox_pred.bias.zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [R, D]`` → ``(cls_score [R, K] logits, bbox_pred [R, 4K] in normalised target units)``."""
        return self.cls_score(x), self.bbox_pred(x)

    def raw_deltas(self, bbox_pred: Tensor) -> Tensor:
        """Normalised deltas → raw deltas (``× std + mean``)."""
        return bbox_pred * self.bbox_stds + self.bbox_means

    @torch.no_grad()
    def set_normalization(self, means: Tensor, stds: Tensor) -> None:
        """Record the target normalisation the weights are trained under (``[K, 4]`` or ``[4K]``)."""
        self.bbox_means.copy_(means.reshape(-1).to(self.bbox_means))
        self.bbox_stds.copy_(stds.reshape(-1).to(self.bbox_stds))

    @torch.no_grad()
    def fold_normalization(self) -> None:
        """Fold means/stds into ``bbox_pred`` (``W ← W·std``, ``b ← b·std + mean``) and reset them to 0/1."""
        std, mean = self.bbox_stds, self.bbox_means
        self.bbox_pred.weight.mul_(std[:, None])
        self.bbox_pred.bias.mul_(std).add_(mean)
        self.bbox_means.zero_()
        self.bbox_stds.fill_(1.0)

    @torch.no_grad()
    def unfold_normalization(self, means: Tensor, stds: Tensor) -> None:
        """Inverse of :meth:`fold_normalization`: express raw-delta weights in normalised units again."""
        std, mean = stds.reshape(-1).to(self.bbox_stds), means.reshape(-1).to(self.bbox_means)
        self.bbox_pred.bias.sub_(mean).div_(std)
        self.bbox_pred.weight.div_(std[:, None])
        self.set_normalization(mean, std)

