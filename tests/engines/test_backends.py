"""The torch and ONNX Runtime backends: loading, providers, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.engines.onnxruntime_backend import OnnxRuntimeBackend
from frcnn_trt.engines.protocol import Backend
from frcnn_trt.engines.torch_backend import TorchBackend
from frcnn_trt.errors import BackendError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_protocol_and_outputs(exported: tuple[Path, Path]) -> None:
    info = load_export(exported[1])
    blob = torch.randn(1, 3, 96, 128) * 50
    rois = torch.tensor([[0, 0, 0, 60, 40], [0, 10, 10, 120, 90]], dtype=torch.float32)
    outs = {}
    for backend in (TorchBackend.from_export(info, "cpu"), OnnxRuntimeBackend.from_export(info, "cpu",
                                                                                         intra_op_threads=1)):
        assert isinstance(backend, Backend) and backend.device == torch.device("cpu")
        f, p, d = backend.run_rpn(blob)
        assert f.shape == (1, 128, 6, 8) and p.shape == (1, 18, 6, 8) and d.shape == (1, 36, 6, 8)
        c, b = backend.run_detector(f, rois)
        assert c.shape == (2, 4) and b.shape == (2, 16) and c.dtype == torch.float32
        torch.testing.assert_close(c.sum(1), torch.ones(2))
        outs[backend.name] = (f, p, d, c, b)
        assert backend.name in backend.describe()
    for a, b in zip(outs["torch"], outs["onnxruntime"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_onnxruntime_stays_on_cpu_without_a_gpu(exported: tuple[Path, Path]) -> None:
    # onnxruntime-gpu lists CUDAExecutionProvider even here; it must not be picked without a GPU
    backend = OnnxRuntimeBackend.from_export(load_export(exported[1]), "auto")
    if not torch.cuda.is_available():
        assert backend.provider == "CPUExecutionProvider"
        assert backend.rpn_session.get_providers() == ["CPUExecutionProvider"]
        with pytest.raises(BackendError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(BackendError, match="graph optimisation level"):
        OnnxRuntimeBackend.from_export(load_export(exported[1]), "cpu", graph_optimization="max")


def test_onnxruntime_rejects_a_bad_model(tmp_path: Path, exported: tuple[Path, Path]) -> None:
    bad = tmp_path / "rpn.onnx"
    bad.write_bytes(b"this is not an onnx file")
    with pytest.raises(BackendError, match=r"rpn\.onnx"):
        OnnxRuntimeBackend(bad, exported[1] / "detector.onnx", device="cpu")
    with pytest.raises(BackendError, match="cannot read ONNX model"):
        OnnxRuntimeBackend(exported[1] / "rpn.onnx", tmp_path / "missing.onnx", device="cpu")


def test_torch_backend_needs_the_unchanged_source_checkpoint(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, out = exported
    info = load_export(out)
    data = dict(info.data)
    moved = type(info)(info.directory, {**data, "source": {**data["source"], "checkpoint": str(tmp_path / "x")}})
    with pytest.raises(BackendError, match=r"source checkpoint .* which is gone"):
        TorchBackend.from_export(moved, "cpu")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(ckpt.read_bytes()[:-8] + b"\0" * 8)
    (tmp_path / "copy.json").write_bytes(ckpt.with_suffix(".json").read_bytes())
    changed = type(info)(info.directory, {**data, "source": {**data["source"], "checkpoint": str(copy)}})
    with pytest.raises(BackendError, match="changed since the export"):
        TorchBackend.from_export(changed, "cpu")


def test_io_binding_path_matches_plain_run(exported: tuple[Path, Path]) -> None:
    """The IO-binding code (what CUDA uses) exercised on the CPU provider: same numbers as session.run."""
    info = load_export(exported[1])
    plain = OnnxRuntimeBackend.from_export(info, "cpu")
    bound = OnnxRuntimeBackend.from_export(info, "cpu", io_binding=True)
    blob = torch.randn(2, 3, 64, 96) * 50
    rois = torch.tensor([[0, 0, 0, 40, 30], [1, 5, 5, 90, 60]], dtype=torch.float32)
    a, b = plain.run_rpn(blob), bound.run_rpn(blob)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert all(torch.equal(x, y) for x, y in zip(plain.run_detector(a[0], rois), bound.run_detector(b[0], rois),
                                                  strict=True))


def test_auto_gives_each_backend_its_own_options(exported: tuple[Path, Path]) -> None:
    from frcnn_trt.engines.detector import Detector

    # one dict for every candidate: tensorrt's build settings do not reach onnxruntime (no GPU here: ORT runs)
    det = Detector.from_export(exported[1], "auto", device="cpu",
                               backend_options={"intra_op_threads": 1, "workspace_mib": 64, "build": False})
    assert det.backend.name == "onnxruntime" and det.backend.intra_op_threads == 1  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match=r"unknown backend option\(s\) \['threads'\]; known: tensorrt: "):
        Detector.from_export(exported[1], "auto", device="cpu", backend_options={"threads": 1})
    # a named backend must take every option it is given
    with pytest.raises(BackendError, match=r"backend onnxruntime does not take option\(s\) workspace_mib "
                                           r"\(tensorrt's\)"):
        Detector.from_export(exported[1], "onnxruntime", device="cpu", backend_options={"workspace_mib": 64})
    with pytest.raises(BackendError, match=r"backend torch does not take option\(s\) intra_op_threads"):
        Detector.from_export(exported[1], "torch", device="cpu", backend_options={"intra_op_threads": 1})
