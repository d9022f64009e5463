from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frcnn_trt import config as C
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.errors import CheckpointError, TrainingError
from frcnn_trt.model.checkpoint import load_checkpoint, load_tensors, read_info
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.train import loop
from frcnn_trt.train.end2end import train_end2end
from frcnn_trt.train.solver import Solver
from tests.helpers import tiny_cfg


def _cfg(iters: int = 6, snapshot: int = 3) -> C.Config:
    return tiny_cfg(SOLVER={"MAX_ITERS": iters, "STEPSIZE": 4}, TRAIN={"SNAPSHOT_ITERS": snapshot, "IMS_PER_BATCH": 2})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)


def test_resume_after_interruption_gives_the_same_weights(synth_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    full = train_end2end(_cfg(), imdb, tmp_path / "full", device="cpu")

    real_step = Solver.step

    def crash_at_4(self: Solver, iteration: int) -> float:
        if iteration == 4:
            raise KeyboardInterrupt
        return real_step(self, iteration)

    monkeypatch.setattr(Solver, "step", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        train_end2end(_cfg(), imdb, tmp_path / "cut", device="cpu")
    assert (tmp_path / "cut" / "end2end_iter_3.solverstate.safetensors").exists()
    assert not (tmp_path / "cut" / "end2end_final.safetensors").exists()
    monkeypatch.setattr(Solver, "step", real_step)
    resumed = train_end2end(_cfg(), imdb, tmp_path / "cut", device="cpu", resume=True)

    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert read_info(resumed).iteration == 6
    # solver states are cleaned up once the stage is final; the resolved config sits next to the outputs
    assert not list((tmp_path / "cut").glob("*.solverstate.*"))
    assert (tmp_path / "cut" / "end2end_config.yaml").exists()
    # a finished run is not retrained
    assert train_end2end(_cfg(), imdb, tmp_path / "cut", device="cpu", resume=True) == resumed


def test_seeded_runs_repeat_losses(synth_dir: Path, tmp_path: Path) -> None:
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    traces = []
    for run in ("a", "b"):
        seen: list[dict[str, float]] = []
        orig = loop.train_stage

        def spy(*args, seen=seen, orig=orig, **kwargs):  # type: ignore[no-untyped-def]
            kwargs["on_iteration"] = lambda it, values: seen.append(dict(values))
            return orig(*args, **kwargs)

        loop_mod = pytest.MonkeyPatch()
        loop_mod.setattr("frcnn_trt.train.end2end.train_stage", spy)
        try:
            train_end2end(_cfg(iters=3, snapshot=0), imdb, tmp_path / run, device="cpu")
        finally:
            loop_mod.undo()
        traces.append(seen)
    assert len(traces[0]) == 3 and traces[0] == traces[1]
    assert traces[0][0]["rpn_loss_cls"] == pytest.approx(0.693, abs=0.05)


def test_nan_loss_stops_naming_iteration_and_losses(synth_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_forward(self, batch, stage="end2end", generator=None, features=None):  # type: ignore[no-untyped-def]
        w = self.predictor.cls_score.weight
        return {"loss_cls": w.sum() * float("nan"), "loss_bbox": w.sum() * 0}

    monkeypatch.setattr(FasterRCNN, "forward", nan_forward)
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    with pytest.raises(TrainingError, match=r"end2end: non-finite loss at iteration 1: loss_cls=nan"):
        train_end2end(_cfg(iters=2, snapshot=0), imdb, tmp_path, device="cpu")


def test_checkpoint_round_trip_and_corruption(synth_dir: Path, tmp_path: Path) -> None:
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    path = train_end2end(_cfg(iters=1, snapshot=0), imdb, tmp_path, device="cpu")
    model, info = load_checkpoint(path)
    assert info.class_names == list(imdb.classes) and info.net == "tiny" and info.stage == "end2end"
    # bbox_pred is saved un-normalised: the stored buffers are identity, the sidecar keeps the stds
    assert torch.equal(model.predictor.bbox_stds, torch.ones_like(model.predictor.bbox_stds))
    assert info.bbox_stds[4:8] == pytest.approx([0.1, 0.1, 0.2, 0.2])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    bad.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: checkpoint is truncated or not a safetensors file"):
        load_checkpoint(bad)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="sidecar is not valid JSON"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
