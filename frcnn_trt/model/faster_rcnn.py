"""Faster R-CNN: conv body → RPN → proposals → RoI op → box head → class scores and box deltas.

Glossary: ``N`` images, ``H × W`` feature map, ``A`` anchors per location, ``R`` RoIs, ``K`` classes
including background, ``G_i`` ground-truth boxes of image ``i``.

One model serves every training mode of py-faster-rcnn, chosen per call (``stage``):

- ``"end2end"`` (approximate joint, docs/REFERENCE.md §10): RPN losses + proposal layer (TRAIN 12000/2000) +
  ProposalTargetLayer + Fast R-CNN losses — four losses;
- ``"rpn"`` (alt-opt stages 1 and 2 RPN): RPN losses only;
- ``"fast_rcnn"`` (alt-opt Fast R-CNN stages): RoIs sampled from the roidb's stored proposals, Fast R-CNN
  losses only.

In training mode ``forward(batch, stage=...)`` returns the loss dict; :meth:`im_detect` runs inference
(``scores [R, K]`` and ``pred_boxes [R, 4K]`` in original-image pixels, py-faster-rcnn's ``im_detect``).
The parts the export wraps are plain methods with tensor inputs: :meth:`rpn_blobs` (image blob → conv
features, ``rpn_cls_prob``, ``rpn_bbox_pred``) and :meth:`detector` (features + RoIs → ``cls_prob``, raw
``bbox_pred``).

The RoI op is a constructor argument (``box_roi_pool``, torchvision's name): py-faster-rcnn's Caffe RoI max
pooling (:class:`~frcnn_trt.ops.roi_pool.RoIPool`, the default) or torchvision's RoI align
(:class:`~frcnn_trt.ops.roi_align.RoIAlign`); :meth:`FasterRCNN.from_config` picks it by ``MODEL.ROI_OP``.
Training and the export follow the op the model holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from frcnn_trt.anchors import rpn_bbox_to_anchor_order, rpn_cls_to_anchor_order
from frcnn_trt.config import ROI_OPS, Config, ModelConfig
from frcnn_trt.errors import ConfigError, ModelError
from frcnn_trt.losses import fast_rcnn_losses, rpn_losses
from frcnn_trt.model.backbones import Backbone, build_network
from frcnn_trt.model.roi_head import FastRCNNPredictor
from frcnn_trt.model.rpn import RPNHead, rpn_cls_prob
from frcnn_trt.ops.roi_align import RoIAlign
from frcnn_trt.ops.roi_pool import RoIPool
from frcnn_trt.postprocess import im_detect_postprocess
from frcnn_trt.proposals import ProposalLayer
from frcnn_trt.targets import AnchorTargetLayer, ProposalTargetLayer, sample_rois_from_roidb

STAGES = ("end2end", "rpn", "fast_rcnn")

#: the RoI op of the Fast R-CNN head: ``(features [N, C, H, W], rois [R, 5]) → [R, C, P, P]``, and
#: ``export_spec()`` for export.json
RoIOp = RoIPool | RoIAlign


def build_roi_op(model_cfg: ModelConfig, backbone: Backbone) -> RoIOp:
    """The RoI op ``MODEL.ROI_OP`` names, at the backbone's pooled size and ``1 / feat_stride`` scale."""
    pooled, scale = (backbone.pooled_size, backbone.pooled_size), 1.0 / backbone.feat_stride
    if model_cfg.ROI_OP == "RoIPool":
        return RoIPool(pooled, scale)
    if model_cfg.ROI_OP == "RoIAlign":
        return RoIAlign(pooled, scale, model_cfg.ROI_ALIGN_SAMPLING_RATIO)
    raise ConfigError(f"MODEL.ROI_OP: unknown RoI op {model_cfg.ROI_OP!r}; choose one of {', '.join(ROI_OPS)}")


@dataclass(frozen=True)
class RoidbSampling:
    """Alt-opt Fast R-CNN minibatch settings (``roi_data_layer/minibatch.py``)."""

    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_thresh: float = 0.5
    bg_thresh_hi: float = 0.5
    bg_thresh_lo: float = 0.1
    bbox_inside_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)

    @classmethod
    def from_config(cls, cfg: Config) -> RoidbSampling:
        t = cfg.TRAIN
        return cls(int(t.BATCH_SIZE) // int(t.IMS_PER_BATCH), t.FG_FRACTION, t.FG_THRESH, t.BG_THRESH_HI,
                   t.BG_THRESH_LO, tuple(t.BBOX_INSIDE_WEIGHTS))


class FasterRCNN(nn.Module):
    """The whole detector; build it with :meth:`from_config`."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        anchor_target: AnchorTargetLayer,
        proposal_train: ProposalLayer,
        proposal_test: ProposalLayer,
        proposal_target: ProposalTargetLayer,
        roidb_sampling: RoidbSampling,
        bbox_reg: bool = True,
        box_roi_pool: RoIOp | None = None,
    ) -> None:
        """``box_roi_pool``: the RoI op between the conv body and the box head (torchvision's argument name);
        default: py-faster-rcnn's Caffe :class:`RoIPool` at the backbone's pooled size and ``1 / feat_stride``."""
        super().__init__()
        if num_classes < 2:
            raise ModelError(f"num_classes counts the background and must be ≥ 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.backbone = backbone
        num_anchors = anchor_target.anchor_generator.num_anchors
        self.rpn = RPNHead(backbone.out_channels, backbone.rpn_channels, num_anchors)
        self.box_roi_pool: RoIOp = (box_roi_pool if box_roi_pool is not None
                                    else build_roi_op(ModelConfig(), backbone))
        self.predictor = FastRCNNPredictor(backbone.fc_dim, num_classes)
        self.anchor_target = anchor_target
        self.proposal_train = proposal_train
        self.proposal_test = proposal_test
        self.proposal_target = proposal_target
        self.roidb_sampling = roidb_sampling
        self.bbox_reg = bool(bbox_reg)
        #: the config the parameter-free layers were built from (preprocessing settings for inference)
        self.cfg: Config | None = None

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int, backbone: Backbone | None = None) -> FasterRCNN:
        backbone = backbone if backbone is not None else build_network(cfg.MODEL.NET)
        model = cls(
            backbone,
            num_classes,
            anchor_target=AnchorTargetLayer.from_config(cfg),
            proposal_train=ProposalLayer.from_config(cfg, "TRAIN"),
            proposal_test=ProposalLayer.from_config(cfg, "TEST"),
            proposal_target=ProposalTargetLayer.from_config(cfg, num_classes),
            roidb_sampling=RoidbSampling.from_config(cfg),
            bbox_reg=cfg.TEST.BBOX_REG,
            box_roi_pool=build_roi_op(cfg.MODEL, backbone),
        )
        model.cfg = cfg
        return model

    def configure(self, cfg: Config) -> FasterRCNN:
        """Swap the parameter-free layers for those of ``cfg`` (a stage's config); weights are untouched.

        The RoI op is part of the architecture the weights were trained with: a ``cfg`` naming another one
        (``MODEL.ROI_OP``, ``MODEL.ROI_ALIGN_SAMPLING_RATIO``) is refused rather than ignored."""
        wanted = build_roi_op(cfg.MODEL, self.backbone).export_spec()
        if wanted != self.box_roi_pool.export_spec():
            raise ConfigError(f"the model's RoI op is {self.box_roi_pool.export_spec()}; the config asks for "
                              f"{wanted}: MODEL.ROI_OP / ROI_ALIGN_SAMPLING_RATIO cannot change after training")
        self.anchor_target = AnchorTargetLayer.from_config(cfg)
        self.proposal_train = ProposalLayer.from_config(cfg, "TRAIN")
        self.proposal_test = ProposalLayer.from_config(cfg, "TEST")
        self.proposal_target = ProposalTargetLayer.from_config(cfg, self.num_classes)
        self.roidb_sampling = RoidbSampling.from_config(cfg)
        self.bbox_reg = bool(cfg.TEST.BBOX_REG)
        self.cfg = cfg
        return self

    @property
    def num_anchors(self) -> int:
        return self.rpn.num_anchors

    # ------------------------------------------------------------------------------------------ parts

    def rpn_blobs(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Image blob ``[N, 3, H, W]`` → ``(features, rpn_cls_prob (N, 2A, H', W'), rpn_bbox_pred (N, 4A, H', W'))``."""
        features = self.backbone(images)
        score, deltas = self.rpn(features)
        return features, rpn_cls_prob(score), deltas

    def detector(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """``features``, ``rois [R, 5]`` (blob pixels) → ``(cls_prob [R, K], bbox_pred [R, 4K])`` raw deltas."""
        score, deltas = self._detector_logits(features, rois)
        return torch.softmax(score, dim=1), self.predictor.raw_deltas(deltas)

    def _detector_logits(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.box_roi_pool(features, rois)
        return self.predictor(self.backbone.box_head(pooled))

    def propose(self, rpn_prob: Tensor, rpn_deltas: Tensor, im_info: Tensor,
                layer: ProposalLayer | None = None) -> tuple[Tensor, Tensor]:
        """Proposal layer (TEST settings unless ``layer`` is given) → ``(rois [R, 5], scores [R, 1])``."""
        return (layer or self.proposal_test)(rpn_prob.detach(), rpn_deltas.detach(), im_info)

    # ------------------------------------------------------------------------------------------ training

    def forward(self, batch: Any, stage: str = "end2end", generator: torch.Generator | None = None,
                features: Tensor | None = None) -> dict[str, Tensor]:
        """Training losses for one :class:`~frcnn_trt.data.loader.Batch` (see module docstring).

        ``features``: the body's output for ``batch.images`` when the caller has it already (a frozen body's
        cached features, :mod:`frcnn_trt.train.feature_cache`); computed here otherwise."""
        if stage not in STAGES:
            raise ModelError(f"unknown training stage {stage!r}; expected one of {', '.join(STAGES)}")
        images, im_info = batch.images, batch.im_info
        if images.dim() != 4 or images.shape[1] != 3 or im_info.shape != (images.shape[0], 3):
            raise ModelError(f"need images [N, 3, H, W] and im_info [N, 3], got {tuple(images.shape)} and "
                             f"{tuple(im_info.shape)}")
        if features is None:
            features = self.backbone(images)
        losses: dict[str, Tensor] = {}
        if stage in ("end2end", "rpn"):
            score, deltas = self.rpn(features)
            targets = self.anchor_target(tuple(score.shape[-2:]), batch.gt_boxes, im_info, generator=generator)
            losses["rpn_loss_cls"], losses["rpn_loss_bbox"] = rpn_losses(
                rpn_cls_to_anchor_order(score), rpn_bbox_to_anchor_order(deltas), *targets, sigma=3.0)
            if stage == "rpn":
                return losses
            rois, _ = self.propose(rpn_cls_prob(score), deltas, im_info, self.proposal_train)
            roi_targets = self.proposal_target(rois, batch.gt_boxes, batch.gt_classes, generator=generator)
        else:
            if batch.rois is None:
                raise ModelError("stage 'fast_rcnn' needs a batch with stored proposals (rois)")
            s = self.roidb_sampling
            targets_ = batch.roi_bbox_targets
            if batch.roi_bbox_target_classes is not None:
                targets_ = [torch.cat([c[:, None].to(t), t], 1)
                            for c, t in zip(batch.roi_bbox_target_classes, targets_, strict=True)]
            roi_targets = sample_rois_from_roidb(
                batch.rois, batch.roi_max_overlaps, batch.roi_max_classes, targets_,
                num_classes=self.num_classes, generator=generator, rois_per_image=s.rois_per_image,
                fg_fraction=s.fg_fraction, fg_thresh=s.fg_thresh, bg_thresh_hi=s.bg_thresh_hi,
                bg_thresh_lo=s.bg_thresh_lo, bbox_inside_weights=s.bbox_inside_weights)
        score, deltas = self._detector_logits(features, roi_targets.rois)
        losses["loss_cls"], losses["loss_bbox"] = fast_rcnn_losses(
            score, deltas, roi_targets.labels, roi_targets.bbox_targets, roi_targets.bbox_inside_weights,
            roi_targets.bbox_outside_weights, sigma=1.0)
        return losses

    # ------------------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def im_detect(self, images: Tensor, im_info: Tensor,
                  orig_sizes: Tensor) -> list[tuple[Tensor, Tensor]]:
        """py-faster-rcnn's ``im_detect`` for a batch: per image ``(scores [R, K], pred_boxes [R, 4K])`` in
        original-image pixels. ``orig_sizes [N, 2]`` = original ``(H, W)`` of each image."""
        features, prob, deltas = self.rpn_blobs(images)
        rois, _ = self.propose(prob, deltas, im_info)
        cls_prob, bbox_pred = self.detector(features, rois)
        scores, boxes = im_detect_postprocess(rois, cls_prob, bbox_pred, im_info[:, 2], orig_sizes,
                                              bbox_reg=self.bbox_reg)
        img = rois[:, 0].long()
        return [(scores[img == i], boxes[img == i]) for i in range(images.shape[0])]

    # ------------------------------------------------------------------------------------------ param groups

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Parameters by the parts alt-opt switches on and off (docs/REFERENCE.md §9), names relative to the model.

        ``conv`` (trainable conv body), ``frozen`` (never trained: VGG16 conv1–2, VGG_CNN_M_1024 conv1),
        ``rpn`` (RPN head), ``fc`` (fc6, fc7), ``predictor`` (cls_score, bbox_pred).
        """
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {
            k: [] for k in ("conv", "frozen", "rpn", "fc", "predictor")}
        for name, param in self.named_parameters():
            sub = name.split(".", 1)[1] if "." in name else name
            if name.startswith("backbone."):
                if self.backbone.is_frozen(sub):
                    groups["frozen"].append((name, param))
                elif sub.startswith("body."):
                    groups["conv"].append((name, param))
                else:
                    groups["fc"].append((name, param))
            elif name.startswith("rpn."):
                groups["rpn"].append((name, param))
            elif name.startswith("predictor."):
                groups["predictor"].append((name, param))
            else:  # pragma: no cover - a new submodule must be assigned to a group
                raise ModelError(f"parameter {name} belongs to no group")
        return groups
