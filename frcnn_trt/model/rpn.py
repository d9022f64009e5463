"""The RPN head (``rpn_conv/3x3`` → ``rpn_cls_score``, ``rpn_bbox_pred``), docs/REFERENCE.md §4 and §8.

Glossary: ``N`` images, ``C`` feature channels, ``H × W`` feature map, ``A`` anchors per location.

Blob layouts are py-faster-rcnn's, so an exported RPN gives the same tensors as the Caffe net:
``rpn_cls_score (N, 2A, H, W)`` with channels ``0..A-1`` = background of anchors ``0..A-1`` and
``A..2A-1`` = foreground (Caffe's ``Reshape(0, 2, -1, 0)`` + ``Softmax(axis=1)``), ``rpn_bbox_pred
(N, 4A, H, W)`` with channel ``4a + k``, ``k ∈ (dx, dy, dw, dh)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RPNHead(nn.Module):
    """3×3 conv + ReLU, then 1×1 convs to ``2A`` scores and ``4A`` deltas; weights ~ N(0, 0.01), bias 0."""

    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.num_anchors = int(num_anchors)
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.cls_score = nn.Conv2d(mid_channels, 2 * num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * num_anchors, 1)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """py-faster-rcnn's ``gaussian std 0.01`` init (alt-opt stage 2 restarts from such an init)."""
        for layer in (self.conv, self.cls_score, self.bbox_pred):
            with torch.no_grad():
                layer.weight.normal_(0.0, 0.01, generator=generator)
                layer.bias.zero_()

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``features [N, C, H, W]`` → ``(rpn_cls_score (N, 2A, H, W), rpn_bbox_pred (N, 4A, H, W))``."""
        x = torch.relu(self.conv(features))
        return self.cls_score(x), self.bbox_pred(x)


def rpn_cls_prob(rpn_cls_score: Tensor) -> Tensor:
    """Softmax over each anchor's (bg, fg) pair: ``(N, 2A, H, W)`` → ``(N, 2A, H, W)``, same layout."""
    n, c, h, w = rpn_cls_score.shape
    return torch.softmax(rpn_cls_score.reshape(n, 2, c // 2, h, w), dim=1).reshape(n, c, h, w)
