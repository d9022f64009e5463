"""get_imdb: dataset names and path forms."""

from __future__ import annotations

import pytest

from frcnn_trt.data.coco import CocoImdb
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.data.imdb import CombinedImdb
from frcnn_trt.data.voc import PascalVoc, VocFolder
from frcnn_trt.errors import DatasetError

CAR = ("car", 2, 2, 20, 20, 0)


def test_voc_names(voc_root_builder, tmp_path) -> None:
    voc_root_builder("2007").add("000005", [CAR]).split("trainval", ["000005"]).split("test", ["000005"])
    voc_root_builder("2012").add("2008_000002", [CAR]).split("trainval", ["2008_000002"])
    data = tmp_path / "data"
    imdb = get_imdb("voc_2007_trainval", data, use_diff=True, strict=True)
    assert isinstance(imdb, PascalVoc) and imdb.use_diff and imdb.strict and imdb.year == "2007"
    assert get_imdb("voc_2007_test", str(data)).use_07_metric
    both = get_imdb("voc_2007_trainval+voc_2012_trainval", data)
    assert isinstance(both, CombinedImdb) and both.name == "voc_2007_trainval+voc_2012_trainval"
    assert both.image_ids == ["000005", "2008_000002"]
    with pytest.raises(DatasetError, match=r"did you mean 'trainval'"):
        get_imdb("voc_2007_trainvl", data)


def test_voc_folder_paths(voc_builder, tmp_path, monkeypatch) -> None:
    voc_builder.add("a", [CAR]).split("trainval", ["a"]).split("val", []).classes(["car"])
    imdb = get_imdb(f"voc:{voc_builder.root}")
    assert isinstance(imdb, VocFolder) and imdb.split == "trainval" and imdb.name == "vocset_trainval"
    assert get_imdb(f"voc:{voc_builder.root}:val").image_ids == []
    # relative: from the working directory, else from data_root
    monkeypatch.chdir(tmp_path)
    assert get_imdb("voc:vocset").root.name == "vocset"
    assert get_imdb("voc:vocset:val", data_root=tmp_path / "elsewhere").split == "val"
    monkeypatch.chdir(voc_builder.root)
    assert get_imdb("voc:vocset", data_root=tmp_path).root == tmp_path / "vocset"


def test_synth_and_coco_paths(voc_builder, tmp_path, image_writer, coco_writer) -> None:
    voc_builder.add("a", [CAR]).split("trainval", ["a"]).split("test", ["a"])
    with pytest.raises(DatasetError, match=r"no classes\.txt"):
        get_imdb(f"synth:{voc_builder.root}")
    with pytest.raises(DatasetError, match="does not exist"):
        get_imdb(f"synth:{tmp_path / 'nothing'}:test")
    voc_builder.classes(["car"])
    assert get_imdb(f"synth:{voc_builder.root}:test").name == "synth_vocset_test"
    assert get_imdb(f"synth:{voc_builder.root}:test").use_07_metric  # scored like VOC2007
    assert not get_imdb(f"voc:{voc_builder.root}:test").use_07_metric

    image_writer(tmp_path / "imgs" / "a.jpg")
    ann = coco_writer(
        tmp_path / "ann" / "set.json",
        [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        [],
        [{"id": 1, "name": "car"}],
    )
    imdb = get_imdb(f"coco:{ann}:{tmp_path / 'imgs'}")
    assert isinstance(imdb, CocoImdb) and imdb.image_ids == ["1"]
    (tmp_path / "ann" / "images").mkdir()
    assert get_imdb(f"coco:{ann}").image_dir == tmp_path / "ann" / "images"


def test_coco_year_names(tmp_path, image_writer, coco_writer) -> None:
    coco = tmp_path / "coco"
    image_writer(coco / "images" / "val2014" / "x.jpg")
    coco_writer(
        coco / "annotations" / "instances_val2014.json",
        [{"id": 3, "file_name": "x.jpg", "width": 64, "height": 48}],
        [],
        [{"id": 1, "name": "person"}],
    )
    imdb = get_imdb("coco_2014_val", tmp_path)
    assert imdb.name == "coco_2014_val" and imdb.image_path(0) == coco / "images" / "val2014" / "x.jpg"


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("vco_2007_test", "voc_2007_test"),
        ("voc2007_trainval", "voc_2007_trainval"),
        ("pascal", None),
    ],
)
def test_unknown_name_lists_forms_and_suggests(name, suggestion) -> None:
    with pytest.raises(DatasetError) as err:
        get_imdb(name)
    msg = str(err.value)
    assert f"unknown dataset {name!r}" in msg
    assert "voc:<folder>[:<split>]" in msg and "coco:<annotations.json>" in msg and "synth:<folder>" in msg
    assert (f"Did you mean {suggestion!r}?" in msg) if suggestion else ("Did you mean" not in msg)
