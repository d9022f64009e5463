"""Training metrics files: written every iteration, continued on resume without repeats, read back strictly (a torn
last line skipped), drawn by ``frcnn-trt plot``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from frcnn_trt import config as C
from frcnn_trt.cli import app
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.errors import TrainingError
from frcnn_trt.train.end2end import train_end2end
from frcnn_trt.train.metrics import MetricsLog, find_metrics_files, plot_run, read_metrics
from frcnn_trt.train.solver import Solver
from tests.helpers import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg() -> C.Config:
    return tiny_cfg(SOLVER={"MAX_ITERS": 6, "STEPSIZE": 4}, TRAIN={"SNAPSHOT_ITERS": 3, "IMS_PER_BATCH": 2})


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def _row(it: int, **over: object) -> dict[str, object]:
    row: dict[str, object] = {"stage": "end2end", "iteration": it, "lr": 0.001, "s_per_iter": 0.5,
                              "images_per_s": 4.0, "losses": {"loss_cls": 1.0 / (it + 1), "total_loss": 2.0 / (it + 1)}}
    row.update(over)
    return row


def _write(path: Path, rows: list[dict[str, object]], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def test_training_writes_metrics_and_a_resume_continues_without_repeats(synth_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    train_end2end(_cfg(), imdb, tmp_path / "full", device="cpu")
    full = read_metrics(tmp_path / "full" / "end2end_metrics.jsonl")
    assert [r.iteration for r in full] == [1, 2, 3, 4, 5, 6]
    assert set(full[0].losses) == {"rpn_loss_cls", "rpn_loss_bbox", "loss_cls", "loss_bbox", "total_loss"}
    assert full[0].lr == pytest.approx(0.005) and full[-1].lr == pytest.approx(0.0005)  # the step at 4
    assert all(r.s_per_iter > 0 and r.images_per_s > 0 and r.stage == "end2end" for r in full)
    w, h = _png_size(tmp_path / "full" / "end2end_curves.png")
    assert 500 <= w <= 1000 and 400 <= h <= 1000

    real_step = Solver.step

    def crash_at_5(self: Solver, iteration: int) -> float:
        if iteration == 4:  # the 5th iteration: rows 1-4 written, the snapshot at 3
            raise KeyboardInterrupt
        return real_step(self, iteration)

    monkeypatch.setattr(Solver, "step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train_end2end(_cfg(), imdb, tmp_path / "cut", device="cpu")
    cut = tmp_path / "cut" / "end2end_metrics.jsonl"
    assert [r.iteration for r in read_metrics(cut)] == [1, 2, 3, 4]
    assert (tmp_path / "cut" / "end2end_curves.png").is_file()  # drawn at the snapshot and when it stopped
    monkeypatch.setattr(Solver, "step", real_step)
    train_end2end(_cfg(), imdb, tmp_path / "cut", device="cpu", resume=True)
    resumed = read_metrics(cut)
    assert [r.iteration for r in resumed] == [1, 2, 3, 4, 5, 6]  # row 4 of the killed run replaced, not repeated
    assert [(r.losses, r.lr) for r in resumed] == [(r.losses, r.lr) for r in full]  # same numbers as uninterrupted


def test_metrics_log_keeps_rows_up_to_the_resumed_iteration(tmp_path: Path) -> None:
    path = tmp_path / "s_metrics.jsonl"
    log = MetricsLog(path, "s", images_per_iter=2)
    for it in range(1, 6):
        log.append(it, {"loss": 1.0 / it}, 0.01)
    log.close()
    assert [r.iteration for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"stage": "s", "iteration": 6, "lr": 0.0')  # killed in the middle of a row
    log = MetricsLog(path, "s", start=3)
    log.append(4, {"loss": 0.2}, 0.01)
    log.close()
    assert [r.iteration for r in read_metrics(path)] == [1, 2, 3, 4]
    MetricsLog(path, "s", start=0).close()  # a fresh run starts a fresh file
    assert read_metrics(path) == [] and oct(os.stat(path).st_mode & 0o777) != "0o600"


def test_torn_last_line_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "a_metrics.jsonl", [_row(1), _row(2)], tail='{"stage": "end2end", "itera')
    with caplog.at_level(logging.WARNING, logger="frcnn_trt"):
        rows = read_metrics(path)
    assert [r.iteration for r in rows] == [1, 2]
    assert "torn last line" in caplog.text


@pytest.mark.parametrize(("row", "message"), [
    ('{"stage": "e", "iteration": 1, "lr": NaN, "losses": {"a": 1}}', "NaN"),
    (json.dumps(_row(2, losses={"loss_cls": "high"})), "expected a number"),
    (json.dumps(_row(2, losses={})), "non-empty object"),
    (json.dumps(_row(0)), "must be >= 1"),
    (json.dumps(_row(2, lr=-1.0)), "must be >= 0"),
    (json.dumps(_row(2, stage=5)), "stage must be"),
    ('[1, 2, 3]', "must be a JSON object"),
    ('{"stage": "e", "iteration": 2}', "lacks lr, losses"),
    ('{"stage": "e", "iter', "not valid JSON"),
])
def test_a_bad_line_inside_the_file_is_a_clear_error(tmp_path: Path, row: str, message: str) -> None:
    path = _write(tmp_path / "b_metrics.jsonl", [_row(1)], tail=row + "\n" + json.dumps(_row(3)) + "\n")
    with pytest.raises(TrainingError, match=message) as e:
        read_metrics(path)
    assert f"{path}:2" in str(e.value)
    assert [r.iteration for r in read_metrics(path, strict=False)] == [1, 3]  # lenient (resume): skipped


def test_plot_command_on_a_run_folder_and_on_bad_input(tmp_path: Path) -> None:
    run = tmp_path / "alt"
    for k, stage in enumerate(("stage2_fast_rcnn", "stage1_rpn", "stage2_rpn", "stage1_fast_rcnn")):
        _write(run / stage / f"{stage}_metrics.jsonl", [_row(i, stage=stage) for i in range(1, 5 + k)])
    assert [p.parent.name for p in find_metrics_files(run)] == ["stage1_rpn", "stage1_fast_rcnn", "stage2_rpn",
                                                                "stage2_fast_rcnn"]
    res = CliRunner().invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    assert "4 stage(s)" in res.output
    w, h = _png_size(run / "training_curves.png")
    assert w > 1.5 * h  # four columns side by side
    one = plot_run(run / "stage1_rpn")
    assert one == run / "stage1_rpn" / "stage1_rpn_curves.png" and _png_size(one)[0] < w
    assert plot_run(run / "stage2_rpn" / "stage2_rpn_metrics.jsonl", tmp_path / "x.png") == tmp_path / "x.png"

    tail = '{"stage": "end2end", "iteration": "two", "lr": 0.1, "losses": {"a": 1}}\n{}\n'
    bad = _write(tmp_path / "bad" / "end2end_metrics.jsonl", [_row(1)], tail=tail)
    res = CliRunner().invoke(app, ["plot", str(bad.parent)])
    assert res.exit_code == 1
    assert "error:" in res.output and f"{bad}:2" in res.output and "expected an integer" in res.output
    repeated = _write(tmp_path / "rep_metrics.jsonl", [_row(1), _row(2), _row(2)])
    with pytest.raises(TrainingError, match="iteration 2 follows 2"):
        plot_run(repeated)
    (tmp_path / "empty").mkdir()
    for target, message in ((tmp_path / "empty", "no training metrics"), (tmp_path / "nope", "no such run")):
        res = CliRunner().invoke(app, ["plot", str(target)])
        assert res.exit_code == 1 and message in res.output
    fifo = tmp_path / "f_metrics.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(TrainingError, match="regular file"):
        plot_run(fifo)


def test_pretraining_writes_its_metrics_and_curves(synth_dir: Path, tmp_path: Path) -> None:
    from frcnn_trt.train.pretrain import PretrainSettings, pretrain_backbone

    s = PretrainSettings(iters=3, crops_per_batch=8, images_per_batch=2, crop=32, base_lr=0.01)
    out = pretrain_backbone(get_imdb(f"synth:{synth_dir}:trainval"), tmp_path / "tiny_pre", s, num_workers=0)
    rows = read_metrics(out.with_name("tiny_pre_metrics.jsonl"))
    assert [r.iteration for r in rows] == [1, 2, 3] and {r.stage for r in rows} == {"pretrain"}
    assert set(rows[0].losses) == {"loss"} and 0.0 <= rows[0].metrics["accuracy"] <= 1.0
    assert rows[0].images_per_s > 0  # crops per second
    assert _png_size(out.with_name("tiny_pre_curves.png"))[1] > 600  # a third row: the accuracy
