"""The files written next to evaluated detections: the AP table (eval.json), the PR curves (PNG + JSON) whose
numbers give back the table's APs exactly, and ``frcnn-trt eval``'s default folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from frcnn_trt.cli import app
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.evaluation import Detections, EvalResult, evaluate_voc, voc_ap, write_voc_results
from frcnn_trt.evaluation.report import detections_folder, pr_points, write_eval_files
from frcnn_trt.evaluation.result import ClassResult

from .synthetic import CLASS_NAMES, make_annotation, synthetic_annotations, synthetic_detections


def _random_set(seed: int) -> tuple[list, Detections]:
    rng = np.random.default_rng(seed)
    anns, dets = [], Detections()
    for i in range(30):
        g = int(rng.integers(0, 5))
        xy = rng.integers(0, 200, size=(g, 2))
        gt = np.concatenate([xy, xy + rng.integers(10, 80, size=(g, 2))], axis=1).astype(np.float32)
        classes = rng.integers(1, 3, size=g)  # class 3 (bird) has no ground truth
        anns.append(make_annotation(f"{i:06d}", [(list(b), int(c), bool(rng.random() < 0.15))
                                                 for b, c in zip(gt, classes, strict=True)]))
        clutter = rng.random((3, 2)).repeat(2, 1) * 150 + [0, 0, 30, 30]
        boxes = np.concatenate([gt + rng.normal(0, 5, gt.shape), clutter])
        labels = np.concatenate([classes, rng.integers(1, 4, size=3)])
        dets.add(anns[-1].image_id, boxes, np.round(rng.random(len(boxes)), 2), labels)
    return anns, dets


@pytest.mark.parametrize("use_07", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_pr_json_gives_back_the_ap_table_exactly(tmp_path: Path, use_07: bool, seed: int) -> None:
    anns, dets = _random_set(seed)
    result = evaluate_voc(anns, dets, CLASS_NAMES, use_07)
    written = write_eval_files(result, tmp_path, title="random")
    assert [p.name for p in written] == ["eval.json", "pr_curves.png", "pr_curves.json"]
    table = json.loads((tmp_path / "eval.json").read_text())
    curves = json.loads((tmp_path / "pr_curves.json").read_text())
    assert curves["metric"] == table["metric"] and curves["mAP"] == table["mAP"]
    for row, curve in zip(table["per_class"], curves["classes"], strict=True):
        assert (row["name"], row["ap"]) == (curve["name"], curve["ap"])
        if row["ap"] is None:  # bird: no ground truth, no curve
            assert curve["recall"] == [] and row["name"] == "bird"
            continue
        assert voc_ap(np.array(curve["recall"]), np.array(curve["precision"]), use_07) == row["ap"]  # bit for bit
        full = result[row["name"]]
        assert len(curve["recall"]) <= full.npos + 1 < full.num_detections  # the points that matter only
    with Image.open(tmp_path / "pr_curves.png") as im:
        im.verify()
    with Image.open(tmp_path / "pr_curves.png") as im:
        assert im.format == "PNG" and im.size == (900, 600)


def test_pr_points_of_the_hand_worked_set() -> None:
    result = evaluate_voc(synthetic_annotations(), synthetic_detections(), CLASS_NAMES, use_07_metric=False)
    rec, prec = pr_points(result["cat"])
    # cat, by score: .9 TP, .8 FP, .7 ignored (neither), .6 FP, .5 FP, .4 TP, .3 FP (npos 3): the two TPs + the last
    np.testing.assert_allclose(rec, [1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(prec, [1.0, 2 / 5, 2 / 6])
    assert pr_points(result["bird"])[0].size == 0


def test_without_curves_only_the_table_is_written(tmp_path: Path) -> None:
    coco = EvalResult("coco", (ClassResult(1, "cat", 0.5, 3, 4), ClassResult(2, "dog", math.nan, 0, 1)), 0.5, 2)
    assert write_eval_files(coco, tmp_path / "out", tmp_path / "t.json") == [tmp_path / "t.json"]
    assert not (tmp_path / "out").exists()


def test_detections_folder(tmp_path: Path) -> None:
    assert detections_folder(tmp_path) == tmp_path
    assert detections_folder(tmp_path / "predictions.json") == tmp_path
    assert detections_folder(str(tmp_path / "res*" / "comp4_*.txt")) == tmp_path


def test_eval_command_writes_next_to_the_detections(synth_dir: Path, tmp_path: Path) -> None:
    db = get_imdb(f"synth:{synth_dir}:test")
    dets = Detections()
    for a in db.annotations():  # the ground truth as detections, a few shifted off
        boxes = np.asarray(a.boxes, dtype=np.float64) + np.where(np.arange(len(a.boxes)) % 3 == 2, 40.0, 0.0)[:, None]
        dets.add(a.image_id, boxes, np.linspace(0.9, 0.6, len(a.boxes)), a.classes)
    results = tmp_path / "results"
    write_voc_results(dets, results, db.classes)
    res = CliRunner().invoke(app, ["eval", "--imdb", f"synth:{synth_dir}:test", "--dets", str(results)])
    assert res.exit_code == 0, res.output
    assert {"eval.json", "pr_curves.png", "pr_curves.json"} <= {p.name for p in results.iterdir()}
    res = CliRunner().invoke(app, ["eval", "--imdb", f"synth:{synth_dir}:test", "--dets", str(results), "--json",
                                   str(tmp_path / "j" / "ap.json")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["ap.json", "pr_curves.json", "pr_curves.png"]
    res = CliRunner().invoke(app, ["eval", "--imdb", f"synth:{synth_dir}:test", "--dets", str(results),
                                   "--out-dir", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "pr_curves.png").is_file() and (tmp_path / "o" / "eval.json").is_file()
