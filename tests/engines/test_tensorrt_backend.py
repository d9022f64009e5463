"""The TensorRT backend (frcnn_trt.engines.tensorrt.backend).

On a CPU-only machine: availability says why it cannot run, ``auto`` passes it over, the profile check names
the profile, options are checked. With a GPU and TensorRT (markers ``gpu`` and ``tensorrt``): engines built
from the tiny export run on CUDA tensors and match the ONNX Runtime backend, inputs outside the profile raise,
and the engine cache is reused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frcnn_trt.engines.backends import backend_availability
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.engines.tensorrt.backend import TensorRTBackend, availability, check_profile
from frcnn_trt.engines.tensorrt.runtime import probe_tensorrt
from frcnn_trt.errors import BackendError
from tests.helpers import tiny_export

HAS_TRT = probe_tensorrt("tensorrt")[0] is not None
requires_gpu_trt = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRT),
                                      reason="needs a CUDA GPU and TensorRT ≥ 10.9 (pip install 'tensorrt-cu13>=10.9')")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny")[1]


def test_not_available_on_cpu_and_auto_skips_it() -> None:
    ok, why = availability(torch.device("cpu"))
    assert not ok and "CUDA GPU" in why
    avail = backend_availability("cpu")
    assert avail["tensorrt"] == (ok, why)


def test_not_available_without_tensorrt_says_how_to_install() -> None:
    if HAS_TRT:
        pytest.skip("the real TensorRT is installed here")
    ok, why = availability(torch.device("cuda", 0))  # decided before touching the GPU
    assert not ok and "pip install 'tensorrt-cu13>=10.9'" in why


def test_check_profile_names_the_profile() -> None:
    prof = ((1, 3, 32, 32), (1, 3, 240, 320), (4, 3, 400, 400))
    check_profile("image", (2, 3, 400, 64), prof, "the rpn engine x.engine")
    msg = (r"image of shape \[1, 3, 500, 320\] is outside the optimisation profile of the rpn engine x\.engine: "
           r"min \[1, 3, 32, 32\], max \[4, 3, 400, 400\]")
    with pytest.raises(BackendError, match=msg):
        check_profile("image", (1, 3, 500, 320), prof, "the rpn engine x.engine")
    with pytest.raises(BackendError, match="outside"):
        check_profile("image", (5, 3, 64, 64), prof, "e")
    with pytest.raises(BackendError, match="outside"):
        check_profile("image", (1, 3, 64), prof, "e")  # wrong rank


def test_from_export_refuses_cpu_and_unknown_options(export_dir: Path) -> None:
    info = load_export(export_dir, verify=False)
    with pytest.raises(BackendError, match="unknown tensorrt backend option"):
        TensorRTBackend.from_export(info, "cpu", fp64=True)
    with pytest.raises(BackendError, match=r"unknown tensorrt backend option\(s\) \['intra_op_threads'\]"):
        TensorRTBackend.from_export(info, "cpu", intra_op_threads=1)  # onnxruntime's (Detector routes them)
    with pytest.raises(BackendError, match="runs on a CUDA GPU"):
        TensorRTBackend.from_export(info, "cpu", workspace_mib=64)


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires_gpu_trt
def test_gpu_engines_match_onnxruntime(export_dir: Path, tmp_path: Path) -> None:
    from frcnn_trt.engines.onnxruntime_backend import OnnxRuntimeBackend

    info = load_export(export_dir)
    trt_backend = TensorRTBackend.from_export(info, "cuda", cache_dir=tmp_path)
    assert all(r.built for r in trt_backend.engines.values())
    ort = OnnxRuntimeBackend.from_export(info, "cpu")
    blob = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)) * 50
    rois = torch.tensor([[0, 0, 0, 60, 40], [0, 10, 10, 120, 90], [0, -5, 3, 200, 300]], dtype=torch.float32)
    f, p, d = trt_backend.run_rpn(blob.cuda())
    assert f.is_cuda and p.is_cuda and d.is_cuda
    c, b = trt_backend.run_detector(f, rois.cuda())
    f0, p0, d0 = ort.run_rpn(blob)
    c0, b0 = ort.run_detector(f0, rois)
    for got, ref in ((f, f0), (p, p0), (d, d0), (c, c0), (b, b0)):
        torch.testing.assert_close(got.float().cpu(), ref, rtol=1e-3, atol=1e-3)
    with pytest.raises(BackendError, match="outside the optimisation profile"):
        trt_backend.run_rpn(torch.zeros(1, 3, 16, 16, device="cuda"))
    # cached: a second backend builds nothing
    again = TensorRTBackend.from_export(info, "cuda", cache_dir=tmp_path, build=False)
    assert not any(r.built for r in again.engines.values())
    assert "tensorrt" in again.describe()
