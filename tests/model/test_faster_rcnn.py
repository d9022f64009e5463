from __future__ import annotations

import pytest
import torch

from frcnn_trt import config as C
from frcnn_trt.data.loader import Batch
from frcnn_trt.errors import ConfigError, ModelError
from frcnn_trt.model.backbones import build_network
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.model.rpn import rpn_cls_prob
from frcnn_trt.ops.roi_align import RoIAlign
from frcnn_trt.ops.roi_pool import RoIPool
from tests.helpers import tiny_cfg


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        images=torch.randn(2, 3, 112, 144, generator=g) * 50,
        im_info=torch.tensor([[112.0, 144.0, 1.0], [112.0, 130.0, 1.0]]),
        gt_boxes=[torch.tensor([[10.0, 20.0, 60.0, 70.0], [70, 30, 130, 100]]),
                  torch.tensor([[20.0, 20.0, 90.0, 80.0]])],
        gt_classes=[torch.tensor([1, 2]), torch.tensor([3])],
    )


def test_rpn_softmax_pairs_bg_and_fg_channels() -> None:
    score = torch.randn(1, 18, 3, 4)
    prob = rpn_cls_prob(score)
    torch.testing.assert_close(prob[:, :9] + prob[:, 9:], torch.ones(1, 9, 3, 4))
    # anchor 2 at (1, 1): softmax over (bg channel 2, fg channel 11)
    pair = torch.softmax(torch.stack([score[0, 2, 1, 1], score[0, 11, 1, 1]]), 0)
    torch.testing.assert_close(prob[0, [2, 11], 1, 1], pair)


def test_training_stages_give_their_losses_and_gradients() -> None:
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = FasterRCNN.from_config(cfg, num_classes=4).train()
    g = torch.Generator().manual_seed(0)
    losses = model(_batch(), stage="end2end", generator=g)
    assert set(losses) == {"rpn_loss_cls", "rpn_loss_bbox", "loss_cls", "loss_bbox"}
    assert all(torch.isfinite(v) for v in losses.values())
    # untrained: softmax losses near log(2) and log(K)
    assert abs(losses["rpn_loss_cls"].item() - 0.693) < 0.05 and abs(losses["loss_cls"].item() - 1.386) < 0.3
    sum(losses.values()).backward()
    assert model.rpn.conv.weight.grad is not None and model.predictor.cls_score.weight.grad is not None
    rpn_only = model(_batch(), stage="rpn", generator=g)
    assert set(rpn_only) == {"rpn_loss_cls", "rpn_loss_bbox"}


def test_fast_rcnn_stage_samples_roidb_rois() -> None:
    model = FasterRCNN.from_config(tiny_cfg(), num_classes=4).train()
    b = _batch()
    b.rois = [torch.tensor([[10.0, 20.0, 60.0, 70.0], [12.0, 22.0, 58.0, 75.0], [0, 0, 20, 20]]),
              torch.tensor([[20.0, 20.0, 90.0, 80.0], [100.0, 10.0, 120.0, 40.0]])]
    b.roi_max_overlaps = [torch.tensor([1.0, 0.8, 0.0]), torch.tensor([1.0, 0.05])]
    b.roi_max_classes = [torch.tensor([1, 1, 0]), torch.tensor([3, 0])]
    b.roi_bbox_targets = [torch.zeros(3, 4), torch.zeros(2, 4)]
    losses = model(b, stage="fast_rcnn", generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_cls", "loss_bbox"}
    with pytest.raises(ModelError, match="stored proposals"):
        model(_batch(), stage="fast_rcnn")
    with pytest.raises(ModelError, match="unknown training stage"):
        model(_batch(), stage="joint")


def test_im_detect_shapes_and_original_coordinates() -> None:
    model = FasterRCNN.from_config(tiny_cfg(), num_classes=4).eval()
    b = _batch()
    # image 1 was upscaled ×2 from 56×65
    b.im_info[1, 2] = 2.0
    out = model.im_detect(b.images, b.im_info, torch.tensor([[112.0, 144.0], [56.0, 65.0]]))
    assert len(out) == 2
    for (scores, boxes), (h, w) in zip(out, [(112, 144), (56, 65)], strict=True):
        assert scores.shape[1] == 4 and boxes.shape == (scores.shape[0], 16)
        torch.testing.assert_close(scores.sum(1), torch.ones(scores.shape[0]))
        assert boxes[:, 0::2].max() <= w - 1 and boxes[:, 1::2].max() <= h - 1 and boxes.min() >= 0


def test_normalisation_fold_round_trip() -> None:
    model = FasterRCNN.from_config(tiny_cfg(), num_classes=3)
    p = model.predictor
    means, stds = torch.zeros(3, 4), torch.tensor([0.1, 0.1, 0.2, 0.2]).repeat(3, 1)
    p.set_normalization(means, stds)
    x = torch.randn(5, p.cls_score.in_features)
    raw = p.raw_deltas(p(x)[1])
    p.fold_normalization()
    torch.testing.assert_close(p.raw_deltas(p(x)[1]), raw)
    p.unfold_normalization(means, stds)
    torch.testing.assert_close(p.raw_deltas(p(x)[1]), raw)


def test_parameter_groups_cover_every_parameter_once() -> None:
    model = FasterRCNN.from_config(tiny_cfg(MODEL={"NET": "VGG16"}), num_classes=21)
    groups = model.parameter_groups()
    names = [n for g in groups.values() for n, _ in g]
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    frozen = {n for n, _ in groups["frozen"]}
    assert any("conv1_1" in n for n in frozen) and any("conv2_2" in n for n in frozen)
    assert not any("conv3_1" in n for n in frozen)
    assert {n.split(".")[2] for n, _ in groups["fc"]} >= {"fc6", "fc7"}


def test_roi_op_follows_the_config() -> None:
    default = FasterRCNN.from_config(tiny_cfg(), num_classes=4)
    assert isinstance(default.box_roi_pool, RoIPool)  # py-faster-rcnn's op unless asked otherwise
    assert default.box_roi_pool.pooled_shape == (7, 7) and default.box_roi_pool.spatial_scale == 1 / 16
    align = FasterRCNN.from_config(tiny_cfg(MODEL={"ROI_OP": "RoIAlign", "ROI_ALIGN_SAMPLING_RATIO": 0}), 4)
    assert isinstance(align.box_roi_pool, RoIAlign) and align.box_roi_pool.sampling_ratio == 0
    assert align.box_roi_pool.export_spec()["pooled_shape"] == [7, 7]
    # no parameters: checkpoints of either op hold the same tensors
    assert default.state_dict().keys() == align.state_dict().keys()
    # the RoIAlign model trains and detects like the RoIPool one
    losses = align.train()(_batch(), stage="end2end", generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert align.predictor.cls_score.weight.grad is not None and align.rpn.conv.weight.grad is not None
    scores, boxes = align.eval().im_detect(_batch().images, _batch().im_info, torch.tensor([[112.0, 144.0]] * 2))[0]
    assert scores.shape[1] == 4 and boxes.shape[1] == 16


def test_roi_op_is_a_constructor_argument() -> None:
    cfg = tiny_cfg()
    ref = FasterRCNN.from_config(cfg, 4)
    op = RoIAlign(7, 1 / 16, sampling_ratio=1)
    parts = {k: getattr(ref, k) for k in ("anchor_target", "proposal_train", "proposal_test", "proposal_target",
                                          "roidb_sampling")}
    model = FasterRCNN(build_network("tiny"), 4, **parts, box_roi_pool=op)
    assert model.box_roi_pool is op
    assert isinstance(FasterRCNN(build_network("tiny"), 4, **parts).box_roi_pool, RoIPool)  # the default


def test_unknown_roi_op_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"MODEL\.ROI_OP: unknown RoI op 'RoiAlign' \(did you mean RoIAlign\?\); "
                                          r"choose one of RoIPool, RoIAlign"):
        tiny_cfg(MODEL={"ROI_OP": "RoiAlign"})
    with pytest.raises(ConfigError, match=r"'PSRoIPool'.*RoIPool, RoIAlign"):
        C.from_list(["MODEL.ROI_OP", "PSRoIPool"])
    with pytest.raises(ConfigError, match="ROI_ALIGN_SAMPLING_RATIO must be ≥ 0"):
        tiny_cfg(MODEL={"ROI_ALIGN_SAMPLING_RATIO": -1})
