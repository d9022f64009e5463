"""Classification pretraining on object crops (the ImageNet stand-in the demo uses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from frcnn_trt.data.factory import get_imdb
from frcnn_trt.errors import ConfigError, DatasetError
from frcnn_trt.model.backbones import build_network
from frcnn_trt.model.weights import load_weights
from frcnn_trt.train.pretrain import CONTEXT, SHIFT, CropBatches, PretrainSettings, pretrain_backbone

SMALL = PretrainSettings(iters=3, crops_per_batch=8, images_per_batch=2, crop=32, base_lr=0.01)


def _batches(synth_dir: Path, settings: PretrainSettings) -> CropBatches:
    anns = get_imdb(f"synth:{synth_dir}:trainval").annotations()
    keep = [~a.difficult for a in anns]
    return CropBatches([a.path for a in anns], [a.boxes[k] for a, k in zip(anns, keep, strict=True)],
                       [a.classes[k] for a, k in zip(anns, keep, strict=True)], settings)


def test_crop_batches_are_seeded_labelled_and_framed(synth_dir: Path) -> None:
    s = PretrainSettings(iters=4, crops_per_batch=16, images_per_batch=4, crop=48)
    data = _batches(synth_dir, s)
    x, rois, y = data[2]
    x2, rois2, y2 = data[2]
    assert torch.equal(x, x2) and torch.equal(rois, rois2) and torch.equal(y, y2)  # item i is a fixed draw
    assert not torch.equal(data[3][0], x)
    assert x.shape == (16, 3, 48, 48) and rois.shape == (16, 5) and y.shape == (16,)
    assert torch.equal(rois[:, 0], torch.arange(16, dtype=torch.float32))
    assert (y == 0).sum() == 4  # bg_fraction 0.25 of each image's 4 crops
    assert int(y.min()) >= 0 and int(y.max()) <= 5
    assert bool((rois[:, 1:] >= 0).all() and (rois[:, 1:] <= 47).all())
    fg = rois[y > 0, 1:]
    # the object's longer side is 1/2.0 .. 1/1.2 of the window (less where the box was clipped to the crop)
    side = torch.maximum(fg[:, 2] - fg[:, 0], fg[:, 3] - fg[:, 1])
    assert bool((side <= 48 / CONTEXT[0] + 1e-3).all())
    centre = (fg[:, :2] + fg[:, 2:]) / 2
    assert bool(((centre - 24).abs() <= SHIFT * 48 + 2).all())  # the object sits near the middle


def test_pretrain_writes_weights_that_load_and_reuses_them(synth_dir: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    out = pretrain_backbone(imdb, tmp_path / "tiny_pre", SMALL, num_workers=0)
    assert out == tmp_path / "tiny_pre.safetensors" and out.exists()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["iters"] == 3 and meta["imdb"] == imdb.name and 0.0 <= meta["final_accuracy"] <= 1.0
    fresh = build_network("tiny")
    report = load_weights(fresh, out)
    assert set(report.loaded) == set(fresh.state_dict())  # body and fc6/fc7, no classifier
    untrained = build_network("tiny")
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, untrained.state_dict()[k])]
    assert any(k.startswith("body.") for k in changed) and any(k.startswith("box_head.") for k in changed)

    mtime = out.stat().st_mtime_ns
    caplog.set_level("INFO", logger="frcnn_trt")
    assert pretrain_backbone(imdb, out, SMALL, num_workers=0) == out
    assert out.stat().st_mtime_ns == mtime and "reusing" in caplog.text
    pretrain_backbone(imdb, out, PretrainSettings(**{**SMALL.__dict__, "iters": 2}), num_workers=0)
    assert out.stat().st_mtime_ns != mtime and json.loads(out.with_suffix(".json").read_text())["iterations"] == 2


def test_pretrain_is_reproducible(synth_dir: Path, tmp_path: Path) -> None:
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    a = pretrain_backbone(imdb, tmp_path / "a", SMALL, num_workers=0)
    b = pretrain_backbone(imdb, tmp_path / "b", SMALL, num_workers=1)  # workers draw the same batches
    ta, tb = load_file(a), load_file(b)  # (not the bytes: safetensors may order the metadata differently)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_pretrain_rejects_bad_settings_and_empty_data(synth_dir: Path, tmp_path: Path) -> None:
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    with pytest.raises(ConfigError, match="crop"):
        pretrain_backbone(imdb, tmp_path / "x", PretrainSettings(crop=8))
    with pytest.raises(ConfigError, match="iters"):
        pretrain_backbone(imdb, tmp_path / "x", PretrainSettings(iters=0))

    class Empty:
        name, classes, num_classes = "empty", ("__background__", "a"), 2

        def annotations(self) -> list[object]:
            return [type("A", (), {"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64),
                                   "difficult": np.zeros(0, bool), "path": tmp_path / "none.jpg"})()]

    with pytest.raises(DatasetError, match="empty: no"):
        pretrain_backbone(Empty(), tmp_path / "x", SMALL)
