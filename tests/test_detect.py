"""``run_detect``: sources, streaming outputs, bad images skipped and reported, run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_trt.detect import iter_image_paths, next_run_dir, run_detect
from frcnn_trt.errors import DatasetError, FrcnnError
from frcnn_trt.evaluation import read_coco_results, read_predictions
from frcnn_trt.export.parity import synthetic_images
from frcnn_trt.log import console

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "images"
    src.mkdir()
    for i, im in enumerate(synthetic_images(3, seed=2, sizes=((150, 200), (200, 150), (160, 160)))):
        Image.fromarray(im[:, :, ::-1]).save(src / f"img{i}.{'png' if i == 1 else 'jpg'}")
    (src / "notes.txt").write_text("not an image, and not picked up from a folder")
    (src / "fake.jpg").write_text("text pretending to be a JPEG")
    full = (src / "img0.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(full[: len(full) // 3])
    return src


def test_detect_folder(exported: tuple[Path, Path], folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    coco = tmp_path / "coco.json"
    summary = run_detect(folder, export_dir=exported[1], backend="onnxruntime", device="cpu", output_dir=out,
                         coco_json=coco, conf_thresh=0.2, show_conf=0.2, batch_size=2, console=console())
    assert summary.images == 3
    assert sorted(Path(f).name for f, _ in summary.skipped) == ["fake.jpg", "truncated.jpg"]
    assert all("image" in e for _, e in summary.skipped)
    assert sorted(p.name for p in out.iterdir()) == ["img0.jpg", "img1.png", "img2.jpg", "predictions.json"]
    records = json.loads((out / "predictions.json").read_text())
    assert [r["image_id"] for r in records] == ["img0", "img1", "img2"]
    assert (records[1]["width"], records[1]["height"]) == (150, 200)
    det = records[0]["detections"][0]
    assert set(det) == {"class_id", "label", "score", "box"} and det["score"] > 0.2
    assert det["label"] == f"class{det['class_id']}"
    dets = read_predictions(out / "predictions.json", ["__background__", "class1", "class2", "class3"])
    assert dets.num_detections == summary.detections > 0
    coco_dets = read_coco_results(coco, ["__background__", "class1", "class2", "class3"])
    assert coco_dets.num_detections == summary.detections
    # annotated image: same size as the source, and it differs from it (boxes were drawn)
    drawn = np.asarray(Image.open(out / "img1.png"))
    assert drawn.shape == (200, 150, 3)
    assert np.abs(drawn.astype(int) - np.asarray(Image.open(folder / "img1.png")).astype(int)).max() > 50
    # speed: batches [img0, img1] (warm-up, not timed) and [img2]
    assert summary.timed_images == 1 and summary.warmup_excluded
    assert summary.ms_per_image["total"] > 0 and summary.images_per_second > 0
    assert sum(summary.per_class.values()) == summary.detections


def test_detect_both_backends_and_numbered_runs(exported: tuple[Path, Path], folder: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    a = run_detect(folder / "img0.jpg", export_dir=exported[1], backend="torch", save_images=False,
                   console=console())
    b = run_detect(str(folder / "img*.*"), checkpoint=exported[0], save_images=False, console=console())
    assert a.output_dir == Path("runs/detect/exp") and b.output_dir == Path("runs/detect/exp2")
    assert next_run_dir("runs/detect") == Path("runs/detect/exp3")
    ra = json.loads((a.predictions).read_text())
    rb = json.loads((b.predictions).read_text())
    assert len(rb) == 3 and not a.warmup_excluded  # a single image cannot exclude its warm-up
    # torch from the export == torch from the checkpoint, up to float rounding: an export's torch backend runs
    # channels-last on a CPU (faster), the checkpoint NCHW
    da, db = ra[0]["detections"], rb[0]["detections"]
    assert [d["class_id"] for d in da] == [d["class_id"] for d in db]
    assert np.allclose([d["score"] for d in da], [d["score"] for d in db], atol=1e-5)
    assert np.allclose([d["box"] for d in da], [d["box"] for d in db], atol=1e-3)


def test_sources_and_errors(folder: Path, tmp_path: Path, exported: tuple[Path, Path]) -> None:
    assert [p.name for p in iter_image_paths(folder)] == ["fake.jpg", "img0.jpg", "img1.png", "img2.jpg",
                                                          "truncated.jpg"]
    assert [p.name for p in iter_image_paths(folder / "img1.png")] == ["img1.png"]
    with pytest.raises(DatasetError, match="not a folder"):
        iter_image_paths(tmp_path / "missing")
    with pytest.raises(DatasetError, match="matches no file"):
        iter_image_paths(str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        iter_image_paths(tmp_path / "empty")
    with pytest.raises(FrcnnError, match="exactly one"):
        run_detect(folder, export_dir=exported[1], checkpoint=exported[0], console=console())


def test_image_ids_are_unique_even_with_suffix_like_stems() -> None:
    from frcnn_trt.engines.runner import unique_image_ids

    ids = unique_image_ids([Path("a.jpg"), Path("x/a.png"), Path("a_2.jpg"), Path("b.jpg")])
    assert ids == ["a", "a_2", "a_2_2", "b"] and len(set(ids)) == 4


def test_drawing_threshold_is_separate_from_the_saved_one(exported: tuple[Path, Path], folder: Path,
                                                          tmp_path: Path) -> None:
    src = np.asarray(Image.open(folder / "img1.png"))
    kw = dict(export_dir=exported[1], backend="onnxruntime", device="cpu", conf_thresh=0.05, console=console())
    none = run_detect(folder / "img1.png", output_dir=tmp_path / "none", show_conf=1.01, **kw)  # type: ignore[arg-type]
    every = run_detect(folder / "img1.png", output_dir=tmp_path / "all", show_conf=0.0, **kw)  # type: ignore[arg-type]
    assert none.detections == every.detections > 0  # the same detections are saved
    assert (np.asarray(Image.open(tmp_path / "none" / "img1.png")) == src).all()  # nothing drawn above 1.01
    assert (np.asarray(Image.open(tmp_path / "all" / "img1.png")) != src).any()


def test_annotate_draws_only_confident_detections_in_class_colours() -> None:
    from frcnn_trt.detect import annotate
    from frcnn_trt.engines.results import ImageDetections
    from frcnn_trt.plotting import class_colour

    image = np.full((120, 160, 3), 100, dtype=np.uint8)
    dets = ImageDetections(np.array([[10, 10, 60, 60], [80, 40, 150, 110]], dtype=np.float32),
                           np.array([0.3, 0.8], dtype=np.float32), np.array([1, 2]), ["cat", "dog"])
    drawn = np.asarray(annotate(image, dets)).reshape(-1, 3)  # default: drawn at 0.5 and above
    assert (drawn == class_colour(2)).all(axis=1).any() and not (drawn == class_colour(1)).all(axis=1).any()
    both = np.asarray(annotate(image, dets, show_conf=0.25)).reshape(-1, 3)
    assert (both == class_colour(1)).all(axis=1).any()


def test_banner_names_the_source_as_given(exported: tuple[Path, Path], folder: Path, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from frcnn_trt.detect import describe_source

    assert describe_source(folder, 5) == f"folder {folder}/ (5 images)"
    assert describe_source(str(folder / "img*.jpg"), 2) == f"glob '{folder / 'img*.jpg'}' (2 images)"
    assert describe_source(folder / "img1.png", 1) == str(folder / "img1.png")
    assert describe_source([folder / "a.jpg", folder / "b.jpg"], 2) == f"2 images listed ({folder / 'a.jpg'}, " \
                                                                       f"{folder / 'b.jpg'})"
    buf = io.StringIO()
    run_detect(str(folder / "img[01].*"), export_dir=exported[1], backend="onnxruntime", device="cpu",
               output_dir=tmp_path / "b", save_images=False, console=Console(file=buf, width=300))
    text = buf.getvalue()
    assert f"frcnn-trt detect glob '{folder / 'img[01].*'}' (2 images) with onnxruntime" in text
    assert "PosixPath" not in text and "saved: score > 0.05" in text and "drawn" not in text
