"""PASCAL VOC / VOC-format folders: parsing, layout, classes, and the bad-input policy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frcnn_trt.data.imdb import BACKGROUND
from frcnn_trt.data.voc import VOC_CLASSES, PascalVoc, VocFolder, parse_voc_xml
from frcnn_trt.errors import DatasetError

# VOC2007 000001.xml (353x500): a dog and a person; the person is made difficult here.
VOC_000001 = [("dog", 48, 240, 195, 371, 0), ("person", 8, 12, 352, 498, 1)]


def test_voc_class_order_is_py_faster_rcnn() -> None:
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[11] == "dog" and VOC_CLASSES[14] == "person"
    assert VOC_CLASSES[-1] == "tvmonitor"


def test_hand_written_xml_is_zero_based_with_difficult_and_class_index(voc_root_builder, tmp_path) -> None:
    b = voc_root_builder("2007")
    b.add("000001", VOC_000001, size=(353, 500), image_size=(35, 50)).split("trainval", ["000001"])
    imdb = PascalVoc(2007, "trainval", tmp_path / "data")
    [ann] = imdb.annotations()
    assert ann.image_id == "000001" and (ann.width, ann.height) == (353, 500)  # <size>, not the file
    assert ann.boxes.dtype == np.float32
    np.testing.assert_array_equal(ann.boxes, [[47, 239, 194, 370], [7, 11, 351, 497]])
    assert ann.classes.tolist() == [12, 15]  # dog, person in the 21-tuple
    assert ann.difficult.tolist() == [False, True]
    assert imdb.classes[0] == BACKGROUND and imdb.classes[12] == "dog" and imdb.num_classes == 21
    assert imdb.issues == []


def test_voc_2007_trainval_layout_and_metric(voc_root_builder, tmp_path) -> None:
    b = voc_root_builder("2007")
    for i in ("000005", "000007", "000009"):
        b.add(i, [("car", 10, 10, 30, 30, 0)])
    b.split("trainval", ["000005", "000009"]).split("test", ["000007"])
    trainval = PascalVoc("2007", "trainval", tmp_path / "data")
    assert trainval.name == "voc_2007_trainval"
    assert trainval.image_ids == ["000005", "000009"]
    assert trainval.image_path(1) == b.root / "JPEGImages" / "000009.jpg"
    assert trainval.use_07_metric is True
    test = PascalVoc("2007", "test", tmp_path / "data")
    assert test.image_ids == ["000007"]


def test_voc_2012_tarball_layout(tmp_path, voc_builder) -> None:
    # the tarball's VOCdevkit/VOC2012 is accepted when VOCdevkit2012/ does not exist
    root = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    voc_builder.root = root
    voc_builder.add("2008_000002", [("tvmonitor", 1, 1, 20, 20, 0)]).split("val", ["2008_000002"])
    imdb = PascalVoc(2012, "val", tmp_path / "data")
    assert imdb.use_07_metric is False
    assert imdb.image_ids == ["2008_000002"]


def test_missing_devkit_names_the_paths(tmp_path) -> None:
    with pytest.raises(DatasetError, match="VOCdevkit2007"):
        PascalVoc(2007, "trainval", tmp_path)


def test_missing_split_lists_available_splits(voc_builder) -> None:
    voc_builder.add("a", [("car", 1, 1, 5, 5, 0)]).split("trainval", ["a"]).split("test", ["a"])
    with pytest.raises(DatasetError, match=r"trainvl\.txt.*did you mean 'trainval'.*test, trainval"):
        VocFolder(voc_builder.root, "trainvl", ["car"])


def test_split_all_without_imagesets(voc_builder) -> None:
    voc_builder.add("b", [("car", 1, 1, 5, 5, 0)]).add("a", [("car", 1, 1, 5, 5, 0)])
    assert VocFolder(voc_builder.root, "all", ["car"]).image_ids == ["a", "b"]


# -- classes of custom folders ----------------------------------------------------------------------------
def _two_class_folder(b: Any) -> None:
    b.add("a", [("zebra", 1, 1, 10, 10, 0)]).add("b", [("apple", 1, 1, 10, 10, 0)]).add("c", [("kiwi", 2, 2, 9, 9, 0)])
    b.split("trainval", ["a", "b"])


def test_classes_from_classes_txt(voc_builder) -> None:
    _two_class_folder(voc_builder)
    voc_builder.classes(["# my classes", "zebra", "", "apple", "kiwi"])
    imdb = VocFolder(voc_builder.root)
    assert imdb.classes == (BACKGROUND, "zebra", "apple", "kiwi")
    assert imdb.class_source == "classes.txt"
    assert [a.classes.tolist() for a in imdb.annotations()] == [[1], [2]]


def test_explicit_classes_win_and_accept_background(voc_builder) -> None:
    _two_class_folder(voc_builder)
    voc_builder.classes(["zebra"])
    imdb = VocFolder(voc_builder.root, classes=[BACKGROUND, "apple", "zebra", "kiwi"])
    assert imdb.classes == (BACKGROUND, "apple", "zebra", "kiwi")
    assert [a.classes.tolist() for a in imdb.annotations()] == [[2], [1]]


def test_inferred_classes_are_sorted_over_all_annotations_and_logged(voc_builder, caplog) -> None:
    _two_class_folder(voc_builder)
    with caplog.at_level(logging.INFO, logger="frcnn_trt.data.voc"):
        imdb = VocFolder(voc_builder.root)
    # "kiwi" only appears outside the split but still gets an index: train/test agree on indices
    assert imdb.classes == (BACKGROUND, "apple", "kiwi", "zebra")
    assert imdb.class_source == "inferred"
    assert "apple, kiwi, zebra" in caplog.text


def test_duplicate_classes_rejected(voc_builder) -> None:
    _two_class_folder(voc_builder)
    with pytest.raises(DatasetError, match="duplicate class"):
        VocFolder(voc_builder.root, classes=["apple", "apple"])


def test_case_insensitive_name_fallback(voc_builder) -> None:
    voc_builder.add("a", [("Car", 1, 1, 10, 10, 0)]).split("trainval", ["a"])
    assert VocFolder(voc_builder.root, classes=["car"]).annotations()[0].classes.tolist() == [1]


def test_png_bytes_named_jpg_size_from_header(voc_builder) -> None:
    voc_builder.add("p", [("car", 1, 1, 10, 10, 0)], size=None, image_size=(50, 40), fmt="PNG")
    voc_builder.split("trainval", ["p"])
    imdb = VocFolder(voc_builder.root, classes=["car"])
    [ann] = imdb.annotations()
    assert (ann.width, ann.height) == (50, 40)
    assert [i.kind for i in imdb.issues] == ["missing_size"]
    assert "p.xml" in imdb.issues[0].file and "50x40" in imdb.issues[0].message


def test_defused_xml_rejects_entity_expansion(voc_builder) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
        "<annotation><filename>&y;</filename></annotation>"
    )
    voc_builder.add("e", xml=bomb).split("trainval", ["e"])
    imdb = VocFolder(voc_builder.root, classes=["car"])
    assert imdb.image_ids == []
    assert imdb.issues[0].kind == "malformed_file" and "unsafe" in imdb.issues[0].message


def test_parse_voc_xml_names_file_on_error(tmp_path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"bad\.xml: malformed or truncated XML"):
        parse_voc_xml(bad)


# -- bad input: one bad record never takes the dataset down (unless strict) -------------------------------
GOOD = ("car", 5, 5, 20, 20, 0)
W, H = 64, 48

# id, objects or raw xml, kind, record kept, boxes kept (0-based), message fragment
BAD_CASES = [
    (
        "truncated_xml",
        "<annotation><size><width>64</wid",
        "malformed_file",
        False,
        None,
        "malformed or truncated",
    ),
    ("wrong_root", "<voc><object/></voc>", "malformed_file", False, None, "root element is <voc>"),
    ("inverted", [GOOD, ("car", 30, 5, 10, 20, 0)], "inverted_box", True, [[4, 4, 19, 19]], "xmin=30"),
    ("zero_area", [GOOD, ("car", 30, 5, 30, 20, 0)], "zero_area_box", True, [[4, 4, 19, 19]], "zero-area"),
    ("xmin_zero", [("car", 0, 5, 20, 20, 0)], "clipped_box", True, [[0, 4, 19, 19]], "[-1, 4, 19, 19]"),
    ("past_edge", [("car", 50, 40, 80, 60, 0)], "clipped_box", True, [[49, 39, 63, 47]], "clipped to"),
    ("outside", [GOOD, ("car", 70, 5, 90, 20, 0)], "outside_box", True, [[4, 4, 19, 19]], "outside"),
    ("unknown", [GOOD, ("unicorn", 1, 1, 9, 9, 0)], "unknown_class", True, [[4, 4, 19, 19]], "'unicorn'"),
    ("non_numeric", [GOOD, ("car", "abc", 5, 20, 20, 0)], "bad_value", True, [[4, 4, 19, 19]], "xmin='abc'"),
    ("nan_coord", [GOOD, ("car", "nan", 5, 20, 20, 0)], "bad_value", True, [[4, 4, 19, 19]], "xmin='nan'"),
    ("empty_coord", [GOOD, ("car", "", 5, 20, 20, 0)], "missing_field", True, [[4, 4, 19, 19]], "<xmin>"),
]


def _folder_with(b: Any, case_id: str, content: str | list[tuple], **kw: Any) -> Path:
    b.add("good", [GOOD])
    if isinstance(content, str):
        b.add(case_id, xml=content)
    else:
        b.add(case_id, content, **kw)
    b.split("trainval", ["good", case_id])
    return b.root


@pytest.mark.parametrize(
    ("case_id", "content", "kind", "kept", "boxes", "fragment"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_input_non_strict(voc_builder, case_id, content, kind, kept, boxes, fragment) -> None:
    root = _folder_with(voc_builder, case_id, content)
    imdb = VocFolder(root, classes=["car"])
    anns = {a.image_id: a for a in imdb.annotations()}
    assert "good" in anns  # the rest of the dataset survives
    assert (case_id in anns) is kept
    if kept:
        np.testing.assert_array_equal(anns[case_id].boxes, np.array(boxes, np.float32).reshape(-1, 4))
    [issue] = [i for i in imdb.issues if i.kind != "no_objects"]
    assert issue.kind == kind
    assert issue.file.endswith(f"{case_id}.xml")
    assert fragment in issue.message


@pytest.mark.parametrize(
    ("case_id", "content", "kind", "kept", "boxes", "fragment"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_input_strict_raises_naming_file(voc_builder, case_id, content, kind, kept, boxes, fragment) -> None:
    root = _folder_with(voc_builder, case_id, content)
    imdb = VocFolder(root, classes=["car"], strict=True)
    with pytest.raises(DatasetError, match=rf"{case_id}\.xml.*strict mode"):
        imdb.annotations()


def test_missing_image_skipped_or_strict(voc_builder) -> None:
    voc_builder.add("good", [GOOD]).add("noimg", [GOOD], image=False).split("trainval", ["good", "noimg"])
    imdb = VocFolder(voc_builder.root, classes=["car"])
    assert imdb.image_ids == ["good"]
    [issue] = imdb.issues
    assert issue.kind == "missing_image" and issue.file.endswith("JPEGImages/noimg.jpg")
    with pytest.raises(DatasetError, match=r"noimg\.jpg"):
        VocFolder(voc_builder.root, classes=["car"], strict=True).annotations()


def test_missing_annotation_file(voc_builder) -> None:
    voc_builder.add("good", [GOOD]).split("trainval", ["good", "ghost"])
    imdb = VocFolder(voc_builder.root, classes=["car"])
    assert imdb.image_ids == ["good"]
    assert imdb.issues[0].kind == "missing_annotation" and imdb.issues[0].file.endswith("ghost.xml")


def test_missing_size_falls_back_to_header_or_strict(voc_builder) -> None:
    voc_builder.add("nosize", [GOOD], size=None, image_size=(40, 30)).split("trainval", ["nosize"])
    assert VocFolder(voc_builder.root, classes=["car"]).annotations()[0].width == 40
    with pytest.raises(DatasetError, match=r"nosize\.xml.*no <size>"):
        VocFolder(voc_builder.root, classes=["car"], strict=True).annotations()


def test_no_objects_kept_and_reported_even_in_strict(voc_builder) -> None:
    voc_builder.add("empty", []).add("good", [GOOD]).split("trainval", ["empty", "good"])
    for strict in (False, True):
        imdb = VocFolder(voc_builder.root, classes=["car"], strict=strict)
        assert imdb.image_ids == ["empty", "good"]
        assert imdb.annotations()[0].boxes.shape == (0, 4)
        [issue] = imdb.issues
        assert (issue.kind, issue.severity) == ("no_objects", "info") and issue.file.endswith("empty.xml")


def test_difficult_kept_and_flagged(voc_builder) -> None:
    voc_builder.add("d", [("car", 1, 1, 9, 9, 1), GOOD]).split("trainval", ["d"])
    imdb = VocFolder(voc_builder.root, classes=["car"], use_diff=False)
    assert imdb.annotations()[0].difficult.tolist() == [True, False]
    assert imdb.use_diff is False


def test_one_summary_warning_not_one_line_per_problem(voc_builder, caplog) -> None:
    objs = [GOOD] + [("unicorn", 1, 1, 9, 9, 0)] * 30
    voc_builder.add("u", objs).split("trainval", ["u"])
    with caplog.at_level(logging.WARNING):
        imdb = VocFolder(voc_builder.root, classes=["car"])
        imdb.annotations()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "30 annotation problem" in warnings[0].getMessage() and "unicorn" in warnings[0].getMessage()
    assert len(imdb.issues) == 30


def test_fingerprint_changes_with_annotations(voc_builder) -> None:
    voc_builder.add("a", [GOOD]).split("trainval", ["a"])
    f1 = VocFolder(voc_builder.root, classes=["car"]).fingerprint()
    assert VocFolder(voc_builder.root, classes=["car"]).fingerprint() == f1
    assert VocFolder(voc_builder.root, classes=["car"], use_diff=True).fingerprint() != f1
    assert VocFolder(voc_builder.root, classes=["car", "bus"]).fingerprint() != f1
    xml = voc_builder.root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<xmax>20</xmax>", "<xmax>21</xmax>"))
    assert VocFolder(voc_builder.root, classes=["car"]).fingerprint() != f1


def test_missing_folder_and_not_voc(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        VocFolder(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="no Annotations"):
        VocFolder(tmp_path / "plain")
