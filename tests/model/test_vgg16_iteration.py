"""One real end2end training iteration of VGG16 at py-faster-rcnn's 600×1000 on the CPU."""

from __future__ import annotations

import time

import torch

from frcnn_trt import config as C
from frcnn_trt.data.loader import Batch
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.train.loop import set_trainable
from frcnn_trt.train.solver import Solver


def test_vgg16_end2end_iteration_at_600x1000() -> None:
    cfg = C.load(C.builtin("VGG16_end2end"))
    torch.manual_seed(0)
    model = FasterRCNN.from_config(cfg, num_classes=21).train()
    named = set_trainable(model, ("conv", "rpn", "fc", "predictor"))
    solver = Solver.from_config(named, cfg.SOLVER)
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        images=torch.randn(1, 3, 600, 1000, generator=g) * 60,
        im_info=torch.tensor([[600.0, 1000.0, 1.6]]),
        gt_boxes=[torch.tensor([[100.0, 120.0, 400.0, 500.0], [520.0, 80.0, 900.0, 300.0]])],
        gt_classes=[torch.tensor([7, 15])],
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    t0 = time.perf_counter()
    losses = model(batch, stage="end2end", generator=g)
    sum(losses.values()).backward()
    solver.step(0)
    seconds = time.perf_counter() - t0
    print(f"VGG16 end2end iteration at 600x1000 on CPU: {seconds:.1f} s")
    assert all(torch.isfinite(v) for v in losses.values())
    after = dict(model.named_parameters())
    # conv1_x / conv2_x are frozen (lr_mult 0 in the prototxt), conv3_1 on train
    assert torch.equal(before["backbone.body.conv1_1.weight"], after["backbone.body.conv1_1.weight"])
    assert torch.equal(before["backbone.body.conv2_2.weight"], after["backbone.body.conv2_2.weight"])
    assert not torch.equal(before["backbone.body.conv3_1.weight"], after["backbone.body.conv3_1.weight"])
    assert not torch.equal(before["backbone.box_head.fc6.weight"], after["backbone.box_head.fc6.weight"])
    # the feature map of a 600×1000 blob is 38×63, as Caffe's (docs/REFERENCE.md §5)
    assert model.backbone.feature_size(600, 1000) == (38, 63)
