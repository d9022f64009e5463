"""MODEL.ROI_OP: RoIAlign end to end: a tiny model trains (end2end and alt-opt) through the model's own op,
exports with the standard ONNX ``RoiAlign`` node (no custom op), and detects the same on torch and ONNX Runtime."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from rich.console import Console

from frcnn_trt import config as C
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.errors import ConfigError
from frcnn_trt.export.onnx_export import ExportResult, run_export
from frcnn_trt.export.parity import compare_detections, synthetic_images
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.ops.roi_align import RoIAlign
from frcnn_trt.ops.roi_pool import RoIPool, to_onnxruntime
from frcnn_trt.train import alt_opt
from frcnn_trt.train.end2end import train_end2end
from tests.helpers import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

ALIGN = {"ROI_OP": "RoIAlign", "ROI_ALIGN_SAMPLING_RATIO": 2}


@pytest.fixture
def op_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """How often each RoI op's forward ran."""
    calls = {"RoIAlign": 0, "RoIPool": 0}
    for cls in (RoIAlign, RoIPool):
        real = cls.forward

        def spy(self, features, rois, real=real, name=cls.__name__):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return real(self, features, rois)

        monkeypatch.setattr(cls, "forward", spy)
    yield calls


@pytest.fixture(scope="module")
def end2end_checkpoint(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_cfg(MODEL=ALIGN, SOLVER={"MAX_ITERS": 3, "DISPLAY": 10})
    return train_end2end(cfg, get_imdb(f"synth:{synth_dir}:trainval"), tmp_path_factory.mktemp("align_e2e"),
                         device="cpu")


def test_end2end_trains_through_roialign(synth_dir: Path, tmp_path: Path, op_calls: dict[str, int]) -> None:
    cfg = tiny_cfg(MODEL=ALIGN, SOLVER={"MAX_ITERS": 2, "DISPLAY": 10})
    final = train_end2end(cfg, get_imdb(f"synth:{synth_dir}:trainval"), tmp_path, device="cpu")
    assert op_calls == {"RoIAlign": 2, "RoIPool": 0}  # one Fast R-CNN forward per iteration
    model, info = load_checkpoint(final)
    assert info.config["MODEL"]["ROI_OP"] == "RoIAlign"
    assert isinstance(model.box_roi_pool, RoIAlign) and model.box_roi_pool.sampling_ratio == 2


def test_alt_opt_trains_through_roialign(synth_dir: Path, tmp_path: Path, op_calls: dict[str, int]) -> None:
    cfg = alt_opt.with_iters(tiny_cfg(MODEL=ALIGN, SOLVER={"DISPLAY": 10}, TRAIN={"BG_THRESH_LO": 0.0}),
                             (1, 1, 1, 1))
    result = alt_opt.train_alt_opt(cfg, get_imdb(f"synth:{synth_dir}:trainval"), tmp_path, backend="torch",
                                   device="cpu")
    # the two Fast R-CNN stages pool one batch each; RPN stages and rpn_generate pool nothing
    assert op_calls == {"RoIAlign": 2, "RoIPool": 0}
    for path in (result.final, *result.stage_checkpoints.values()):
        assert isinstance(load_checkpoint(path)[0].box_roi_pool, RoIAlign), path


@pytest.fixture(scope="module")
def exported(end2end_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return run_export(end2end_checkpoint, tmp_path_factory.mktemp("align_export") / "export",
                      console=Console(file=io.StringIO()))


def test_export_has_the_standard_roialign_node_and_says_so(exported: ExportResult) -> None:
    info = load_export(exported.directory)
    assert info.roi_op == {"type": "RoIAlign", "domain": "", "op_type": "RoiAlign", "pooled_shape": [7, 7],
                           "spatial_scale": 0.0625, "sampling_ratio": 2, "aligned": True,
                           "coordinate_transformation_mode": "half_pixel"}
    assert "roi_pool" not in info.data and not info.needs_roi_pool_plugin
    det = onnx.load(str(info.detector_path))
    assert [n.op_type for n in det.graph.node if n.op_type in ("RoiAlign", "RoIPool", "MaxRoiPool")] == ["RoiAlign"]
    assert {n.domain for n in det.graph.node} == {""} and {o.domain for o in det.opset_import} == {""}
    # ONNX Runtime's RoIPool rewrite has nothing to do on it
    assert to_onnxruntime(det).graph == det.graph


def test_torch_and_onnxruntime_detect_the_same(exported: ExportResult, end2end_checkpoint: Path) -> None:
    parity = exported.parity
    assert parity is not None and parity["detections"]["reference"] > 0
    assert parity["detections"]["matched_fraction"] == 1.0 and parity["detections"]["unmatched_other"] == 0
    assert max(parity["max_abs_error"].values()) < 1e-4
    # the two backends from the export folder alone (torch: the source checkpoint), on other images
    torch_det = Detector.from_export(exported.directory, "torch", device="cpu")
    ort_det = Detector.from_export(exported.directory, "onnxruntime", device="cpu")
    assert isinstance(torch_det.backend.model.box_roi_pool, RoIAlign)  # type: ignore[attr-defined]
    for image in synthetic_images(2, seed=5, sizes=((120, 160), (150, 110))):
        ref, other = torch_det.detect([image])[0], ort_det.detect([image])[0]
        m = compare_detections(ref, other)
        assert len(ref) > 0 and m["matched"] == len(ref) == len(other)
        assert m["max_box_error"] < 1e-2 and m["max_score_error"] < 1e-4


def test_roi_op_is_checked_when_the_config_changes(end2end_checkpoint: Path) -> None:
    model, info = load_checkpoint(end2end_checkpoint)
    cfg = C.from_dict(info.config)
    model.configure(C.override(cfg, TEST={"NMS": 0.4}))  # same op: fine
    with pytest.raises(ConfigError, match="cannot change after training"):
        model.configure(C.override(cfg, MODEL={"ROI_OP": "RoIPool"}))
    with pytest.raises(ConfigError, match="cannot change after training"):
        model.configure(C.override(cfg, MODEL={"ROI_ALIGN_SAMPLING_RATIO": 0}))
    assert isinstance(model.box_roi_pool, RoIAlign)
