"""Malformed annotation input never crashes, hangs or drops good records: crafted cases + hypothesis.

Every reader (VOC XML, image sets, classes.txt, COCO JSON) must end each input in a valid record or a
:class:`DatasetError` naming the file; no other exception, no hang; a bad record beside a good one is skipped
and reported (strict mode raises instead).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frcnn_trt.data import voc as voc_module
from frcnn_trt.data.coco import CocoImdb
from frcnn_trt.data.imdb import MAX_CLASS_NAME, ImageAnnotation, read_class_file
from frcnn_trt.data.skipped import skipped_lines
from frcnn_trt.data.voc import VocFolder
from frcnn_trt.errors import DatasetError
from tests.data.conftest import voc_xml, write_image

GOOD = ("car", 5, 5, 20, 20, 0)
# 60 examples per reader in the suite (derandomised: the same inputs every run); FRCNN_FUZZ_EXAMPLES=N runs N
# fresh random ones per reader for a longer campaign
_VOLUME = int(os.environ.get("FRCNN_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_VOLUME or 60, deadline=2000, derandomize=not _VOLUME,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- helpers ------------------------------------------------------------------------------------------------
def _voc(root: Path, bad_xml: bytes | None = None, split_bytes: bytes | None = None,
         classes_bytes: bytes | None = None) -> Path:
    """A VOC folder with a good image ``good`` and, optionally, ``bad.xml`` / split / classes.txt bytes."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / "good.xml").write_text(voc_xml([GOOD]))
    if not (root / "JPEGImages" / "good.jpg").exists():
        write_image(root / "JPEGImages" / "good.jpg")
        write_image(root / "JPEGImages" / "bad.jpg")
    if bad_xml is not None:
        (root / "Annotations" / "bad.xml").write_bytes(bad_xml)
    split = split_bytes if split_bytes is not None else b"good\nbad\n"
    (root / "ImageSets" / "Main" / "trainval.txt").write_bytes(split)
    if classes_bytes is not None:
        (root / "classes.txt").write_bytes(classes_bytes)
    return root


def _load(root: Path, **kw: Any) -> tuple[dict[str, ImageAnnotation], VocFolder]:
    imdb = VocFolder(root, classes=kw.pop("classes", ["car"]), **kw)
    return {a.image_id: a for a in imdb.annotations()}, imdb


def _issue(imdb: VocFolder, kind: str) -> str:
    found = [i for i in imdb.issues if i.kind == kind]
    assert found, [str(i) for i in imdb.issues]
    return str(found[0])


def _check_record(a: ImageAnnotation) -> None:
    """A valid record: finite float32 boxes inside the image, classes in range."""
    assert a.boxes.dtype == np.float32 and np.isfinite(a.boxes).all()
    if a.num_objects:
        assert (a.boxes[:, 0] >= 0).all() and (a.boxes[:, 2] <= a.width - 1).all()
        assert (a.boxes[:, 2] >= a.boxes[:, 0]).all() and (a.boxes[:, 3] >= a.boxes[:, 1]).all()
    assert 1 <= a.width <= 1 << 20 and 1 <= a.height <= 1 << 20


GOOD_BOX = np.array([[4, 4, 19, 19]], np.float32)


# -- VOC: numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("obj", "fragment"), [
    (("car", "1e39", 5, 20, 20, 0), "xmin='1e39' is out of range"),  # fine as float64, inf as float32
    (("car", 5, 5, "1e400", 20, 0), "xmax='1e400' is not a finite number"),
    (("car", 5, 5, "99999999999", 20, 0), "out of range"),
    (("car", "nan", 5, 20, 20, 0), "xmin='nan' is not a finite number"),
    (("car", "-inf", 5, 20, 20, 0), "xmin='-inf' is not a finite number"),
    (("car", 5, 5, "twenty", 20, 0), "xmax='twenty' is not a finite number"),
    (("car", 5, 5, 20, 20, "inf"), "<difficult> 'inf' is not a finite number"),
    (("car", 5, 5, 20, 20, "nan"), "<difficult> 'nan' is not a finite number"),
    (("car", 5, 5, 20, 20, "hard"), "<difficult> 'hard' is not a finite number"),
])
def test_bad_numbers_skip_the_object_only(tmp_path: Path, obj: tuple, fragment: str) -> None:
    root = _voc(tmp_path / "v", voc_xml([GOOD, obj]).encode())
    anns, imdb = _load(root)
    np.testing.assert_array_equal(anns["bad"].boxes, GOOD_BOX)  # the good object of the same file survives
    assert fragment in _issue(imdb, "bad_value") and "bad.xml" in _issue(imdb, "bad_value")
    with pytest.raises(DatasetError, match=r"bad\.xml.*strict mode"):
        _load(root, strict=True)


@pytest.mark.parametrize("size", [("1e39", "48"), ("0", "48"), ("-64", "48"), ("64.5", "48"), ("", ""), None])
def test_bad_size_is_read_from_the_header(tmp_path: Path, size: tuple[str, str] | None) -> None:
    xml = voc_xml([GOOD], size=size)  # type: ignore[arg-type]
    root = _voc(tmp_path / "v", xml.encode())
    anns, imdb = _load(root)
    assert (anns["bad"].width, anns["bad"].height) == (64, 48)
    assert "taken from the image header" in _issue(imdb, "missing_size")


def test_negative_and_fractional_coordinates_keep_todays_numerics(tmp_path: Path) -> None:
    root = _voc(tmp_path / "v", voc_xml([("car", -3, 5, 20.5, 20, 0)]).encode())
    anns, imdb = _load(root)
    np.testing.assert_array_equal(anns["bad"].boxes, [[0, 4, 19.5, 19]])  # clipped, 1-based minus one
    assert "clipped to" in _issue(imdb, "clipped_box")


# -- VOC: text and files --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("xml", "fragment"), [
    (b'<?xml version="1.0" encoding="x-unknown"?><annotation/>', "encoding Python does not know"),
    (b'<?xml version="1.0" encoding="utf-32"?><annotation/>', "cannot be decoded"),
    (b"<annotation>\xff</annotation>", "malformed"),
    (b"", "malformed"),
    (b"<" + b"a>" * 5000, "malformed"),
    (b"<annotation>" + b"<x>" * 20000 + b"</x>" * 20000 + b"</annotation>", None),
])
def test_undecodable_xml_is_one_skipped_file(tmp_path: Path, xml: bytes, fragment: str | None) -> None:
    anns, imdb = _load(_voc(tmp_path / "v", xml))
    assert "good" in anns
    if fragment is not None:
        assert "bad" not in anns and fragment in _issue(imdb, "malformed_file")


def test_bom_xml_and_bom_image_set_and_classes(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    root = _voc(tmp_path / "v", bom + voc_xml([GOOD]).encode(), bom + b"good\nbad\n", bom + b"car\n")
    imdb = VocFolder(root)
    assert imdb.classes == ("__background__", "car") and imdb.image_ids == ["good", "bad"]
    assert imdb.issues == []


def test_one_undecodable_image_set_line_is_skipped_and_reported(tmp_path: Path) -> None:
    root = _voc(tmp_path / "v", voc_xml([GOOD]).encode(), b"good\n\xff\xfeoops\nbad\n")
    anns, imdb = _load(root)
    assert sorted(anns) == ["bad", "good"]
    assert "trainval.txt:2" in _issue(imdb, "bad_line") and "not UTF-8" in _issue(imdb, "bad_line")
    with pytest.raises(DatasetError, match=r"trainval\.txt:2.*strict mode"):
        _load(root, strict=True)


@pytest.mark.parametrize(("line", "fragment"), [
    ("x" * 300, "longer than a file name"), ("a\x00b", "invalid file name"), ("../../etc/passwd", "outside"),
    ("/etc/passwd", "absolute"),
])
def test_ids_that_cannot_name_a_file_are_skipped(tmp_path: Path, line: str, fragment: str) -> None:
    root = _voc(tmp_path / "v", None, f"good\n{line}\n".encode())
    anns, imdb = _load(root)
    assert list(anns) == ["good"] and fragment in _issue(imdb, "bad_id")
    assert imdb.fingerprint()  # the fingerprint stats only usable names


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_never_block(tmp_path: Path) -> None:
    root = _voc(tmp_path / "v")
    os.mkfifo(root / "Annotations" / "bad.xml")
    t0 = time.monotonic()
    anns, imdb = _load(root)
    assert list(anns) == ["good"] and "FIFO" in _issue(imdb, "malformed_file")
    os.mkfifo(root / "classes.txt")
    with pytest.raises(DatasetError, match=r"classes\.txt: class list must be a regular file, this is a FIFO"):
        VocFolder(root)
    (root / "ImageSets" / "Main" / "trainval.txt").unlink()
    os.mkfifo(root / "ImageSets" / "Main" / "trainval.txt")
    with pytest.raises(DatasetError, match=r"trainval\.txt: image set file must be a regular file"):
        VocFolder(root, classes=["car"])
    os.mkfifo(tmp_path / "coco.json")
    with pytest.raises(DatasetError, match=r"coco\.json.*FIFO"):
        CocoImdb(tmp_path / "coco.json", root)
    assert time.monotonic() - t0 < 10


# -- classes.txt ----------------------------------------------------------------------------------------------
def test_class_list_limits_and_speed(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes(b"car\n" + b"x" * (1 << 20) + b"\n")
    with pytest.raises(DatasetError, match=rf"classes\.txt:2: class name of {1 << 20} characters.*{MAX_CLASS_NAME}"):
        read_class_file(path)
    path.write_bytes(b"car\n\xff\n")
    with pytest.raises(DatasetError, match=r"classes\.txt: class list is not valid UTF-8 text \(line 2"):
        read_class_file(path)
    names = [f"class_{i}" for i in range(20_000)]
    path.write_text("# comment\n\n" + "\n".join(f"  {n}  " for n in names) + "\n")
    root = _voc(tmp_path / "v", voc_xml([GOOD, ("unicorn", 1, 1, 9, 9, 0)] * 50).encode())
    (root / "classes.txt").write_bytes(path.read_bytes())
    t0 = time.monotonic()
    imdb = VocFolder(root)
    imdb.annotations()
    assert imdb.classes[1:] == tuple(names)
    assert time.monotonic() - t0 < 15  # linear work (seconds measured under load)
    assert "(20000 in all)" in _issue(imdb, "unknown_class")


def test_too_many_objects_skip_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voc_module, "MAX_OBJECTS_PER_IMAGE", 5)
    anns, imdb = _load(_voc(tmp_path / "v", voc_xml([GOOD] * 6).encode()))
    assert list(anns) == ["good"] and "6 objects, over the limit of 5" in _issue(imdb, "too_many_objects")


# -- COCO -----------------------------------------------------------------------------------------------------
def _coco(tmp_path: Path, mutate: Any = None, raw: bytes | None = None) -> Path:
    img_dir = tmp_path / "images"
    if not (img_dir / "a.jpg").exists():
        write_image(img_dir / "a.jpg")
        write_image(img_dir / "b.jpg")
    doc: dict[str, Any] = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [4, 4, 16, 16]},
                        {"id": 11, "image_id": 2, "category_id": 3, "bbox": [4, 4, 16, 16]}],
        "categories": [{"id": 3, "name": "car"}],
    }
    if mutate is not None:
        mutate(doc)
    path = tmp_path / "ann.json"
    path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return path


def _coco_load(path: Path, **kw: Any) -> tuple[dict[str, ImageAnnotation], CocoImdb]:
    imdb = CocoImdb(path, path.parent / "images", **kw)
    return {a.image_id: a for a in imdb.annotations()}, imdb


def _set(path: str, value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        *head, last = path.split(".")
        target: Any = doc
        for key in head:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
    return mutate


@pytest.mark.parametrize(("mutate", "kind", "fragment"), [
    (_set("images.1.id", [2]), "missing_field", "image entry #1 needs 'id'"),
    (_set("images.1.id", {"a": 1}), "missing_field", "image entry #1 needs 'id'"),
    (_set("images.1.file_name", ["b.jpg"]), "missing_field", "'file_name' (a string)"),
    (_set("images.1.file_name", "../images/b.jpg"), "bad_path", "leads outside"),
    (_set("images.1.file_name", "/etc/passwd"), "bad_path", "absolute path"),
    (_set("images.1.file_name", "b\x00.jpg"), "bad_path", "invalid file name"),
    (_set("images.1.file_name", "x" * 5000), "missing_image", "not found"),
    (_set("annotations.1.image_id", [2]), "missing_field", "unknown image_id [2]"),
    (_set("annotations.1.image_id", 99), "missing_field", "unknown image_id 99"),
    (_set("annotations.1.category_id", {"id": 3}), "unknown_class", "unknown class"),
    (_set("annotations.1.category_id", [3]), "unknown_class", "unknown class"),
    (_set("annotations.1.category_id", 77), "unknown_class", "'77'"),
    (_set("annotations.1.bbox", [4, 4, 16]), "bad_value", "not four finite numbers"),
    (_set("annotations.1.bbox", [4, 4, 16, 16, 1]), "bad_value", "not four finite numbers"),
    (_set("annotations.1.bbox", {"x": 4}), "bad_value", "not four finite numbers"),
    (_set("annotations.1.bbox", [4, 4, 1e39, 16]), "bad_value", "not four finite numbers"),
    (_set("annotations.1.bbox", [4, 4, 10 ** 30, 16]), "bad_value", "not four finite numbers"),
    (_set("annotations.1.bbox", [4, [4], 16, 16]), "bad_value", "not four finite numbers"),
    (_set("annotations.1.iscrowd", [1]), "bad_value", "iscrowd [1]"),
    (_set("annotations.1", [1, 2]), "missing_field", "annotation #1 is not a JSON object"),
    (_set("images.1", "b.jpg"), "missing_field", "image entry #1"),
])
def test_coco_bad_entries_skip_that_record(tmp_path: Path, mutate: Any, kind: str, fragment: str) -> None:
    path = _coco(tmp_path, mutate)
    anns, imdb = _coco_load(path)
    np.testing.assert_array_equal(anns["1"].boxes, [[4, 4, 19, 19]])  # the good image survives unchanged
    assert any(i.kind == kind and fragment in i.message for i in imdb.issues), [str(i) for i in imdb.issues]
    with pytest.raises(DatasetError, match="strict mode"):
        _coco_load(path, strict=True)


def test_coco_nan_bbox_and_duplicate_ids(tmp_path: Path) -> None:
    raw = json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                                 {"id": "1", "file_name": "b.jpg"}],
                      "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 4, 16, 16]},
                                      {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 1, 1]}],
                      "categories": [{"id": 3, "name": "car"}]}).replace("[1, 1, 1, 1]", "[NaN, 1, 1, 1]")
    anns, imdb = _coco_load(_coco(tmp_path, raw=raw.encode()))
    assert list(anns) == ["1"] and anns["1"].num_objects == 1
    assert "listed twice" in _issue(imdb, "duplicate_id") and "bbox [nan, 1, 1, 1]" in _issue(imdb, "bad_value")


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"\xef\xbb\xbf", None),  # a BOM before valid JSON is fine
    (b"[" * 10_000 + b"]" * 10_000, "nests deeper"),
    (b'{"images": [], "categories": [], "x": ' + b"9" * 5000 + b"}", "ann.json"),
    (b'{"images": {}, "categories": []}', "missing or invalid 'images'"),
    (b'{"images": [], "categories": [{"id": [3], "name": "car"}]}', "category entry #0"),
    (b'{"images": [], "categories": [{"id": 3, "name": {"a": 1}}]}', "category entry #0"),
    (b'{"images": [], "categories": [{"id": 3, "name": "car"}, {"id": 3, "name": "bus"}]}', "duplicate category"),
    (b'{"images": [], "categories": [{"id": 3, "name": "' + b"x" * 5000 + b'"}]}', "class name of 5000"),
    (b"\xff\xfe\x00", "ann.json"),
    (b'{"images": [], "categories": []}', "no object classes"),  # found by the fuzz test below
    (b'{"images": [], "categories": [{"id": 3, "name": "a"}, {"id": 4, "name": " a"}]}', "duplicate class name"),
])
def test_coco_file_level_faults_name_the_file(tmp_path: Path, raw: bytes, fragment: str | None) -> None:
    if fragment is None:
        path = _coco(tmp_path)
        path.write_bytes(raw + path.read_bytes())
        assert sorted(_coco_load(path)[0]) == ["1", "2"]
        return
    path = _coco(tmp_path, raw=raw)
    with pytest.raises(DatasetError, match=r"ann\.json") as info:
        CocoImdb(path, tmp_path / "images")
    assert fragment in str(info.value)


# -- the skipped report ---------------------------------------------------------------------------------------
def test_skipped_lines_name_file_and_reason(tmp_path: Path) -> None:
    _, imdb = _load(_voc(tmp_path / "v", b"<annotation>"))
    lines = skipped_lines(imdb.issues, [("good", True, "no RoI")])
    assert lines[0].startswith("skipped: ") and "bad.xml: malformed or truncated XML" in lines[0]
    assert lines[-1] == "skipped: image 'good' (flipped): no RoI"


# -- hypothesis ---------------------------------------------------------------------------------------------
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_NUMBERISH = st.one_of(
    st.sampled_from(["0", "1", "-1", "nan", "inf", "-inf", "1e39", "1e400", "65535", "3.5", "", " ", "0x10",
                     "1_0", "١٢", "99999999999999999999"]),
    st.integers(-100, 200).map(str), st.floats(allow_nan=True).map(repr), _TEXT)


@st.composite
def _voc_documents(draw: st.DrawFn) -> bytes:
    objects = draw(st.lists(st.tuples(st.sampled_from(["car", "Car", "unicorn", "", "__background__"]) | _TEXT,
                                      _NUMBERISH, _NUMBERISH, _NUMBERISH, _NUMBERISH, _NUMBERISH), max_size=4))
    size = draw(st.none() | st.tuples(_NUMBERISH, _NUMBERISH))
    xml = voc_xml(objects, size)  # type: ignore[arg-type]
    data = xml.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, len(data)))
    mode = draw(st.sampled_from(["whole", "cut", "flip", "bom", "utf16"]))
    if mode == "cut":
        return data[:cut]
    if mode == "flip":
        pos = min(cut, len(data) - 1)
        return data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1:]
    if mode == "bom":
        return b"\xef\xbb\xbf" + data
    if mode == "utf16":
        return xml.encode("utf-16", "surrogatepass")
    return data


def _assert_project_error(exc: BaseException, name: str) -> None:
    assert isinstance(exc, DatasetError), repr(exc)
    assert name in str(exc)


@FUZZ
@given(xml=_voc_documents() | st.binary(max_size=300))
def test_fuzz_voc_xml(tmp_path_factory: pytest.TempPathFactory, xml: bytes) -> None:
    root = _voc(tmp_path_factory.mktemp("voc"), xml)
    anns, _ = _load(root)  # non-strict never raises for a bad file
    assert "good" in anns
    for a in anns.values():
        _check_record(a)
    try:
        _load(root, strict=True)
    except Exception as exc:  # the property: only a DatasetError naming the file
        _assert_project_error(exc, "bad.xml")


@FUZZ
@given(split=st.binary(max_size=200) | st.lists(_TEXT | st.sampled_from(["good", "bad", " good "])).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")))
def test_fuzz_image_set(tmp_path_factory: pytest.TempPathFactory, split: bytes) -> None:
    root = _voc(tmp_path_factory.mktemp("voc"), voc_xml([GOOD]).encode(), b"good\n" + split)
    try:
        anns, _ = _load(root)
    except Exception as exc:
        _assert_project_error(exc, "trainval.txt")  # a UTF-16 BOM followed by bytes that are not UTF-16
        return
    assert "good" in anns


@FUZZ
@given(classes=st.binary(max_size=200) | st.lists(_TEXT | st.just("car")).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")))
def test_fuzz_classes_txt(tmp_path_factory: pytest.TempPathFactory, classes: bytes) -> None:
    root = _voc(tmp_path_factory.mktemp("voc"), voc_xml([GOOD]).encode(), classes_bytes=classes)
    try:
        imdb = VocFolder(root)
        imdb.annotations()
    except Exception as exc:
        _assert_project_error(exc, "classes.txt")
        return
    assert len(imdb.classes) >= 2


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                     max_leaves=8)
_FIELDS = ["images.1.id", "images.1.file_name", "images.1.width", "images.1.height", "annotations.1.id",
           "annotations.1.image_id", "annotations.1.category_id", "annotations.1.bbox", "annotations.1.bbox.2",
           "annotations.1.iscrowd", "annotations.1", "images.1", "categories.0.name", "categories.0.id",
           "annotations", "categories", "images"]


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(_FIELDS), _JSON | st.sampled_from([[2], {"id": 2}, "../b.jpg",
                                                                                      10 ** 40, -1, 1e300])),
                      min_size=1, max_size=3))
def test_fuzz_coco_structures(tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[str, Any]]) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        for field, value in edits:
            with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):  # an earlier edit removed it
                _set(field, value)(doc)

    path = _coco(tmp_path_factory.mktemp("coco"), mutate)
    for strict in (False, True):
        try:
            anns, _ = _coco_load(path, strict=strict)
        except Exception as exc:
            _assert_project_error(exc, "")
            assert "ann.json" in str(exc) or "a.jpg" in str(exc) or "b.jpg" in str(exc) or "images" in str(exc)
            continue
        for a in anns.values():
            _check_record(a)
        touched_first = any(f in ("annotations", "images", "categories") or f.startswith("categories") for f, _ in
                            edits)
        if not touched_first:
            assert "1" in anns and anns["1"].num_objects == 1  # the untouched image keeps its object

