"""The torch backend's memory format: channels-last by default where it loads the checkpoint itself on a CPU,
the caller's model left as it is, NCHW for training-time paths, numbers within float tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.engines.torch_backend import TorchBackend, default_memory_format
from frcnn_trt.errors import BackendError
from frcnn_trt.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(backend: TorchBackend) -> list[torch.Tensor]:
    blob = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1)) * 50
    rois = torch.tensor([[0, 0, 0, 60, 40], [0, 10, 10, 120, 90]], dtype=torch.float32)
    f, p, d = backend.run_rpn(blob)
    return [f, p, d, *backend.run_detector(f, rois)]


def test_defaults_and_numbers(exported: tuple[Path, Path]) -> None:
    ckpt, out = exported
    info = load_export(out)
    assert default_memory_format(torch.device("cpu")) == "channels_last"
    assert default_memory_format(torch.device("cuda")) == "contiguous"
    fast = TorchBackend.from_export(info, "cpu")  # loads the checkpoint itself: the faster layout
    assert fast.memory_format == "channels_last" and "channels-last" in fast.describe()
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    nchw = TorchBackend.from_export(info, "cpu", memory_format="contiguous")
    assert nchw.memory_format == "contiguous" and "NCHW" in nchw.describe()
    for a, b in zip(_run(nchw), _run(fast), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # training-time paths stay NCHW: eager numerics untouched
    assert Detector.from_checkpoint(ckpt, "torch", device="cpu").backend.memory_format == "contiguous"  # type: ignore[attr-defined]
    # through the backend options
    det = Detector.from_export(out, "torch", device="cpu", backend_options={"memory_format": "contiguous"})
    assert det.backend.memory_format == "contiguous"  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match="memory_format must be one of"):
        TorchBackend.from_export(info, "cpu", memory_format="nhwc")


def test_a_model_handed_in_is_left_as_it_is(exported: tuple[Path, Path]) -> None:
    ckpt, out = exported
    info = load_export(out)
    model, _ = load_checkpoint(ckpt, device="cpu")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    ptr = conv.weight.data_ptr()
    assert TorchBackend.from_export(info, "cpu", model=model).memory_format == "contiguous"  # auto: as it is
    cl = TorchBackend.from_export(info, "cpu", model=model, memory_format="channels_last")
    assert cl.model is not model  # a copy was converted
    assert conv.weight.is_contiguous() and conv.weight.data_ptr() == ptr  # the caller's model: untouched
