"""Synthetic shapes dataset: determinism, valid VOC output, tight boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frcnn_trt.data.factory import get_imdb
from frcnn_trt.data.synthetic import DEFAULT_CLASSES, SHAPES, make_synthetic_dataset, render_scene
from frcnn_trt.errors import ConfigError, DatasetError

SMALL = {"image_size": (160, 120)}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", num_images=6, seed=3, **SMALL)
    make_synthetic_dataset(tmp_path / "b", num_images=6, seed=3, **SMALL)
    make_synthetic_dataset(tmp_path / "c", num_images=6, seed=4, **SMALL)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(fa) == 6 * 2 + 2 + 2  # jpg + xml per image, two image sets, classes.txt, synthetic.json
    assert fa == fb
    jpgs = [k for k in fa if k.endswith(".jpg")]
    assert all(fa[k] != fc[k] for k in jpgs)
    assert a.num_images == 6 and a.num_trainval + a.num_test == 6 and a.num_test == 2  # round(6 * 0.25)
    # image i has its own generator: a smaller dataset is a prefix of a larger one
    make_synthetic_dataset(tmp_path / "d", num_images=2, seed=3, **SMALL)
    assert (tmp_path / "d/JPEGImages/000001.jpg").read_bytes() == fa["JPEGImages/000001.jpg"]


def test_output_is_a_valid_voc_dataset(tmp_path) -> None:
    summary = make_synthetic_dataset(tmp_path / "s", num_images=40, seed=0, **SMALL)
    assert (tmp_path / "s" / "classes.txt").read_text().split() == list(DEFAULT_CLASSES)
    trainval, test = get_imdb(f"synth:{tmp_path / 's'}"), get_imdb(f"synth:{tmp_path / 's'}:test")
    assert trainval.classes[1:] == DEFAULT_CLASSES
    assert not set(trainval.image_ids) & set(test.image_ids)
    assert len(trainval.image_ids) + len(test.image_ids) == 40
    assert trainval.issues == [] and test.issues == []  # every box inside its image, non-degenerate
    anns = trainval.annotations() + test.annotations()
    assert sum(a.num_objects for a in anns) == sum(summary.objects_per_class.values())
    assert sum(int(a.difficult.sum()) for a in anns) == summary.num_difficult >= 1
    sizes = {(a.width, a.height) for a in anns}
    assert len(sizes) > 20 and any(h > w for w, h in sizes)  # varied, some portrait
    for a in anns:
        b = a.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= a.width - 1).all() and (b[:, 3] <= a.height - 1).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert a.num_objects >= 1
    # sizes from tiny to large
    sides = np.concatenate([np.maximum(a.boxes[:, 2] - a.boxes[:, 0], a.boxes[:, 3] - a.boxes[:, 1]) + 1 for a in anns])
    assert sides.min() <= 20 and sides.max() >= 50


@pytest.mark.parametrize("shape", SHAPES)
def test_single_object_box_is_tight(shape) -> None:
    for seed in range(4):
        scene = render_scene(np.random.default_rng(seed), 96, 80, [shape], num_objects=1, clutter=False, noise=False)
        bare = render_scene(np.random.default_rng(seed), 96, 80, [shape], num_objects=0, clutter=False, noise=False)
        [obj] = scene.objects
        x1, y1, x2, y2 = obj.box
        assert obj.name == shape and obj.visible_fraction == 1.0
        mask = scene.owner == 0
        # every pixel of the shape is inside the box, and each box edge touches the shape
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (x1, y1, x2, y2)
        # the same from the pixels: the object changed each edge line of its box; outside it only faint
        # anti-aliasing (coverage < 1/2, e.g. along a sharp tip) and nothing at all 3 px away
        diff = np.abs(scene.image.astype(int) - bare.image.astype(int)).max(axis=2)
        for line in (
            diff[y1 : y2 + 1, x1],
            diff[y1 : y2 + 1, x2],
            diff[y1, x1 : x2 + 1],
            diff[y2, x1 : x2 + 1],
        ):
            assert line.max() > 10
        for margin, limit in ((1, diff.max() * 0.3), (3, 0)):
            outside = np.ones_like(diff, bool)
            outside[max(y1 - margin, 0) : y2 + margin + 1, max(x1 - margin, 0) : x2 + margin + 1] = False
            assert diff[outside].max(initial=0) <= limit


def test_occlusion_rules_in_scenes() -> None:
    seen_difficult = 0
    for seed in range(30):
        scene = render_scene(np.random.default_rng(seed), 160, 120, DEFAULT_CLASSES, num_objects=6)
        for k, obj in enumerate(scene.objects):
            visible = scene.owner == k
            ys, xs = np.nonzero(visible)
            assert (xs.min(), ys.min(), xs.max(), ys.max()) == obj.box  # box of the visible part
            if obj.visible_fraction < 0.5:
                assert obj.difficult
            seen_difficult += obj.difficult
    assert seen_difficult >= 1


def test_refuses_foreign_folders_and_overwrites_own(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        make_synthetic_dataset(tmp_path / "x", num_images=1, **SMALL)
    make_synthetic_dataset(tmp_path / "s", num_images=3, **SMALL)
    with pytest.raises(DatasetError, match="overwrite=True"):
        make_synthetic_dataset(tmp_path / "s", num_images=1, **SMALL)
    make_synthetic_dataset(tmp_path / "s", num_images=1, overwrite=True, **SMALL)
    assert sorted(p.name for p in (tmp_path / "s" / "JPEGImages").iterdir()) == ["000000.jpg"]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown synthetic shape 'blob'"):
        make_synthetic_dataset("unused", classes=("circle", "blob"))
    with pytest.raises(ConfigError, match="test_fraction"):
        make_synthetic_dataset("unused", test_fraction=1.0)
