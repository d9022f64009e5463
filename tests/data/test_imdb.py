"""The Imdb base: classes, issue log, box clipping, combined datasets."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from frcnn_trt.data.imdb import (
    BACKGROUND,
    CombinedImdb,
    ImageAnnotation,
    Imdb,
    IssueLog,
    clip_box,
    make_annotation,
    normalize_classes,
)
from frcnn_trt.data.voc import VocFolder
from frcnn_trt.errors import DatasetError


class ListImdb(Imdb):
    """An in-memory imdb for the base-class tests."""

    def __init__(self, name: str, classes: Iterable[str], records: list[ImageAnnotation], **kw: object) -> None:
        super().__init__(name, classes, **kw)  # type: ignore[arg-type]
        self._given = records
        self.loads = 0

    def _load(self, log: IssueLog) -> list[ImageAnnotation]:
        self.loads += 1
        log.add("x.xml", "something was off", "clipped_box", "warning")
        return self._given

    def _fingerprint_files(self) -> Iterable[Path]:
        return []


def _rec(image_id: str, cls: int = 1) -> ImageAnnotation:
    return make_annotation(image_id, Path(f"/{image_id}.jpg"), 10, 8, [((0.0, 1.0, 5.0, 6.0), cls, False)])


def test_normalize_classes() -> None:
    assert normalize_classes(["a", " b "], source="t") == (BACKGROUND, "a", "b")
    assert normalize_classes([BACKGROUND, "a"], source="t") == (BACKGROUND, "a")
    for bad, msg in (
        ([], "no object classes"),
        (["a", BACKGROUND], "invalid class"),
        (["a", ""], "invalid"),
        (["a", "b", "a"], "duplicate"),
    ):
        with pytest.raises(DatasetError, match=msg):
            normalize_classes(bad, source="t")


def test_make_annotation_dtypes_and_empty() -> None:
    a = _rec("i")
    assert a.boxes.dtype == np.float32 and a.classes.dtype == np.int64 and a.difficult.dtype == bool
    empty = make_annotation("e", Path("e.jpg"), 4, 4, [])
    assert empty.boxes.shape == (0, 4) and empty.classes.shape == (0,) and empty.num_objects == 0


def test_base_loads_once_and_exposes_records() -> None:
    imdb = ListImdb("t", ["a", "b"], [_rec("1"), _rec("2", 2)])
    assert "not loaded" in repr(imdb)
    assert imdb.num_classes == 3 and imdb.class_to_index == {BACKGROUND: 0, "a": 1, "b": 2}
    assert imdb.image_ids == ["1", "2"] and imdb.num_images == 2
    assert imdb.image_path(1) == Path("/2.jpg")
    assert [i.kind for i in imdb.issues] == ["clipped_box"]
    imdb.annotations().clear()  # callers get a copy of the list
    assert imdb.num_images == 2 and imdb.loads == 1


def test_issue_log_strict_skips_info() -> None:
    log = IssueLog("d", strict=True)
    log.add("f.xml", "fine", "no_objects", "info")
    with pytest.raises(DatasetError, match=r"f\.xml: bad \[dataset d, strict mode\]"):
        log.add("f.xml", "bad", "inverted_box")
    assert len(log.issues) == 1


def test_clip_box() -> None:
    log = IssueLog("d", strict=False)
    assert clip_box((0, 0, 9, 7), 10, 8, file="f", what="o", log=log) == (0, 0, 9, 7)
    assert clip_box((-0.3, 0, 9.4, 7), 10, 8, file="f", what="o", log=log) == (
        0,
        0,
        9,
        7,
    )  # sub-pixel: silent
    assert log.issues == []
    assert clip_box((-1, 2, 12, 7), 10, 8, file="f", what="o", log=log) == (0, 2, 9, 7)
    assert clip_box((10, 2, 12, 7), 10, 8, file="f", what="o", log=log) is None
    assert clip_box((2, -9, 5, -1), 10, 8, file="f", what="o", log=log) is None
    assert [i.kind for i in log.issues] == ["clipped_box", "outside_box", "outside_box"]


def test_combined_concatenates_and_checks_classes() -> None:
    a = ListImdb("a", ["x", "y"], [_rec("1")], use_07_metric=True)
    b = ListImdb("b", ["x", "y"], [_rec("2")], use_07_metric=False)
    ab = CombinedImdb([a, b])
    assert ab.name == "a+b" and ab.classes == a.classes
    assert ab.image_ids == ["1", "2"] and len(ab.issues) == 2
    assert ab.use_07_metric is False
    assert ab.fingerprint() != a.fingerprint()
    with pytest.raises(DatasetError, match=r"classes differ \(only in a: \['y'\]; only in c: \['z'\]\)"):
        CombinedImdb([a, ListImdb("c", ["x", "z"], [])])
    with pytest.raises(DatasetError, match="different order"):
        CombinedImdb([a, ListImdb("d", ["y", "x"], [])])
    with pytest.raises(DatasetError, match="use_diff"):
        CombinedImdb([a, ListImdb("e", ["x", "y"], [], use_diff=True)])


def test_combined_voc_folders(voc_builder, tmp_path) -> None:
    voc_builder.add("a", [("car", 1, 1, 9, 9, 0)]).split("trainval", ["a"]).split("test", ["a"])
    ab = CombinedImdb([VocFolder(voc_builder.root, "trainval", ["car"]), VocFolder(voc_builder.root, "test", ["car"])])
    assert ab.name == "vocset_trainval+vocset_test" and ab.num_images == 2
