"""Detections container and its three file formats: round trips, atomic writes, malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation import (
    Detections,
    PredictionsWriter,
    evaluate_voc,
    load_detections,
    read_coco_results,
    read_predictions,
    read_voc_results,
    write_coco_results,
    write_voc_results,
)

from .synthetic import CAT, CLASS_NAMES, DOG, synthetic_annotations, synthetic_detections


def assert_same_detections(a: Detections, b: Detections, atol: float = 0.0) -> None:
    assert set(a.image_ids) == set(b.image_ids)
    for image_id in a:
        da, db = a[image_id], b[image_id]
        np.testing.assert_allclose(db.boxes, da.boxes, rtol=0, atol=atol)
        np.testing.assert_allclose(db.scores, da.scores, rtol=0, atol=atol)
        np.testing.assert_array_equal(db.classes, da.classes)


def by_class(d: Detections) -> Detections:
    """The same detections, each image's rows reordered by class (the order per-class files give)."""
    out = Detections()
    for image_id, dd in d.items():
        order = np.argsort(dd.classes, kind="stable")
        out.add(image_id, dd.boxes[order], dd.scores[order], dd.classes[order])
    return out


# ------------------------------------------------------------------------------------------------------
# Container
# ------------------------------------------------------------------------------------------------------


def test_container_add_get_and_from_flat() -> None:
    d = Detections()
    d.add("b", np.array([[0, 0, 1, 1]]), np.array([0.5]), np.array([1]))
    d.add("a", np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    d.add("b", np.array([[2, 2, 3, 3]]), np.array([0.7]), np.array([2]))
    assert d.image_ids == ("b", "a")
    assert len(d["b"]) == 2 and len(d["a"]) == 0 and len(d.get("zzz")) == 0
    assert d.num_detections == 2
    np.testing.assert_array_equal(d["b"].classes, [1, 2])
    with pytest.raises(KeyError):
        d["zzz"]
    flat = Detections.from_flat(
        ["x", "y", "x", "y"],
        np.arange(16.0).reshape(4, 4),
        np.array([0.1, 0.2, 0.3, 0.4]),
        np.array([1, 1, 2, 2]),
    )
    assert flat.image_ids == ("x", "y")
    np.testing.assert_array_equal(flat["x"].scores, [0.1, 0.3])  # file order kept within an image
    np.testing.assert_array_equal(flat["y"].boxes[:, 0], [4.0, 12.0])


# ------------------------------------------------------------------------------------------------------
# py-faster-rcnn per-class results files
# ------------------------------------------------------------------------------------------------------


def test_voc_results_round_trip(tmp_path: Path) -> None:
    dets = synthetic_detections()
    paths = write_voc_results(dets, tmp_path, CLASS_NAMES, image_ids=[a.image_id for a in synthetic_annotations()])
    assert [p.name for p in paths] == [
        "comp4_det_test_cat.txt",
        "comp4_det_test_dog.txt",
        "comp4_det_test_bird.txt",
    ]
    cat_lines = paths[0].read_text().splitlines()
    assert cat_lines[0] == "000001 0.900 11.0 11.0 50.0 50.0"  # 1-based, as py-faster-rcnn writes
    assert cat_lines[1] == "000001 0.800 12.0 12.0 51.0 51.0"
    assert len(cat_lines) == 7
    back = read_voc_results(tmp_path, CLASS_NAMES)
    assert_same_detections(by_class(dets), back, atol=5e-4)
    # Evaluating the files equals evaluating in memory (scores/boxes are rounded the same way).
    anns = synthetic_annotations()
    for use_07 in (True, False):
        mem = evaluate_voc(anns, dets, CLASS_NAMES, use_07)
        disk = evaluate_voc(anns, back, CLASS_NAMES, use_07)
        assert [c.ap for c in mem.per_class[:2]] == [c.ap for c in disk.per_class[:2]]


def test_voc_results_glob_single_file_and_class_names_with_underscores(tmp_path: Path) -> None:
    names = ("__background__", "light", "traffic_light")
    d = Detections()
    d.add("im1", np.array([[0, 0, 9, 9], [1, 1, 5, 5]]), np.array([0.5, 0.25]), np.array([1, 2]))
    write_voc_results(d, tmp_path, names, comp_id="comp4_abc", image_set="val")
    assert (tmp_path / "comp4_abc_det_val_traffic_light.txt").read_text() == "im1 0.250 2.0 2.0 6.0 6.0\n"
    back = read_voc_results(tmp_path / "comp4_abc_det_val_*.txt", names)
    np.testing.assert_array_equal(back["im1"].classes, [1, 2])  # the longest class name wins
    single = read_voc_results(tmp_path / "comp4_abc_det_val_traffic_light.txt", names)
    np.testing.assert_array_equal(single["im1"].boxes, [[1, 1, 5, 5]])


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("000001 0.9 1 1 10\n", r"comp4_det_test_cat\.txt:1: expected 6 fields"),
        ("000001 0.9 1 1 10 10\n000002 0.9 1 x 10 10\n", r"comp4_det_test_cat\.txt:2: 'x' is not a number"),
        ("000001 nan 1 1 10 10\n", r"comp4_det_test_cat\.txt:1: non-finite"),
    ],
)
def test_voc_results_bad_lines(tmp_path: Path, content: str, pattern: str) -> None:
    (tmp_path / "comp4_det_test_cat.txt").write_text(content)
    with pytest.raises(DatasetError, match=pattern):
        read_voc_results(tmp_path, CLASS_NAMES)


def test_voc_results_unknown_class_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "comp4_det_test_zebra.txt").write_text("")
    with pytest.raises(DatasetError, match=r"comp4_det_test_zebra\.txt: unknown class 'zebra'"):
        read_voc_results(tmp_path, CLASS_NAMES)
    (tmp_path / "comp4_det_test_zebra.txt").unlink()
    (tmp_path / "comp4_det_test_cat.txt").write_text("")
    (tmp_path / "comp4_x_det_test_cat.txt").write_text("")
    with pytest.raises(DatasetError, match="second results file for class 'cat'"):
        read_voc_results(tmp_path, CLASS_NAMES)
    with pytest.raises(DatasetError, match=r"missing_dir: no such results file or directory"):
        read_voc_results(tmp_path / "missing_dir", CLASS_NAMES)
    with pytest.raises(DatasetError, match=r"nothing_\*\.txt: no results files match"):
        read_voc_results(tmp_path / "nothing_*.txt", CLASS_NAMES)


def test_voc_results_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no per-class results files"):
        read_voc_results(tmp_path, CLASS_NAMES)


# ------------------------------------------------------------------------------------------------------
# COCO results JSON
# ------------------------------------------------------------------------------------------------------


def test_coco_results_round_trip(tmp_path: Path) -> None:
    dets = synthetic_detections()
    path = write_coco_results(dets, tmp_path / "results.json")
    items = json.loads(path.read_text())
    assert items[0] == {
        "image_id": 1,
        "category_id": CAT,
        "bbox": [10.0, 10.0, 40.0, 40.0],
        "score": items[0]["score"],
    }
    assert items[0]["score"] == pytest.approx(0.9)
    ids = [a.image_id for a in synthetic_annotations()]
    back = read_coco_results(path, CLASS_NAMES, image_ids=ids)
    assert_same_detections(dets, back, atol=1e-6)
    # Without the image set, int ids come back as str(int).
    assert read_coco_results(path, CLASS_NAMES).image_ids[0] == "1"


def test_coco_results_string_ids_and_other_tools(tmp_path: Path) -> None:
    d = Detections()
    d.add("2008_000001", np.array([[0, 0, 9, 19]]), np.array([0.5]), np.array([DOG]))
    path = write_coco_results(d, tmp_path / "r.json")  # not int-like -> strings
    assert json.loads(path.read_text())[0]["image_id"] == "2008_000001"
    assert_same_detections(d, read_coco_results(path, CLASS_NAMES))
    with pytest.raises(DatasetError, match="not a decimal integer"):
        write_coco_results(d, tmp_path / "r2.json", image_id_mode="int")
    # A file from another tool: int image ids matching int(image_id).
    other = [{"image_id": 5, "category_id": 1, "bbox": [1.5, 2, 10, 20], "score": 0.3, "extra": 1}]
    (tmp_path / "other.json").write_text(json.dumps(other))
    back = read_coco_results(tmp_path / "other.json", CLASS_NAMES, image_ids=["000001", "000005"])
    np.testing.assert_allclose(back["000005"].boxes, [[1.5, 2, 10.5, 21]])
    with pytest.raises(DatasetError, match="image_id 5 matches no image id"):
        read_coco_results(tmp_path / "other.json", CLASS_NAMES, image_ids=["000001"])


@pytest.mark.parametrize(
    ("item", "pattern"),
    [
        ({"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}, "category_id 0 is not a class"),
        ({"image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1], "score": 1}, "category_id 9"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}, "bbox must be 4"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, r"missing key\(s\) \['score'\]"),
        ({"image_id": 1.5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, "image_id must be"),
    ],
)
def test_coco_results_malformed(tmp_path: Path, item: dict, pattern: str) -> None:
    path = tmp_path / "bad_results.json"
    path.write_text(json.dumps([item]))
    with pytest.raises(DatasetError, match=rf"bad_results\.json: result 0: {pattern}"):
        read_coco_results(path, CLASS_NAMES)


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n{"image_id": 1,\n oops}\n]')
    with pytest.raises(DatasetError, match=r"broken\.json: invalid JSON at line 3"):
        load_detections(path, CLASS_NAMES)
    with pytest.raises(DatasetError, match=r"broken\.json: invalid JSON"):
        read_predictions(path)


# ------------------------------------------------------------------------------------------------------
# predictions.json
# ------------------------------------------------------------------------------------------------------


def write_synthetic_predictions(path: Path) -> Detections:
    dets = synthetic_detections()
    with PredictionsWriter(path, CLASS_NAMES) as w:
        for a in synthetic_annotations():
            d = dets.get(a.image_id)
            w.write_image(a.image_id, a.path, a.width, a.height, d.boxes, d.scores.astype(np.float32), d.classes)
    return dets


def test_predictions_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "predictions.json"
    dets = write_synthetic_predictions(path)
    records = json.loads(path.read_text())
    assert [r["image_id"] for r in records] == ["000001", "000002", "000003", "000004", "000005"]
    first = records[0]["detections"][0]
    assert first["label"] == "cat" and first["class_id"] == CAT and first["box"] == [10.0, 10.0, 49.0, 49.0]
    assert records[0]["width"] == 100 and records[0]["file"].endswith("000001.jpg")
    back = read_predictions(path, CLASS_NAMES)
    assert_same_detections(dets, back)  # float32 values survive exactly
    assert back.image_ids == tuple(r["image_id"] for r in records)  # images without detections included
    assert_same_detections(dets, load_detections(path, CLASS_NAMES))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_predictions_writer_streams_to_a_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "predictions.json"
    w = PredictionsWriter(path, CLASS_NAMES)
    w.write({"image_id": "a", "file": "a.jpg", "width": 1, "height": 1, "detections": []})
    assert not path.exists()
    (tmp,) = tmp_path.iterdir()
    assert tmp.read_text().startswith('[\n{"image_id": "a"')  # flushed as it goes
    assert w.close() == path
    assert json.loads(path.read_text())[0]["image_id"] == "a"
    with pytest.raises(ValueError, match="closed"):
        w.write({"image_id": "b", "detections": []})


def test_predictions_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "predictions.json"
    with pytest.raises(RuntimeError, match="boom"), PredictionsWriter(path, CLASS_NAMES) as w:
        w.write({"image_id": "a", "detections": []})
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the final file nor a temporary one
    path.write_text("[]\n")  # a previous run's file survives a failed one
    with pytest.raises(RuntimeError), PredictionsWriter(path) as w:
        w.write({"image_id": "a", "detections": []})
        raise RuntimeError("boom")
    assert path.read_text() == "[]\n"
    assert list(tmp_path.iterdir()) == [path]


def test_predictions_writer_empty(tmp_path: Path) -> None:
    with PredictionsWriter(tmp_path / "p.json"):
        pass
    assert json.loads((tmp_path / "p.json").read_text()) == []
    assert len(read_predictions(tmp_path / "p.json")) == 0


@pytest.mark.parametrize(
    ("det", "pattern"),
    [
        ({"class_id": 1, "label": "zebra", "score": 0.5, "box": [0, 0, 1, 1]}, "unknown class label 'zebra'"),
        ({"class_id": 2, "label": "cat", "score": 0.5, "box": [0, 0, 1, 1]}, "class_id 2 .'dog'. disagrees"),
        ({"class_id": 1, "label": "cat", "score": "high", "box": [0, 0, 1, 1]}, "score must be"),
        ({"class_id": 1, "label": "cat", "score": 0.5, "box": [0, 0, 1]}, "box must be 4"),
        ({"class_id": 0, "score": 0.5, "box": [0, 0, 1, 1]}, "class_id must be an int >= 1"),
    ],
)
def test_predictions_malformed(tmp_path: Path, det: dict, pattern: str) -> None:
    path = tmp_path / "preds.json"
    path.write_text(json.dumps([{"image_id": "a", "detections": []}, {"image_id": "b", "detections": [det]}]))
    with pytest.raises(DatasetError, match=rf"preds\.json: record 1 \(image 'b'\), detection 0: {pattern}"):
        read_predictions(path, CLASS_NAMES)


# ------------------------------------------------------------------------------------------------------
# Auto-detection
# ------------------------------------------------------------------------------------------------------


def test_load_detections_detects_each_format(tmp_path: Path) -> None:
    dets = synthetic_detections()
    ids = [a.image_id for a in synthetic_annotations()]
    write_voc_results(dets, tmp_path / "voc", CLASS_NAMES)
    write_coco_results(dets, tmp_path / "coco.json")
    write_synthetic_predictions(tmp_path / "predictions.json")
    assert_same_detections(by_class(dets), load_detections(tmp_path / "voc", CLASS_NAMES), atol=5e-4)
    assert_same_detections(
        by_class(dets), load_detections(tmp_path / "voc" / "comp4_det_test_*.txt", CLASS_NAMES), atol=5e-4
    )
    assert_same_detections(dets, load_detections(tmp_path / "coco.json", CLASS_NAMES, image_ids=ids), atol=1e-6)
    assert_same_detections(dets, load_detections(tmp_path / "predictions.json", CLASS_NAMES))


def test_load_detections_rejects_unknown_json(tmp_path: Path) -> None:
    (tmp_path / "what.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(DatasetError, match=r"what\.json: item 0 is neither"):
        load_detections(tmp_path / "what.json", CLASS_NAMES)
    (tmp_path / "dict.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(DatasetError, match=r"dict\.json: expected a JSON list"):
        load_detections(tmp_path / "dict.json", CLASS_NAMES)
    with pytest.raises(DatasetError, match=r"nope\.json: no such"):
        load_detections(tmp_path / "nope.json", CLASS_NAMES)
