"""``run_benchmark``: interleaved order, medians with min–max, several exports, JSON schema and read-back, errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from frcnn_trt.benchmark import (
    FORMAT,
    PHASES,
    REFERENCE_SPEEDS,
    BenchmarkResult,
    Contender,
    load_benchmark_json,
    precision_label,
    run_benchmark,
    summarize,
    time_interleaved,
)
from frcnn_trt.engines.detector import PhaseTimes
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.errors import BackendError, FrcnnError
from frcnn_trt.log import console


class _Fake:
    """A detector that records which image it saw, in a call log shared with the other fakes."""

    def __init__(self, name: str, log: list[tuple[str, int]], ms: Sequence[float], fail_at: int | None = None):
        self.name, self.log, self.ms, self.fail_at = name, log, list(ms), fail_at
        self.calls = 0

    def run(self, images: Sequence[np.ndarray]) -> tuple[list[Any], PhaseTimes]:
        self.log.append((self.name, int(images[0][0, 0, 0])))
        if self.fail_at is not None and self.calls == self.fail_at:
            raise BackendError(f"{self.name} broke")
        t = self.ms[self.calls % len(self.ms)]
        self.calls += 1
        return [[0] * (self.calls % 3)], PhaseTimes(t, 2 * t, 0.5, t, 0.25, images=1)


def _imgs(n: int) -> list[np.ndarray]:
    return [np.full((4, 4, 3), i, dtype=np.uint8) for i in range(n)]


def test_interleaved_order_and_warmup() -> None:
    log: list[tuple[str, int]] = []
    fakes = [_Fake(n, log, [1.0]) for n in "ABC"]
    cs = [Contender(n, "x", "fp32") for n in "ABC"]
    time_interleaved(fakes, cs, _imgs(3), warmup=2)
    # warm-up rounds on images 0 and 1 (round-robin), then each image on A, B, C in turn
    assert log == [("A", 0), ("B", 0), ("C", 0), ("A", 1), ("B", 1), ("C", 1),
                   ("A", 0), ("B", 0), ("C", 0), ("A", 1), ("B", 1), ("C", 1), ("A", 2), ("B", 2), ("C", 2)]
    assert all(len(c.samples) == 3 and len(c.detections) == 3 for c in cs)


def test_failing_contender_leaves_rotation() -> None:
    log: list[tuple[str, int]] = []
    errors: list[str] = []
    fakes = [_Fake("A", log, [1.0]), _Fake("B", log, [1.0], fail_at=1)]
    cs = [Contender("A", "x", "fp32"), Contender("B", "y", "int8")]
    time_interleaved(fakes, cs, _imgs(3), warmup=0, on_error=lambda c, e: errors.append(c.label))
    assert log == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2)]
    assert cs[1].error == "B broke" and errors == ["B"] and len(cs[1].samples) == 1 and not cs[1].ok
    assert len(cs[0].samples) == 3


def test_medians_min_max_and_speedup() -> None:
    log: list[tuple[str, int]] = []
    torch_f, ort_f = _Fake("t", log, [10.0, 30.0, 20.0, 40.0]), _Fake("o", log, [5.0, 1.0, 9.0, 3.0])
    cs = [Contender("torch fp32", "torch", "fp32"), Contender("onnxruntime int8", "onnxruntime", "int8")]
    time_interleaved([torch_f, ort_f], cs, _imgs(4), warmup=0)
    st = cs[0].stats()
    assert set(st) == set(PHASES)
    # preprocess t, rpn 2t, proposals 0.5, detector t, postprocess 0.25: total 4t + 0.75
    assert st["preprocess"] == {"median": 25.0, "min": 10.0, "max": 40.0}
    assert st["rpn"] == {"median": 50.0, "min": 20.0, "max": 80.0}
    assert st["total"] == {"median": 100.75, "min": 40.75, "max": 160.75}
    assert cs[1].stats()["total"]["median"] == 4 * 4.0 + 0.75
    r = BenchmarkResult("tiny", (4, 4), 4, 0, 1, "cpu", cs)
    assert r.reference() is cs[0]
    assert r.speedup(cs[1]) == pytest.approx(100.75 / 16.75) and r.speedup(cs[0]) == 1.0
    assert cs[1].images_per_second == pytest.approx(1000 / 16.75)
    assert summarize([3.0]) == {"median": 3.0, "min": 3.0, "max": 3.0}
    with pytest.raises(FrcnnError, match="no samples"):
        summarize([])
    no_ref = BenchmarkResult("tiny", (4, 4), 4, 0, 1, "cpu", cs[1:])
    assert no_ref.speedup(cs[1]) is None


def _check_schema(data: dict[str, Any], labels: set[str], n: int) -> None:
    assert data["format"] == FORMAT and data["format_version"] == 2 and data["order"].startswith("interleaved")
    assert {c["label"] for c in data["contenders"]} == labels
    for c in data["contenders"]:
        assert c["error"] is None and len(c["samples_ms"]) == n and len(c["detections"]) == n
        assert set(c["stats_ms"]) == set(PHASES) and all(set(s) == set(PHASES) for s in c["samples_ms"])
        for p in PHASES:
            vals = [s[p] for s in c["samples_ms"]]
            assert c["stats_ms"][p] == {"median": float(np.median(vals)), "min": min(vals), "max": max(vals)}
    assert data["reference"]["speeds"] == REFERENCE_SPEEDS
    assert len(data["environment"]["load_average_before"]) == 3


def test_benchmark_export(exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    r = run_benchmark(export_dir=exported[1], image_size=(120, 200), num_images=2, warmup=1, threads=1,
                      json_out=out, console=console())
    assert torch.get_num_threads() == threads  # restored
    assert [c.label for c in r.contenders] == ["onnxruntime fp32", "torch fp32"]  # every available backend
    assert all(c.ok and len(c.samples) == 2 for c in r.contenders)
    assert r.speedup(r.contenders[1]) == 1.0
    data = json.loads(out.read_text())
    assert data["net"] == "tiny" and data["image_size"] == [120, 200] and data["threads"] == 1
    _check_schema(data, {"onnxruntime fp32", "torch fp32"}, 2)
    back = load_benchmark_json(out)
    assert back == BenchmarkResult.from_dict(data)
    assert [c.samples for c in back.contenders] == [c.samples for c in r.contenders]
    assert back.speedup(back.contenders[0]) == pytest.approx(r.speedup(r.contenders[0]))
    printed = capsys.readouterr().out
    assert "historical anchor" in printed and "198 ms" in printed and "interleaved" in printed


def test_several_exports_and_precision(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Two exports of one checkpoint: one torch contender, one ONNX Runtime contender per export, labelled by
    the precision export.json records (one value, or rpn/detector when they differ)."""
    other = tmp_path / "other_export"
    shutil.copytree(exported[1], other)
    meta = json.loads((other / "export.json").read_text())
    meta["precision"] = {"rpn.onnx": "int8", "detector.onnx": "int8"}
    (other / "export.json").write_text(json.dumps(meta))
    assert precision_label(load_export(other)) == "int8"
    meta["precision"]["detector.onnx"] = "fp32"
    (other / "export.json").write_text(json.dumps(meta))
    assert precision_label(load_export(other)) == "int8/fp32"
    r = run_benchmark(export_dir=[exported[1], other], image_size=(100, 120), num_images=1, warmup=0, threads=1,
                      console=console())
    assert [(c.label, c.precision) for c in r.contenders] == [
        ("onnxruntime fp32", "fp32"), ("torch fp32", "fp32"), ("onnxruntime int8/fp32", "int8/fp32")]
    assert r.contenders[2].export == str(other)
    assert all(c.ok for c in r.contenders)


def test_benchmark_checkpoint_plus_export(exported: tuple[Path, Path]) -> None:
    r = run_benchmark(exported[0], export_dir=exported[1], backends=["onnxruntime"], image_size=(100, 100),
                      num_images=1, warmup=0, threads=1, console=console())
    labels = [c.label for c in r.contenders]
    assert labels == ["onnxruntime fp32", "onnxruntime fp32 (export)"] and r.net == "tiny"
    assert r.contenders[1].export is None  # the temporary export
    assert r.reference() is None and r.speedup(r.contenders[0]) is None


def test_benchmark_errors(exported: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="tensorrt"):
        run_benchmark(export_dir=exported[1], backends=["tensorrt"], console=console())
    with pytest.raises(BackendError, match="unknown backend"):
        run_benchmark(export_dir=exported[1], backends=["tvm"], console=console())
    with pytest.raises(FrcnnError, match="not both"):
        run_benchmark(exported[0], net="VGG16", console=console())
    with pytest.raises(FrcnnError, match="at least one"):
        run_benchmark(console=console())
    with pytest.raises(FrcnnError, match="num_images"):
        run_benchmark(export_dir=exported[1], num_images=0, console=console())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FrcnnError, match="not a frcnn-trt-benchmark"):
        load_benchmark_json(bad)
    bad.write_text(json.dumps({"format": FORMAT, "format_version": 1}))
    with pytest.raises(FrcnnError, match="format version 1"):
        load_benchmark_json(bad)
    bad.write_text(json.dumps({"format": FORMAT, "format_version": 2, "net": "x"}))
    with pytest.raises(FrcnnError, match="malformed"):
        load_benchmark_json(bad)
