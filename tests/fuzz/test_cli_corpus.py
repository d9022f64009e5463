"""A sample of the corpus through the CLI, in-process: exit 0 (a warning or a skip), or a non-zero exit with a
one-line ``error:`` and no traceback; never a hang (SIGALRM per case)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from frcnn_trt.cli import app
from tests.fuzz.conftest import IMAGE_IDS
from tests.fuzz.corpus import Base, Case, all_cases
from tests.fuzz.runner import CaseTimeout, time_limit

ALL = all_cases(IMAGE_IDS)


def _pick(kind: str, names: tuple[str, ...]) -> list[Case]:
    by_id = {c.id: c for c in ALL}
    return [by_id[f"{kind}:{n}"] for n in names]


#: (case, how the CLI takes it): the commands that read each kind, a few cases each (the bulk runs directly)
SAMPLE: list[tuple[Case, str]] = [
    *[(c, "inspect") for c in _pick("voc_xml", ("fifo", "bad_byte", "unknown_encoding", "billion_laughs", "deep",
                                                 "xmin=nan", "width=hugeint", "difficult=inf", "name=nul"))],
    *[(c, "inspect") for c in _pick("image_set", ("utf8_bom", "fifo", "line_undecodable", "line_nul",
                                                   "line_long_id"))],
    *[(c, "inspect") for c in _pick("classes_txt", ("utf8_bom", "empty", "dup", "fifo"))],
    *[(c, "inspect") for c in _pick("coco_json", ("fifo", "utf16", "images.0.file_name=escape",
                                                   "images.0.file_name=abs", "annotations.0.bbox=list1",
                                                   "annotations.0.category_id=object", "images.0.id=deep"))],
    *[(c, "inspect") for c in _pick("image", ("empty", "png_bomb", "fifo", "text"))],
    *[(c, "detect_image") for c in _pick("image", ("truncated", "png_bomb", "text"))],
    *[(c, "eval") for c in _pick("detections", ("coco.0.score=nan", "coco.0.image_id=list", "pred.fifo",
                                                 "pred.0.detections.0.label=object", "txt.line_nul", "txt.fifo",
                                                 "coco.deep", "pred.utf16"))],
    *[(c, "test_model") for c in _pick("checkpoint_sidecar", ("class_names=string", "fifo", "net=nul"))],
    *[(c, "detect_export") for c in _pick("export_json", ("class_names=string", "fifo",
                                                          "preprocessing.pixel_means_bgr.0=nan"))],
    *[(c, "train_cfg") for c in _pick("config_yaml", ("TRAIN.IMS_PER_BATCH=zero", "TEST.NMS=nan", "fifo"))],
    *[(c, "train_set") for c in _pick("config_set", ("TRAIN.SCALES=list0", "SOLVER.BASE_LR=inf",
                                                     "RNG_SEED=huge"))],
    *[(c, "train_weights") for c in _pick("weights", ("text_pth", "evil_pickle_pth"))],
]


def _argv(how: str, base: Base, target: object, folder: Path) -> list[str]:
    ds = f"synth:{base.dataset}:test"
    out = str(folder / "out")
    train = ["train", "end2end", "--imdb", f"synth:{base.dataset}:trainval", "--net", "tiny", "--iters", "1",
             "--output", out, "--device", "cpu"]
    if how == "inspect":
        name = target[0] if isinstance(target, tuple) else target
        return ["data", "inspect", str(name)]
    if how == "detect_image":
        return ["detect", str(target[1]), "--weights", str(base.checkpoint), "-o", out, "--device", "cpu"]  # type: ignore[index]
    if how == "eval":
        return ["eval", "--imdb", ds, "--dets", str(target)]
    if how == "test_model":
        return ["test", "--model", str(target), "--imdb", ds, "--max-images", "1", "--output", out, "--device", "cpu"]
    if how == "detect_export":
        return ["detect", str(base.dataset / "JPEGImages"), "--export", str(target), "-o", out, "--device", "cpu"]
    if how == "train_cfg":
        return [*train, "--cfg", str(target)]
    if how == "train_set":
        return [*train, "--set", *target]  # type: ignore[misc]
    if how == "train_weights":
        return [*train, "--weights", str(target)]
    raise AssertionError(how)


@pytest.mark.parametrize(("case", "how"), SAMPLE, ids=[f"{h}-{c.id}" for c, h in SAMPLE])
def test_cli_corpus(case: Case, how: str, corpus_base: Base, tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    target = case.build(corpus_base, folder)
    try:
        with time_limit(60):
            result = CliRunner().invoke(app, _argv(how, corpus_base, target, folder), catch_exceptions=True)
    except CaseTimeout as e:
        pytest.fail(f"{case.id} via {how}: {e}")
    output = result.output
    assert "Traceback" not in output, f"{case.id} via {how}: traceback in the output:\n{output[-2000:]}"
    if result.exit_code == 0:
        assert not case.must_refuse, f"{case.id} via {how}: accepted an input that must be refused"
        return
    assert isinstance(result.exception, SystemExit), (
        f"{case.id} via {how}: {type(result.exception).__name__}: {str(result.exception)[:300]}")
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"{case.id} via {how}: expected one 'error:' line, got:\n{output[-1500:]}"
