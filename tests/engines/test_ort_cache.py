"""ONNX Runtime's optimised graphs cached in the export: hit and miss, bit-identical outputs, validation on load,
the user-cache fallback, and a cached start that imports neither onnx nor torchvision."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frcnn_trt.engines import ort_cache
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.engines.onnxruntime_backend import OnnxRuntimeBackend
from frcnn_trt.engines.ort_cache import CACHE_DIRNAME, GraphCache, GraphKey, user_cache_dir

pytestmark = pytest.mark.usefixtures("one_thread")

BOTH = ("rpn.onnx", "detector.onnx")


@pytest.fixture
def export_copy(exported: tuple[Path, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(exported[1], dst, ignore=shutil.ignore_patterns(CACHE_DIRNAME))
    return dst


def _outputs(backend: OnnxRuntimeBackend) -> list[torch.Tensor]:
    blob = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)) * 50
    rois = torch.tensor([[0, 0, 0, 60, 40], [0, 10, 10, 120, 90]], dtype=torch.float32)
    f, p, d = backend.run_rpn(blob)
    return [f, p, d, *backend.run_detector(f, rois)]


def _open(directory: Path, **options: object) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend.from_export(load_export(directory), "cpu", intra_op_threads=1, **options)


def test_miss_then_hit_bit_identical(export_copy: Path) -> None:
    fresh = _open(export_copy, cache=False)
    assert fresh.cache is None and fresh.cache_hits == {} and not (export_copy / CACHE_DIRNAME).exists()
    first = _open(export_copy)
    assert first.cache_hits == dict.fromkeys(BOTH, False)
    files = sorted(p.name for p in (export_copy / CACHE_DIRNAME).iterdir())
    assert len(files) == 4 and sum(f.endswith(".json") for f in files) == 2  # graph + record per model
    second = _open(export_copy)
    assert second.cache_hits == dict.fromkeys(BOTH, True)
    for a, b, c in zip(_outputs(fresh), _outputs(first), _outputs(second), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # other settings: another key (the first entries stay valid)
    assert _open(export_copy, graph_optimization="basic").cache_hits == dict.fromkeys(BOTH, False)
    assert _open(export_copy).cache_hits == dict.fromkeys(BOTH, True)


def test_validated_on_load(export_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    _open(export_copy)
    cache_dir = export_copy / CACHE_DIRNAME
    graph = next(p for p in cache_dir.glob("detector-*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    graph.write_bytes(bytes(data))
    with caplog.at_level("INFO", logger="frcnn_trt.engines.onnxruntime"):
        again = _open(export_copy)
    assert again.cache_hits == {"rpn.onnx": True, "detector.onnx": False}
    assert "SHA-256 mismatch" in caplog.text
    assert _open(export_copy).cache_hits == dict.fromkeys(BOTH, True)  # rewritten, valid again
    record = next(p for p in cache_dir.glob("rpn-*.json"))
    meta = json.loads(record.read_text())
    meta["key"]["ort_version"] = "0.0"
    record.write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level("INFO", logger="frcnn_trt.engines.onnxruntime"):
        assert _open(export_copy).cache_hits["rpn.onnx"] is False
    assert "other settings" in caplog.text
    record.write_text("{not json")
    assert _open(export_copy).cache_hits["rpn.onnx"] is False


def test_source_change_misses(export_copy: Path) -> None:
    info = load_export(export_copy)
    path = export_copy / "rpn.onnx"
    key = GraphKey.for_file(path, info.file_sha256("rpn.onnx"), rewrite=False, optimization="all", ort_version="x",
                            provider="CPUExecutionProvider")
    cache = GraphCache(export_copy / CACHE_DIRNAME)
    assert cache.lookup(key) is None
    assert cache.store(key, b"graph") is not None and cache.lookup(key) == b"graph"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the file was replaced
    moved = GraphKey.for_file(path, info.file_sha256("rpn.onnx"), rewrite=False, optimization="all",
                              ort_version="x", provider="CPUExecutionProvider")
    assert moved.digest != key.digest and cache.lookup(moved) is None


def test_read_only_export_uses_the_user_cache(export_copy: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "frcnn-trt" / "ort"
    real_access = os.access
    monkeypatch.setattr(ort_cache.os, "access",
                        lambda p, mode: False if Path(p) == export_copy else real_access(p, mode))
    backend = _open(export_copy)
    assert backend.cache is not None and backend.cache.directory == user_cache_dir()
    assert not (export_copy / CACHE_DIRNAME).exists() and len(list(user_cache_dir().glob("*.onnx"))) == 2
    assert _open(export_copy).cache_hits == dict.fromkeys(BOTH, True)


def test_unwritable_cache_still_runs(export_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    (export_copy / CACHE_DIRNAME).write_text("a file where the folder should be")
    cache = GraphCache(export_copy / CACHE_DIRNAME)
    with caplog.at_level("WARNING", logger="frcnn_trt.engines.onnxruntime"):
        backend = OnnxRuntimeBackend(export_copy / "rpn.onnx", export_copy / "detector.onnx", device="cpu",
                                     cache=cache, cache_keys=("a" * 64, "b" * 64))
    assert backend.cache_hits == dict.fromkeys(BOTH, False) and "cannot write the onnxruntime cache" in caplog.text
    assert len(_outputs(backend)) == 5


def test_cached_start_imports_neither_onnx_nor_torchvision(export_copy: Path) -> None:
    """What a one-image detect with ONNX Runtime pays at start-up: no onnx (the rewrite is cached), no
    torchvision (only its NMS kernel library, for the shared post-processing)."""
    _open(export_copy)  # fills the cache
    code = f"""
import sys
from pathlib import Path
import torch
from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.onnxruntime_backend import OnnxRuntimeBackend
from frcnn_trt.engines.ort_cache import GraphCache
from frcnn_trt.boxes import nms
d = Path({str(export_copy)!r})
info = ExportInfo(d, __import__("json").loads((d / "export.json").read_text()))
b = OnnxRuntimeBackend.from_export(info, "cpu", intra_op_threads=1)
assert b.cache_hits == {{"rpn.onnx": True, "detector.onnx": True}}, b.cache_hits
keep = nms(torch.tensor([[0., 0, 9, 9], [1, 1, 9, 9], [20, 20, 30, 30]]), torch.tensor([.9, .8, .7]), 0.5)
assert keep.tolist() == [0, 2], keep
print(sorted(m for m in ("onnx", "torchvision", "torch._dynamo", "frcnn_trt.model") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
