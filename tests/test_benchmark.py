"""``run_benchmark``: every backend side by side, JSON output, historical anchor, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from frcnn_trt.benchmark import REFERENCE_SPEEDS, run_benchmark
from frcnn_trt.errors import BackendError, FrcnnError
from frcnn_trt.log import console


def test_benchmark_export(exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    r = run_benchmark(export_dir=exported[1], image_size=(120, 200), num_images=2, warmup=1, threads=1,
                      json_out=out, console=console())
    assert torch.get_num_threads() == threads  # restored
    assert [t.backend for t in r.timings] == ["onnxruntime", "torch"]  # every available backend
    for t in r.timings:
        assert t.error is None and t.images == 2
        assert set(t.ms_per_image) == {"preprocess", "rpn", "proposals", "detector", "postprocess", "total"}
    torch_t = next(t for t in r.timings if t.backend == "torch")
    assert r.speedup_vs_torch(torch_t) == 1.0
    data = json.loads(out.read_text())
    assert data["net"] == "tiny" and data["image_size"] == [120, 200] and data["threads"] == 1
    assert data["reference"]["speeds"] == REFERENCE_SPEEDS
    assert {b["backend"] for b in data["backends"]} == {"onnxruntime", "torch"}
    printed = capsys.readouterr().out
    assert "historical anchor" in printed and "198 ms" in printed


def test_benchmark_checkpoint_and_errors(exported: tuple[Path, Path], tmp_path: Path) -> None:
    r = run_benchmark(exported[0], backends=["torch"], image_size=(100, 100), num_images=1, warmup=0, threads=1,
                      console=console())
    assert [t.backend for t in r.timings] == ["torch"] and r.net == "tiny"
    with pytest.raises(BackendError, match="tensorrt"):
        run_benchmark(export_dir=exported[1], backends=["tensorrt"], console=console())
    with pytest.raises(BackendError, match="unknown backend"):
        run_benchmark(export_dir=exported[1], backends=["tvm"], console=console())
    with pytest.raises(FrcnnError, match="exactly one"):
        run_benchmark(exported[0], net="VGG16", console=console())
