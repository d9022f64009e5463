"""The command line through typer's CliRunner: every command on the small synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from frcnn_trt.cli import app

runner = CliRunner()

SMALL = ["--set", "TRAIN.SCALES", "[112]", "TRAIN.MAX_SIZE", "160", "TEST.SCALES", "[112]", "TEST.MAX_SIZE", "160",
         "MODEL.ANCHOR_SCALES", "[2,4,8]", "TRAIN.RPN_MIN_SIZE", "4", "TEST.RPN_MIN_SIZE", "4",
         "TRAIN.NUM_WORKERS", "0", "TRAIN.SNAPSHOT_ITERS", "0", "DEVICE", "cpu"]


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def test_help_lists_every_command() -> None:
    out = _ok(["--help"])
    for cmd in ("data", "train", "test", "eval"):
        assert cmd in out
    assert "end2end" in _ok(["train", "--help"]) and "alt-opt" in _ok(["train", "--help"])


def test_project_errors_are_one_red_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "inspect", f"synth:{tmp_path}/missing:trainval"])
    assert res.exit_code == 1
    assert "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["--verbose", "data", "inspect", "voc_2042_nosuch"])
    assert res.exit_code != 0 and res.exception is not None


def test_bad_set_override_names_the_key(synth_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "end2end", "--net", "tiny", "--imdb", f"synth:{synth_dir}:trainval",
                              "--output", str(tmp_path), "--set", "TRAIN.SCALE", "[100]"])
    assert res.exit_code == 1 and "TRAIN.SCALE; did you mean TRAIN.SCALES" in res.output


def test_synth_inspect_train_test_eval(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    out = _ok(["data", "synth", str(data), "-n", "10", "--width", "160", "--height", "120"])
    assert "10 images" in out
    out = _ok(["data", "inspect", f"synth:{data}:trainval"])
    assert "flipped copies" in out and "objects per class" in out
    run = tmp_path / "run"
    out = _ok(["train", "end2end", "--net", "tiny", "--imdb", f"synth:{data}:trainval", "--iters", "2",
               "--output", str(run), *SMALL])
    ckpt = run / "end2end_final.safetensors"
    assert ckpt.exists() and (run / "config.yaml").exists() and "final model" in out
    out = _ok(["test", "--model", str(ckpt), "--imdb", f"synth:{data}:test", "--output", str(tmp_path / "t")])
    assert "mAP" in out or "mean" in out.lower()
    preds = tmp_path / "t" / "predictions.json"
    assert isinstance(json.loads(preds.read_text()), list)
    for dets in (preds, tmp_path / "t" / "results"):
        out = _ok(["eval", "--imdb", f"synth:{data}:test", "--dets", str(dets), "--json", str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text())["metric"] in ("voc", "voc07")


@pytest.mark.parametrize("bad", ["1,2", "x,1,1,1"])
def test_alt_opt_bad_iters(bad: str, synth_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "alt-opt", "--net", "tiny", "--imdb", f"synth:{synth_dir}:trainval",
                              "--iters", bad, "--output", str(tmp_path)])
    assert res.exit_code == 1 and "--iters" in res.output


def test_pretrain_then_train_with_its_weights(synth_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "pre.safetensors"
    out = _ok(["train", "pretrain", "--imdb", f"synth:{synth_dir}:trainval", "--output", str(weights), "--iters", "2",
               "--crops", "8", "--crop-size", "32", "--workers", "0", "--device", "cpu"])
    assert weights.exists() and "next: frcnn-trt train alt-opt --net tiny" in out
    out = _ok(["train", "end2end", "--net", "tiny", "--imdb", f"synth:{synth_dir}:trainval", "--iters", "1",
               "--weights", str(weights), "--output", str(tmp_path / "run"), *SMALL])
    assert "final model" in out
    res = runner.invoke(app, ["train", "pretrain", "--imdb", f"synth:{synth_dir}:trainval", "--net", "VGG17",
                              "--output", str(weights)])
    assert res.exit_code == 1 and "did you mean 'VGG16'" in res.output


def test_demo_runs_every_step_and_resumes(tmp_path: Path) -> None:
    """The README's demo end to end, on 12 images with 2-iteration stages (the real run is measured in README)."""
    from frcnn_trt.demo import run_demo

    res = run_demo(tmp_path / "demo", backend="onnxruntime", num_images=12, iters=(2, 2, 2, 2), pretrain_iters=2,
                   device="cpu")
    assert 0.0 <= res.mean_ap <= 1.0 and res.final_model.exists()
    assert (res.export_dir / "rpn.onnx").exists() and (res.export_dir / "detector.onnx").exists()
    assert set(res.seconds) == {"data", "pretrain", "train", "export", "detect", "eval"}
    assert any(res.detect_dir.glob("*.jpg")) and (res.detect_dir / "predictions.json").exists()
    weights = tmp_path / "demo" / "pretrain" / "tiny_crops.safetensors"
    last_stage = tmp_path / "demo" / "alt_opt" / "stage2_fast_rcnn" / "stage2_fast_rcnn_final.safetensors"
    stamp = (weights.stat().st_mtime_ns, last_stage.stat().st_mtime_ns)
    final = res.final_model.read_bytes()
    again = run_demo(tmp_path / "demo", backend="onnxruntime", num_images=12, iters=(2, 2, 2, 2), pretrain_iters=2,
                     device="cpu")
    assert (weights.stat().st_mtime_ns, last_stage.stat().st_mtime_ns) == stamp  # reused, not retrained
    assert again.final_model.read_bytes() == final and again.mean_ap == pytest.approx(res.mean_ap)


def _pseudo_labelled_set(root: Path, checkpoint: Path, per_class: int = 2) -> Path:
    """Synthetic images whose ground truth is the eager torch detector's best ``per_class`` detections of each
    class (a random-weight model finds nothing real; against its own detections its AP is high, so a backend
    that detects differently -- e.g. on zero-padded batches of 2 -- scores visibly lower)."""
    from frcnn_trt.data.images import read_image
    from frcnn_trt.data.synthetic import make_synthetic_dataset
    from frcnn_trt.engines.detector import Detector

    make_synthetic_dataset(root, num_images=8, image_size=(160, 120), seed=7, test_fraction=0.5)
    det = Detector.from_checkpoint(checkpoint, "torch", device="cpu")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in det.class_names[1:]))
    for xml in sorted((root / "Annotations").glob("*.xml")):
        d = det.detect([read_image(root / "JPEGImages" / f"{xml.stem}.jpg")])[0]
        best = [i for c in range(1, len(det.class_names)) for i in np.flatnonzero(d.labels == c)[:per_class]]
        objects = "".join(
            f"<object><name>{d.label_names[i]}</name><difficult>0</difficult><bndbox>"
            + "".join(f"<{t}>{round(float(v)) + 1}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"),
                                                                         d.boxes[i], strict=True))
            + "</bndbox></object>" for i in best)
        h, w = d.size
        xml.write_text(f"<annotation><filename>{xml.stem}.jpg</filename><size><width>{w}</width><height>{h}</height>"
                       f"<depth>3</depth></size>{objects}</annotation>\n")
    return root


def test_test_an_export_on_onnxruntime_scores_as_eager_torch(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """`frcnn-trt test --export DIR --backend onnxruntime` measures the AP exactly as `--model CKPT` (eager torch)
    does: the same images, thresholds and evaluation, so the two agree within 0.1 point."""
    ckpt, export = exported
    data = _pseudo_labelled_set(tmp_path / "shapes", ckpt)
    imdb = f"synth:{data}:test"
    _ok(["test", "--model", str(ckpt), "--imdb", imdb, "--output", str(tmp_path / "torch"), "--device", "cpu"])
    out = _ok(["test", "--export", str(export), "--backend", "onnxruntime", "--imdb", imdb, "--output",
               str(tmp_path / "ort"), "--device", "cpu"])
    assert "mAP" in out or "mean" in out.lower()
    torch_ap = json.loads((tmp_path / "torch" / "eval.json").read_text())["mAP"]
    ort_ap = json.loads((tmp_path / "ort" / "eval.json").read_text())["mAP"]
    assert torch_ap > 0.5
    assert abs(ort_ap - torch_ap) < 0.001, (torch_ap, ort_ap)
    records = json.loads((tmp_path / "ort" / "predictions.json").read_text())
    assert [r["image_id"] for r in records] == [a.stem for a in sorted((data / "Annotations").glob("*.xml"))
                                                if a.stem in (data / "ImageSets" / "Main" / "test.txt").read_text()]
    # one source at a time; --set belongs to a checkpoint's config
    res = runner.invoke(app, ["test", "--model", str(ckpt), "--export", str(export), "--imdb", imdb])
    assert res.exit_code == 1 and "exactly one" in res.output
    res = runner.invoke(app, ["test", "--export", str(export), "--imdb", imdb, "--device", "cpu", "--set",
                              "TEST.NMS", "0.4"])
    assert res.exit_code == 1 and "export.json" in res.output
    res = runner.invoke(app, ["test", "--model", str(ckpt), "--backend", "onnxruntime", "--imdb", imdb])
    assert res.exit_code == 1 and "runs an export folder" in res.output
