"""Thin export wrappers: the two halves of a :class:`~frcnn_trt.model.faster_rcnn.FasterRCNN` with plain
tensor inputs and outputs (mmdeploy's two-stage split), so the core model needs no ``if tracing`` branch.

Glossary: ``N`` images, ``H × W`` blob size, ``C`` feature channels, ``H' × W'`` feature map (stride 16),
``A`` anchors per location, ``R`` RoIs, ``K`` classes including background.

- :class:`RPNPart`: image blob ``[N, 3, H, W]`` float32 → ``features [N, C, H', W']``,
  ``rpn_cls_prob (N, 2A, H', W')``, ``rpn_bbox_pred (N, 4A, H', W')`` (py-faster-rcnn blob layouts);
- :class:`DetectorPart`: ``features`` + ``rois [R, 5]`` float32 → ``cls_prob [R, K]``, ``bbox_pred [R, 4K]``
  (raw deltas, the checkpoint's un-normalised ``bbox_pred``).

``half=True`` gives the FP16 form: the conv body, RPN head and box head run in float16 (weights and
activations), while the image input, the RoI coordinates, both softmaxes and every output that feeds box
decoding / NMS stay float32. ``features`` travel in float16 between the two graphs. The RoI op (RoIPool or
RoIAlign, whichever the model holds) runs in float32 on the float16 features (max pooling is exact in either
dtype, and float32 keeps the RoI coordinates exact: float16 has 0.5 px steps above 512 px, which would move
Caffe's ``round(x / 16)`` and RoIAlign's sample points).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.model.rpn import rpn_cls_prob

__all__ = ["DetectorPart", "RPNPart", "prepare_for_export"]


def prepare_for_export(model: FasterRCNN, half: bool = False) -> FasterRCNN:
    """A CPU, eval-mode copy of ``model`` (float16 when ``half``); the caller's model is left untouched.

    Eval mode is what folds test-time behaviour into the graph: ZF's ``CaffeDropout(scale_train=False)``
    becomes a ``× (1 − p)``, other dropouts vanish.
    """
    out = copy.deepcopy(model).to("cpu").eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out.half() if half else out.float()


class RPNPart(nn.Module):
    """``image [N, 3, H, W]`` float32 → ``(features, rpn_cls_prob, rpn_bbox_pred)``."""

    def __init__(self, model: FasterRCNN, half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.half_precision = bool(half)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.half_precision:
            return self.model.rpn_blobs(image)
        features = self.model.backbone(image.half())
        score, deltas = self.model.rpn(features)
        return features, rpn_cls_prob(score.float()), deltas.float()


class DetectorPart(nn.Module):
    """``(features [N, C, H', W'], rois [R, 5] float32)`` → ``(cls_prob [R, K], bbox_pred [R, 4K])``.

    A checkpoint's ``bbox_pred`` is saved un-normalised (means 0, stds 1): the identity ``× std + mean`` is
    then left out of the graph.
    """

    def __init__(self, model: FasterRCNN, half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.half_precision = bool(half)
        p = model.predictor
        self.raw_deltas = not bool((p.bbox_stds == 1).all() and (p.bbox_means == 0).all())

    def forward(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        # float16: pool in float32 (exact RoI coordinates), then back to float16 for the box head
        pool = m.box_roi_pool
        pooled = pool(features.float(), rois).half() if self.half_precision else pool(features, rois)
        score, deltas = m.predictor(m.backbone.box_head(pooled))
        deltas = deltas.float()
        return torch.softmax(score.float(), dim=1), m.predictor.raw_deltas(deltas) if self.raw_deltas else deltas
