"""The frozen-body feature cache: same features as the body, reuse, budget, invalidation, and a stage trained
with it equal to one trained without."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from frcnn_trt.data.factory import get_imdb
from frcnn_trt.data.roidb import build_training_roidb_from_config
from frcnn_trt.errors import ConfigError
from frcnn_trt.model.backbones import build_network
from frcnn_trt.model.checkpoint import load_tensors
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.train import alt_opt
from frcnn_trt.train.feature_cache import FeatureCache, body_is_cacheable
from frcnn_trt.train.loop import StageSpec, train_stage
from tests.helpers import tiny_cfg


@pytest.fixture
def body() -> nn.Module:
    torch.manual_seed(0)
    net = build_network("tiny").body.requires_grad_(False)
    return net


def _info(sizes: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor([[h, w, 1.0] for h, w in sizes], dtype=torch.float32)


def test_cached_features_are_each_images_own_and_are_reused(body: nn.Module) -> None:
    images = torch.randn(2, 3, 96, 128) * 50
    cache = FeatureCache(64)
    cache.bind(body, (102.9, 115.9, 122.8))
    first = cache.features(body, images, _info([(96, 128)] * 2), ["a.jpg", "b.jpg"], [False, True])
    alone = torch.cat([body(images[:1]), body(images[1:])])
    assert torch.equal(first, alone)
    torch.testing.assert_close(first, body(images))
    assert (cache.stats.hits, cache.stats.misses, len(cache)) == (0, 2, 2)
    # the same images come round again (other order, other partner): served from the cache, unchanged
    again = cache.features(body, images.flip(0), _info([(96, 128)] * 2), ["b.jpg", "a.jpg"], [True, False])
    assert torch.equal(again, alone.flip(0))
    assert (cache.stats.hits, cache.stats.misses) == (2, 2)
    # the key has the flip and the size: the mirrored image of a.jpg is another entry
    cache.features(body, images[:1], _info([(96, 128)]), ["a.jpg"], [True])
    assert cache.stats.misses == 3 and len(cache) == 3
    assert cache.nbytes == 3 * alone[0].numel() * 4


def test_a_padded_batch_is_computed_whole_unless_unpadded_features_are_asked_for(body: nn.Module) -> None:
    images = torch.randn(2, 3, 96, 128) * 50
    images[1, :, 80:, :] = 0  # the second image is 80 rows high, zero-padded to the blob
    info = _info([(96, 128), (80, 128)])
    cache = FeatureCache(64)
    cache.bind(body, (0.0, 0.0, 0.0))
    out = cache.features(body, images, info, ["a.jpg", "b.jpg"], [False, False])
    assert torch.equal(out, body(images))
    assert len(cache) == 0 and cache.stats.uncached_batches == 1
    # unpadded: each image's own features (as at test time), the smaller one zero-padded to the blob's 6 × 8
    cache = FeatureCache(64, unpadded=True)
    cache.bind(body, (0.0, 0.0, 0.0))
    out = cache.features(body, images, info, ["a.jpg", "b.jpg"], [False, False])
    own = body(images[1:, :, :80])
    assert out.shape == (2, 128, 6, 8) and own.shape[-2:] == (5, 8)
    assert torch.equal(out[0], body(images[:1])[0])
    assert torch.equal(out[1, :, :5], own[0]) and not out[1, :, 5:].any()
    assert not torch.allclose(out[1, :, :5], body(images)[1, :, :5])  # GroupNorm: padding changes the statistics
    assert len(cache) == 2 and cache.stats.uncached_batches == 0
    # b.jpg alone later (its own 80-row blob): the same entry
    cache.features(body, images[1:, :, :80], _info([(80, 128)]), ["b.jpg"], [False])
    assert cache.stats.hits == 1


def test_budget_caps_memory_and_bind_drops_stale_features(body: nn.Module) -> None:
    images = torch.randn(1, 3, 512, 512) * 50  # tiny body: 128 × 32 × 32 floats = 512 KiB per image
    cache = FeatureCache(2)
    cache.bind(body, (0.0, 0.0, 0.0))
    for i in range(6):
        cache.features(body, images, _info([(512, 512)]), [f"{i}.jpg"], [False])
    assert len(cache) == 4 and cache.nbytes == 2 * 2**20
    assert cache.stats.misses == 6
    cache.bind(body, (0.0, 0.0, 0.0))  # same weights, same means: kept
    assert len(cache) == 4
    cache.bind(body, (1.0, 0.0, 0.0))  # other pixel means: other blobs
    assert len(cache) == 0
    cache.features(body, images, _info([(512, 512)]), ["0.jpg"], [False])
    with torch.no_grad():
        body.conv1.weight.add_(0.01)  # type: ignore[union-attr, operator]
    cache.bind(body, (1.0, 0.0, 0.0))
    assert len(cache) == 0
    with pytest.raises(ConfigError, match="FEATURE_CACHE_MB"):
        FeatureCache(-1)
    assert not FeatureCache(0).enabled


def test_only_a_frozen_deterministic_body_is_cacheable(body: nn.Module) -> None:
    assert body_is_cacheable(body)
    body.conv7.weight.requires_grad_(True)  # type: ignore[union-attr, operator]
    assert not body_is_cacheable(body)
    with_dropout = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5)).requires_grad_(False)
    assert not body_is_cacheable(with_dropout.train())
    assert body_is_cacheable(with_dropout.eval())


def test_a_frozen_conv_stage_trains_the_same_with_and_without_the_cache(synth_dir: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The stage-2 RPN set-up (only the RPN head trains) for more iterations than there are roidb entries, so
    images come round again: the cache serves them, and the weights equal an uncached run's exactly."""
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    finals = {}
    for budget in (0, 64):
        cfg = alt_opt.stage_config(tiny_cfg(TRAIN={"FEATURE_CACHE_MB": budget}), "rpn")
        roidb = build_training_roidb_from_config(imdb, cfg, cache_dir=tmp_path / "cache")
        n = len(roidb.entries)
        torch.manual_seed(0)
        model = FasterRCNN.from_config(cfg, imdb.num_classes)
        spec = StageSpec(name="stage2_rpn", mode="rpn", max_iters=n + 6, base_lr=0.01, stepsize=100,
                         trainable=("rpn",))
        with caplog.at_level("INFO", logger="frcnn_trt"):
            path = train_stage(model, roidb.entries, cfg, spec, tmp_path / f"b{budget}", class_names=imdb.classes,
                               device=torch.device("cpu"))
        finals[budget] = load_tensors(path)
    found = re.search(r"feature cache: (\d+) image\(s\).*; (\d+) hit\(s\), (\d+) computed", caplog.text)
    assert found is not None
    cached, hits, computed = map(int, found.groups())
    assert hits >= 6 and hits + computed == n + 6 and cached == computed
    a, b = finals[0], finals[64]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(a["rpn.cls_score.weight"], FasterRCNN.from_config(cfg, imdb.num_classes)
                           .state_dict()["rpn.cls_score.weight"])
