"""Training targets, batched over images: py-faster-rcnn's target layers (docs/REFERENCE.md §4, §6).

- :mod:`~frcnn_trt.targets.anchor_target_layer`: RPN anchor labels and regression targets
  (``AnchorTargetLayer``, its :class:`AnchorTargetSettings`);
- :mod:`~frcnn_trt.targets.proposal_target_layer`: the end2end Fast R-CNN RoI minibatch sampled from the RPN's
  proposals (``ProposalTargetLayer``, its :class:`ProposalTargetSettings`);
- :mod:`~frcnn_trt.targets.minibatch`: the alt-opt Fast R-CNN minibatch sampled from the roidb's stored
  proposals (``sample_rois_from_roidb``);
- :mod:`~frcnn_trt.targets.sampling`: what they share: padded ground truth and per-image random subsets drawn
  from an explicit ``torch.Generator``.
"""

from frcnn_trt.targets.anchor_target_layer import (
    AnchorTargetLayer,
    AnchorTargets,
    AnchorTargetSettings,
    anchor_targets,
)
from frcnn_trt.targets.minibatch import sample_rois_from_roidb
from frcnn_trt.targets.proposal_target_layer import (
    ProposalTargetLayer,
    ProposalTargetSettings,
    RoiTargets,
    proposal_targets,
)

__all__ = [
    "AnchorTargetLayer",
    "AnchorTargetSettings",
    "AnchorTargets",
    "ProposalTargetLayer",
    "ProposalTargetSettings",
    "RoiTargets",
    "anchor_targets",
    "proposal_targets",
    "sample_rois_from_roidb",
]
