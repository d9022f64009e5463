"""COCO-JSON datasets: category mapping, box conversion, iscrowd, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frcnn_trt.data.coco import CocoImdb, default_image_dir
from frcnn_trt.data.imdb import BACKGROUND
from frcnn_trt.errors import DatasetError

# category ids deliberately sparse and out of order: contiguous 1..K in id order is {3: 1, 18: 2, 90: 3}
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]


def _dataset(
    tmp_path: Path,
    image_writer: Any,
    coco_writer: Any,
    annotations: list[dict],
    images: list[dict] | None = None,
) -> tuple[Path, Path]:
    img_dir = tmp_path / "images"
    image_writer(img_dir / "a.jpg", (64, 48))
    image_writer(img_dir / "b.jpg", (40, 30))
    if images is None:
        images = [
            {"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 9, "file_name": "b.jpg", "width": 40, "height": 30},
        ]
    return coco_writer(tmp_path / "ann.json", images, annotations, CATEGORIES), img_dir


def test_mapping_boxes_and_iscrowd(tmp_path, image_writer, coco_writer) -> None:
    anns = [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 90, "bbox": [0.5, 1.25, 3.5, 2], "iscrowd": 1},
        {"id": 3, "image_id": 9, "category_id": 3, "bbox": [0, 0, 40, 30]},
    ]
    ann, img_dir = _dataset(tmp_path, image_writer, coco_writer, anns)
    imdb = CocoImdb(ann, img_dir)
    assert imdb.classes == (BACKGROUND, "car", "dog", "toothbrush")
    assert imdb.category_to_class == {3: 1, 18: 2, 90: 3}
    assert imdb.name == "coco_ann" and imdb.use_07_metric is False
    a, b = imdb.annotations()
    assert (a.image_id, a.path, a.width, a.height) == ("7", img_dir / "a.jpg", 64, 48)
    # x2 = x + w - 1, y2 = y + h - 1 (inclusive)
    np.testing.assert_allclose(a.boxes, [[10, 5, 29, 14], [0.5, 1.25, 3.0, 2.25]])
    assert a.classes.tolist() == [2, 3]
    assert a.difficult.tolist() == [False, True]  # iscrowd -> difficult (ignored)
    np.testing.assert_array_equal(b.boxes, [[0, 0, 39, 29]])  # full-image box, no clipping issue
    assert imdb.issues == []


@pytest.mark.parametrize(
    ("ann", "kind", "fragment"),
    [
        ({"category_id": 55, "bbox": [1, 1, 5, 5]}, "unknown_class", "'55'"),
        ({"category_id": 3, "bbox": [1, "x", 5, 5]}, "bad_value", "not four finite numbers"),
        ({"category_id": 3, "bbox": [1, 1, 5]}, "bad_value", "not four finite numbers"),
        ({"category_id": 3, "bbox": [5, 5, -3, 4]}, "inverted_box", "negative size"),
        ({"category_id": 3, "bbox": [5, 5, 0, 4]}, "zero_area_box", "zero-area"),
        ({"category_id": 3, "bbox": [60, 40, 10, 10]}, "clipped_box", "clipped to"),
        ({"category_id": 3, "bbox": [70, 5, 10, 10]}, "outside_box", "outside"),
    ],
)
def test_bad_annotations(tmp_path, image_writer, coco_writer, ann, kind, fragment) -> None:
    good = {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5]}
    path, img_dir = _dataset(tmp_path, image_writer, coco_writer, [good, {"id": 2, "image_id": 7, **ann}])
    imdb = CocoImdb(path, img_dir)
    [a, _] = imdb.annotations()
    assert a.num_objects == (2 if kind == "clipped_box" else 1)
    [issue] = [i for i in imdb.issues if i.kind != "no_objects"]
    assert issue.kind == kind and fragment in issue.message
    assert issue.file.endswith("a.jpg") and "annotation id 2 in ann.json" in issue.message
    with pytest.raises(DatasetError, match=r"a\.jpg.*strict mode"):
        CocoImdb(path, img_dir, strict=True).annotations()


def test_missing_image_and_size_fallback(tmp_path, image_writer, coco_writer) -> None:
    images = [
        {"id": 7, "file_name": "a.jpg"},
        {"id": 8, "file_name": "gone.jpg", "width": 5, "height": 5},
        {"id": 9, "file_name": "b.jpg", "width": 40, "height": 30},
    ]
    path, img_dir = _dataset(tmp_path, image_writer, coco_writer, [], images=images)
    imdb = CocoImdb(path, img_dir)
    assert imdb.image_ids == ["7", "9"]
    assert (imdb.annotations()[0].width, imdb.annotations()[0].height) == (64, 48)  # from the header
    kinds = {i.kind: i for i in imdb.issues}
    assert kinds["missing_size"].file.endswith("a.jpg")
    assert kinds["missing_image"].file.endswith("gone.jpg")
    assert kinds["no_objects"].severity == "info"


def test_dataset_level_errors(tmp_path, image_writer, coco_writer) -> None:
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"bad\.json: COCO annotation file is not valid JSON"):
        CocoImdb(bad, tmp_path / "images")
    with pytest.raises(DatasetError, match="not found"):
        CocoImdb(tmp_path / "none.json", tmp_path / "images")
    nocats = coco_writer(tmp_path / "nocat.json", [], [], [{"id": 1}])
    with pytest.raises(DatasetError, match="integer 'id' and a string 'name'"):
        CocoImdb(nocats, tmp_path / "images")


def test_default_image_dir_official_layout(tmp_path) -> None:
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "val2017").mkdir()
    assert (
        default_image_dir(tmp_path / "coco" / "annotations" / "instances_val2017.json") == tmp_path / "coco" / "val2017"
    )
    assert default_image_dir(tmp_path / "coco" / "annotations" / "other.json") == tmp_path / "coco" / "annotations"
