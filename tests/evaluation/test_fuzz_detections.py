"""Property tests of the three detections readers: any input ends in detections or a DatasetError naming the
file; a malformed record is skipped and reported while every valid record beside it survives, values intact."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frcnn_trt.errors import DatasetError
from frcnn_trt.evaluation import Detections, load_detections, read_coco_results, read_predictions, read_voc_results

from .synthetic import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES) - 1
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values that are malformed wherever an id, a label or a number is expected.
BAD_ANY = st.sampled_from([None, [], [1], {}, {"a": 1}, True, math.nan, math.inf, -math.inf, 10**400])
GOOD_IDS = st.sampled_from(["000001", "000002", "2008_000003", "img-4", "5"])
COORD = st.floats(-1e4, 1e4, allow_nan=False)
SCORE = st.floats(-10, 10, allow_nan=False) | st.integers(-5, 5)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzdet")


def _tmp(scratch: Path) -> Path:
    """A fresh folder per example (hypothesis runs many examples in one test call)."""
    return Path(tempfile.mkdtemp(dir=scratch))


@st.composite
def coco_result(draw: st.DrawFn) -> dict[str, Any]:
    x, y = draw(COORD), draw(COORD)
    return {"image_id": draw(GOOD_IDS), "category_id": draw(st.integers(1, NUM_CLASSES)),
            "bbox": [x, y, draw(st.floats(0, 1e4)), draw(st.floats(0, 1e4))], "score": draw(SCORE)}


@st.composite
def broken(draw: st.DrawFn, good: st.SearchStrategy[dict[str, Any]], fields: dict[str, st.SearchStrategy[Any]],
           optional: frozenset[str] = frozenset()) -> Any:
    """A valid record with one field made bad (or a required one dropped), or a record that is not an object."""
    item = dict(draw(good))
    how = draw(st.sampled_from(["field", "drop", "not_object"]))
    if how == "not_object":
        return draw(st.sampled_from([None, 5, "text", [item], [], True]))
    key = draw(st.sampled_from(sorted(fields)))
    if how == "drop" and key not in optional:
        item.pop(key)
    else:
        item[key] = draw(fields[key])
    return item


COCO_BAD = {
    "image_id": BAD_ANY | st.sampled_from(["", "a\x00b", "x" * 2000, "tab\there", 1.5]),
    "category_id": BAD_ANY | st.sampled_from([0, -1, NUM_CLASSES + 1, 2**70, 1.0, "1"]),
    "bbox": BAD_ANY | st.sampled_from([[0, 0, 1], [0, 0, 1, 1, 1], [0, 0, -5, 1], [0, "0", 1, 1], [0, 0, 1, math.nan],
                                       [1e300, 0, 1, 1], [[0], 0, 1, 1], "0 0 1 1"]),
    "score": BAD_ANY | st.sampled_from(["0.5", [0.5]]),
}


def _same(dets: Detections, expected: dict[str, list[tuple[list[float], float, int]]]) -> None:
    assert set(dets.image_ids) == set(expected)
    for image_id, rows in expected.items():
        d = dets[image_id]
        np.testing.assert_array_equal(d.boxes, np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4))
        np.testing.assert_array_equal(d.scores, [float(r[1]) for r in rows])
        np.testing.assert_array_equal(d.classes, [r[2] for r in rows])


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), coco_result()), max_size=8), st.data())
def test_coco_results_keep_every_valid_result(scratch: Path, items: list[tuple[bool, dict[str, Any]]],
                                               data: st.DataObject) -> None:
    records: list[Any] = []
    expected: dict[str, list[tuple[list[float], float, int]]] = {}
    for ok, item in items:
        if ok:
            records.append(item)
            x, y, w, h = item["bbox"]
            expected.setdefault(item["image_id"], []).append(([x, y, x + w - 1.0, y + h - 1.0], item["score"],
                                                              item["category_id"]))
        else:
            records.append(data.draw(broken(coco_result(), COCO_BAD)))
    path = _tmp(scratch) / "results.json"
    path.write_text(json.dumps(records))
    num_bad = sum(not ok for ok, _ in items)
    try:
        dets = read_coco_results(path, CLASS_NAMES)
    except DatasetError as e:
        assert not expected and num_bad and str(e).startswith(f"{path}: no valid detection")
        return
    _same(dets, expected)
    assert dets.num_skipped == num_bad and all(str(path) in p for p in dets.problems)


@st.composite
def prediction(draw: st.DrawFn) -> dict[str, Any]:
    x1, y1 = draw(COORD), draw(COORD)
    cid = draw(st.integers(1, NUM_CLASSES))
    det: dict[str, Any] = {"class_id": cid, "score": draw(SCORE),
                           "box": [x1, y1, x1 + draw(st.floats(0, 1e3)), y1 + draw(st.floats(0, 1e3))]}
    if draw(st.booleans()):
        det["label"] = CLASS_NAMES[cid]
    return det


PRED_BAD = {
    "class_id": BAD_ANY | st.sampled_from([0, -3, NUM_CLASSES + 1, 2**80, 2.0]),
    "score": BAD_ANY | st.sampled_from(["high", [1]]),
    "box": COCO_BAD["bbox"] | st.sampled_from([[5, 5, 0, 0], [0, 0, 1, math.inf]]),
    "label": st.sampled_from(["zebra", "__background__", ["cat"], {"n": 1}, 3]),
}


Records = list[tuple[str, list[tuple[bool, dict[str, Any]]]]]


@SETTINGS
@given(st.lists(st.tuples(GOOD_IDS, st.lists(st.tuples(st.booleans(), prediction()), max_size=4)), max_size=5),
       st.lists(BAD_ANY | st.sampled_from([{"image_id": "q"}, {"image_id": ["q"], "detections": []},
                                           {"image_id": "q\x00", "detections": []},
                                           {"image_id": "q", "detections": {"a": 1}}]), max_size=2),
       st.data())
def test_predictions_keep_every_valid_detection(scratch: Path, records: Records,
                                                bad_records: list[Any], data: st.DataObject) -> None:
    out: list[Any] = []
    expected: dict[str, list[tuple[list[float], float, int]]] = {}
    bad_dets = 0
    for image_id, dets in records:
        expected.setdefault(image_id, [])
        rec_dets = []
        for ok, det in dets:
            if ok:
                rec_dets.append(det)
                expected[image_id].append((det["box"], det["score"], det["class_id"]))
            else:
                bad = data.draw(broken(st.just(det), PRED_BAD, frozenset({"label"})))
                if isinstance(bad, dict) and bad.get("class_id") is None and bad.get("label") in CLASS_NAMES[1:]:
                    bad["class_id"] = -1  # a label alone names the class: still make this one bad
                rec_dets.append(bad)
                bad_dets += 1
        out.append({"image_id": image_id, "file": f"{image_id}.jpg", "detections": rec_dets})
    out[len(out) // 2:len(out) // 2] = bad_records
    path = _tmp(scratch) / "predictions.json"
    path.write_text(json.dumps(out))
    try:
        dets_read = read_predictions(path, CLASS_NAMES)
    except DatasetError as e:
        assert not any(expected.values()) and (bad_dets or not expected) and "no valid detection" in str(e)
        return
    _same(dets_read, expected)
    assert dets_read.num_skipped == bad_dets + len(bad_records)
    assert _same(load_detections(path, CLASS_NAMES), expected) is None


TOKENS = st.sampled_from(["000001", "img2", "0.5", "1", "-3", "12.5", "nan", "inf", "-inf", "1e999", "x", "[1]",
                          "{}", "\x00", "1_0", "0x10", "", "a\x00b", "\ufeff", "\u00e9"])


@SETTINGS
@given(st.lists(st.one_of(st.tuples(st.just(True), GOOD_IDS, st.floats(0, 1), COORD, COORD,
                                    st.floats(0, 500), st.floats(0, 500)),
                          st.tuples(st.just(False), st.lists(TOKENS, max_size=8))), max_size=10),
       st.binary(max_size=6))
def test_voc_results_keep_every_valid_line(scratch: Path, lines: list[tuple[Any, ...]], junk: bytes) -> None:
    root = _tmp(scratch)
    body: list[bytes] = []
    expected: dict[str, list[tuple[list[float], float, int]]] = {}
    for line in lines:
        if line[0]:
            _, image_id, score, x1, y1, w, h = line
            text = f"{image_id} {score!r} {x1 + 1.0!r} {y1 + 1.0!r} {x1 + w + 1.0!r} {y1 + h + 1.0!r}"
            expected.setdefault(image_id, []).append(([x1, y1, x1 + w, y1 + h], score, 1))
            body.append(text.encode())
        else:
            body.append(" ".join(line[1]).encode())
    body.insert(len(body) // 2, junk.replace(b"\n", b"").replace(b"\r", b""))
    (root / "comp4_det_test_cat.txt").write_bytes(b"\n".join(body) + b"\n")
    try:
        dets = read_voc_results(root, CLASS_NAMES)
    except DatasetError as e:
        assert not expected and "comp4_det_test_cat.txt" in str(e)
        return
    assert set(expected) <= set(dets.image_ids)  # a junk line can happen to be valid; every valid line survives
    for image_id, rows in expected.items():
        boxes = dets[image_id].boxes
        for box, _, _ in rows:
            want = np.array(box) + 1.0 - 1.0  # written 1-based, read back as x - 1
            assert np.isclose(boxes, want, rtol=0, atol=1e-9 * (1 + np.abs(want).max())).all(axis=1).any()


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=64),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                 lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                     st.sampled_from(["image_id", "detections", "bbox", "category_id", "score", "box", "class_id",
                                      "label", "x"]), kids, max_size=5), max_leaves=20).map(
        lambda v: json.dumps(v).encode())))
def test_any_json_file_is_read_or_refused_by_name(scratch: Path, raw: bytes) -> None:
    path = _tmp(scratch) / "dets.json"
    path.write_bytes(raw)
    try:
        load_detections(path, CLASS_NAMES, image_ids=["000001", "5"])
    except DatasetError as e:
        assert str(path) in str(e) and "\n" not in str(e).strip()
