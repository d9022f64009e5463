"""``data inspect``: the report on a dataset with problems, its extra rows and its rendering."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from typer.testing import CliRunner

from frcnn_trt.cli import app
from frcnn_trt.data.inspect import inspect_imdb, print_report
from frcnn_trt.data.voc import VocFolder

CAR = ("car", 5, 5, 20, 20, 0)


def _folder(b: Any) -> VocFolder:
    b.add("a", [CAR, ("car", 1, 1, 9, 9, 1), ("bus", 2, 2, 30, 40, 0)])
    b.add("empty", [])
    b.add("bad", [CAR, ("unicorn", 1, 1, 9, 9, 0), ("car", 30, 5, 10, 20, 0)], size=(48, 64))
    b.add("broken", xml="<annotation>")
    b.split("trainval", ["a", "empty", "bad", "broken"])
    return VocFolder(b.root, classes=["car", "bus", "tram"])


def test_report_counts_and_issues(voc_builder) -> None:
    report = inspect_imdb(_folder(voc_builder))
    assert report.num_images == 3  # "broken" is skipped
    assert report.objects_per_class == {"car": 3, "bus": 1, "tram": 0}
    assert report.difficult_per_class == {"car": 1, "bus": 0, "tram": 0}
    assert report.num_objects == 4 and report.num_difficult == 1
    assert report.images_without_objects == ["empty"]
    by_kind = {i.kind: i for i in report.issues}
    assert set(by_kind) == {"no_objects", "unknown_class", "inverted_box", "malformed_file"}
    assert by_kind["unknown_class"].file.endswith("bad.xml") and "'unicorn'" in by_kind["unknown_class"].message
    rows = dict(report.sections["dataset"])
    assert rows["images"] == "3" and rows["objects"] == "4 (1 difficult)"
    assert rows["landscape / portrait"] == "2 / 1"
    assert rows["box width (px)"] == "min 9, median 16, max 29"
    assert dict(report.sections["issues"])["unknown class (error)"] == "1"


def test_rows_can_be_added_and_rendered(voc_builder) -> None:
    report = inspect_imdb(_folder(voc_builder))
    report.add_row("roidb", "flipped copies", 3)
    report.add_row("roidb", "filtered (no fg/bg RoIs)", 1)
    assert list(report.sections) == ["dataset", "issues", "roidb"]
    console = Console(record=True, width=160)
    print_report(report, console, max_issues=2)
    text = console.export_text()
    for needle in ("flipped copies", "filtered (no fg/bg RoIs)", "tram", "unicorn", "... and 2 more"):
        assert needle in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["sections"]["roidb"] == [["flipped copies", "3"], ["filtered (no fg/bg RoIs)", "1"]]
    assert len(data["issues"]) == 4


def test_data_inspect_prints_what_was_skipped_and_why(voc_builder, tmp_path) -> None:
    """The CLI lists every dropped record as ``skipped: <file>: <reason>`` (the lines training logs), roidb
    entries filter_roidb removed included, and writes them to --json."""
    _folder(voc_builder)
    voc_builder.classes(["car", "bus", "tram"])
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["data", "inspect", f"voc:{voc_builder.root}", "--json", str(out)],
                             terminal_width=400)
    assert res.exit_code == 0, res.output
    skipped = json.loads(out.read_text())["skipped"]
    assert any(line.startswith("skipped: ") and "broken.xml: malformed or truncated XML" in line for line in skipped)
    assert any("unknown class 'unicorn'" in line for line in skipped)
    assert "skipped: image 'empty': no ground-truth boxes" in " ".join(skipped)
    assert "skipped (" in res.output and "broken.xml" in res.output


def test_data_inspect_reports_a_dataset_with_nothing_to_train_on(voc_builder, tmp_path) -> None:
    voc_builder.add("empty", [])
    voc_builder.add("broken", xml="<annotation>")
    voc_builder.split("trainval", ["empty", "broken"])
    voc_builder.classes(["car"])
    res = CliRunner().invoke(app, ["data", "inspect", f"voc:{voc_builder.root}"], terminal_width=400)
    assert res.exit_code == 0, res.output
    assert "no usable training images" in res.output and "broken.xml" in res.output
