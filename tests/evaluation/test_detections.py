"""Detections container and its three file formats: round trips, atomic writes, malformed input."""

from __future__ import annotations

import json
import re
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
    ("line", "reason"),
    [
        ("000002 0.9 1 1 10", "expected 6 fields"),
        ("000002 0.9 1 x 10 10", "'x' is not a number"),
        ("000002 nan 1 1 10 10", "score: expected a finite number, got nan"),
        ("000002 0.9 1 1 inf 10", "box values must be finite"),
        ("000002 0.9 10 10 5 20", "inverted box"),
        ("0000\x002 0.9 1 1 10 10", "holds control characters"),
    ],
)
def test_voc_results_bad_line_is_skipped_and_reported(tmp_path: Path, line: str, reason: str) -> None:
    (tmp_path / "comp4_det_test_cat.txt").write_text(f"000001 0.9 1 1 10 10\n{line}\n000003 0.5 2 2 4 4\n")
    back = read_voc_results(tmp_path, CLASS_NAMES)
    assert back.image_ids == ("000001", "000003")  # the good lines on both sides survive
    assert back.num_skipped == 1
    assert re.search(rf"comp4_det_test_cat\.txt:2: (image_id .* )?{re.escape(reason)}.*, skipped$", back.problems[0])
    # Only bad lines: refused, naming the file, the line and the reason.
    (tmp_path / "comp4_det_test_cat.txt").write_text(line + "\n")
    with pytest.raises(DatasetError, match=r"no valid detection .*comp4_det_test_cat\.txt:1: "):
        read_voc_results(tmp_path, CLASS_NAMES)


def test_voc_results_undecodable_line_and_bom(tmp_path: Path) -> None:
    (tmp_path / "comp4_det_test_cat.txt").write_bytes(
        b"\xef\xbb\xbf000001 0.9 1 1 10 10\n00\xff\xfe02 0.9 1 1 10 10\n000003 0.5 2 2 4 4\n")
    back = read_voc_results(tmp_path, CLASS_NAMES)
    assert back.image_ids == ("000001", "000003")  # BOM gone, undecodable line 2 skipped
    assert back.problems == [f"{tmp_path / 'comp4_det_test_cat.txt'}:2: not UTF-8 text, line skipped"]


def test_voc_results_image_ids_filter(tmp_path: Path) -> None:
    (tmp_path / "comp4_det_test_cat.txt").write_text("000001 0.9 1 1 10 10\nother 0.9 1 1 10 10\n")
    back = read_voc_results(tmp_path, CLASS_NAMES, image_ids=["000001"])
    assert back.image_ids == ("000001",) and "not in the evaluated image set" in back.problems[0]


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
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}, "box must be a list of 4"),
        ({"image_id": 1, "category_id": [1], "bbox": [0, 0, 1, 1], "score": 1}, "category_id .1. is not"),
        ({"image_id": {"a": 1}, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, "image_id must be an int"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 1}, "inverted box"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": [1]}, "score: expected a number"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 10**400}, "score: .* out of range"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, r"missing key\(s\) \['score'\]"),
        ({"image_id": 1.5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, "image_id must be"),
    ],
)
def test_coco_results_malformed(tmp_path: Path, item: dict, pattern: str) -> None:
    path = tmp_path / "bad_results.json"
    path.write_text(json.dumps([item]))
    with pytest.raises(DatasetError, match=rf"no valid detection .*bad_results\.json: result 0: {pattern}"):
        read_coco_results(path, CLASS_NAMES)
    good = {"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    path.write_text(json.dumps([good, item, good]))
    back = read_coco_results(path, CLASS_NAMES)  # the bad result skipped, the good ones beside it kept
    assert len(back["2"]) == 2 and back.num_skipped == 1
    assert re.search(rf"bad_results\.json: result 1: {pattern}", back.problems[0])


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n{"image_id": 1,\n oops}\n]')
    with pytest.raises(DatasetError, match=r"broken\.json: detections file is not valid JSON \(line 3"):
        load_detections(path, CLASS_NAMES)
    with pytest.raises(DatasetError, match=r"broken\.json: detections file is not valid JSON"):
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
        ({"class_id": 1, "label": "cat", "score": "high", "box": [0, 0, 1, 1]}, "score: expected a number"),
        ({"class_id": 1, "label": "cat", "score": 0.5, "box": [0, 0, 1]}, "box must be a list of 4"),
        ({"class_id": 0, "score": 0.5, "box": [0, 0, 1, 1]}, "class_id must be an int >= 1"),
        ({"class_id": 1, "label": ["cat"], "score": 0.5, "box": [0, 0, 1, 1]}, "label must be a string"),
        ({"class_id": {"x": 1}, "score": 0.5, "box": [0, 0, 1, 1]}, "class_id must be an int"),
        ({"class_id": 1, "score": 0.5, "box": [0, 0, 1, 1e300]}, "box values must be finite numbers within"),
        ({"class_id": 1, "score": True, "box": [0, 0, 1, 1]}, "score: expected a number"),
    ],
)
def test_predictions_malformed(tmp_path: Path, det: dict, pattern: str) -> None:
    path = tmp_path / "preds.json"
    good = {"class_id": 1, "score": 0.5, "box": [0, 0, 1, 1]}
    path.write_text(json.dumps([{"image_id": "a", "detections": []}, {"image_id": "b", "detections": [good, det]}]))
    back = read_predictions(path, CLASS_NAMES)
    assert len(back["b"]) == 1 and back.num_skipped == 1  # the good detection beside the bad one survives
    assert re.search(rf"preds\.json: record 1 \(image 'b'\), detection 1: {pattern}", back.problems[0])
    path.write_text(json.dumps([{"image_id": "b", "detections": [det]}]))
    with pytest.raises(DatasetError, match=rf"no valid detection .*preds\.json: record 0 .*: {pattern}"):
        read_predictions(path, CLASS_NAMES)


@pytest.mark.parametrize(
    ("record", "pattern"),
    [
        ("oops", "expected an object"),
        ({"image_id": ["a"], "detections": []}, "image_id must be a string"),
        ({"image_id": "x\u0000y", "detections": []}, "control characters"),
        ({"image_id": "x" * 5000, "detections": []}, "longer than 1024"),
        ({"image_id": "c", "detections": {"class_id": 1}}, "'detections' must be a list"),
    ],
)
def test_predictions_bad_record_is_skipped(tmp_path: Path, record: object, pattern: str) -> None:
    path = tmp_path / "preds.json"
    path.write_text(json.dumps([{"image_id": "a", "detections": []}, record]))
    back = read_predictions(path, CLASS_NAMES)
    assert back.image_ids == ("a",) and back.num_skipped == 1
    assert re.search(rf"preds\.json: record 1: .*{pattern}", back.problems[0])


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
    with pytest.raises(DatasetError, match=r"what\.json: no item is a predictions\.json record"):
        load_detections(tmp_path / "what.json", CLASS_NAMES)
    (tmp_path / "dict.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(DatasetError, match=r"dict\.json: expected a JSON list"):
        load_detections(tmp_path / "dict.json", CLASS_NAMES)
    with pytest.raises(DatasetError, match=r"nope\.json: no such"):
        load_detections(tmp_path / "nope.json", CLASS_NAMES)


def test_json_nan_literals_skip_their_record_only(tmp_path: Path) -> None:
    """Python's json writes NaN/Infinity: the record holding one is skipped, the file is read."""
    path = tmp_path / "r.json"
    path.write_text('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN},'
                    ' {"image_id": 1, "category_id": 1, "bbox": [0, 0, Infinity, 1], "score": 0.5},'
                    ' {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.25}]')
    back = load_detections(path, CLASS_NAMES)
    np.testing.assert_array_equal(back["1"].scores, [0.25])
    assert back.num_skipped == 2 and "result 0: score: expected a finite number, got nan" in back.problems[0]


def test_special_files_and_limits_are_refused_by_name(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(DatasetError, match=r"fifo\.json: detections file must be a regular file, this is a FIFO"):
        load_detections(tmp_path / "fifo.json", CLASS_NAMES)
    os.mkfifo(tmp_path / "comp4_det_test_cat.txt")
    with pytest.raises(DatasetError, match=r"comp4_det_test_cat\.txt: results file must be a regular file"):
        load_detections(tmp_path, CLASS_NAMES)
    with pytest.raises(DatasetError, match="NUL byte"):
        load_detections("a\x00b.json", CLASS_NAMES)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 10000 + "]" * 10000)
    with pytest.raises(DatasetError, match=r"deep\.json: detections file nests deeper"):
        load_detections(deep, CLASS_NAMES)
    huge = tmp_path / "huge.json"
    huge.write_text('[{"image_id": ' + "9" * 5000 + ', "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]')
    with pytest.raises(DatasetError, match=r"huge\.json: detections file: "):
        load_detections(huge, CLASS_NAMES)
    big_int = tmp_path / "bigint.json"
    big_int.write_text('[{"image_id": ' + "9" * 300 + ', "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1},'
                       ' {"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]')
    back = load_detections(big_int, CLASS_NAMES)
    assert back.image_ids == ("7",) and "out of range" in back.problems[0]
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"image_id": "a", "detections": []}]).encode())
    assert load_detections(bom, CLASS_NAMES).image_ids == ("a",)
    utf16 = tmp_path / "utf16.json"
    utf16.write_bytes(b"\xff\xfe" + json.dumps([{"image_id": "a", "detections": []}]).encode("utf-16-le"))
    assert load_detections(utf16, CLASS_NAMES).image_ids == ("a",)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'[{"image_id": "\xff", "detections": []}]')
    with pytest.raises(DatasetError, match=r"bad\.json: detections file is not valid UTF-8 text \(line 1"):
        load_detections(bad, CLASS_NAMES)


def test_image_ids_filter_applies_to_every_format(tmp_path: Path) -> None:
    d = Detections()
    d.add("000001", np.array([[0, 0, 9, 9]]), np.array([0.5]), np.array([1]))
    d.add("other", np.array([[0, 0, 9, 9]]), np.array([0.5]), np.array([1]))
    write_voc_results(d, tmp_path / "voc", CLASS_NAMES)
    write_coco_results(d, tmp_path / "coco.json")
    with PredictionsWriter(tmp_path / "p.json", CLASS_NAMES) as w:
        for image_id, dd in d.items():
            w.write_image(image_id, f"{image_id}.jpg", 10, 10, dd.boxes, dd.scores, dd.classes)
    for path in (tmp_path / "voc", tmp_path / "coco.json", tmp_path / "p.json"):
        back = load_detections(path, CLASS_NAMES, image_ids=["000001"])
        assert back.image_ids == ("000001",) and back.num_skipped == 1, path
        assert "'other'" in back.problems[0] and "not in the evaluated image set" in back.problems[0]
