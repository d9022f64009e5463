"""``frcnn-trt doctor`` (frcnn_trt.doctor): every section present, honest about what is missing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from frcnn_trt.doctor import collect, run_doctor

SECTIONS = {"python", "torch", "cuda_driver", "onnxruntime", "tensorrt", "tensorrt_rtx", "plugin_kernel", "backends"}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return collect()


def test_sections_and_json(report: dict[str, Any]) -> None:
    assert set(report) >= SECTIONS
    for key in SECTIONS:
        assert isinstance(report[key]["ok"], bool) and report[key]["detail"], key
        if not report[key]["ok"] and key not in ("cuda_driver", "backends"):
            assert report[key].get("install"), f"{key} is missing but no install command is given"
    json.dumps(report)


def test_torch_and_backends_agree_with_torch(report: dict[str, Any]) -> None:
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_available"] == torch.cuda.is_available()
    auto = report["backends"]["auto"]
    assert auto["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert report["backends"]["cpu"]["torch"]["ok"]


def test_onnxruntime_cuda_is_verified_not_trusted(report: dict[str, Any]) -> None:
    ort = report["onnxruntime"]
    if not ort["ok"]:
        pytest.skip("onnxruntime not installed")
    cuda = ort["cuda_provider"]
    if cuda["listed"] and not torch.cuda.is_available():
        # onnxruntime-gpu lists the CUDA provider on a machine without a GPU; the session drops it
        assert cuda["works"] is False and "drops" in cuda["detail"]


def test_tensorrt_sections_are_honest(report: dict[str, Any]) -> None:
    trt = report["tensorrt"]
    if not trt.get("installed"):
        assert not trt["ok"] and "pip install" in trt["install"]
    elif not torch.cuda.is_available():
        assert trt["can_build"] is False and "no CUDA GPU" in trt["build_detail"]
    rtx = report["tensorrt_rtx"]
    if rtx.get("installed"):
        assert rtx["ok"] and rtx["can_build"] and "8.6" in rtx["compute_capabilities"]
    kernel = report["plugin_kernel"]
    if kernel["ok"]:
        assert kernel["entry"] == "roi_pool_fwd_f32" and kernel["ptx_isa"] == "7.0"


def test_run_doctor_prints(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                           report: dict[str, Any]) -> None:
    import frcnn_trt.doctor as doctor

    monkeypatch.setattr(doctor, "collect", lambda: report)
    out = run_doctor(as_json=True)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    run_doctor()
    text = capsys.readouterr().out
    assert "frcnn-trt doctor" in text and "TensorRT-RTX" in text and "ONNX Runtime" in text
    if not report["tensorrt"]["ok"]:
        assert "install: " in text
