"""``frcnn-trt doctor --selftest`` (frcnn_trt.selftest): passes on this CPU machine with the GPU parts skipped
with reasons, and reports injected failures (a crashing check, wrong kernel numbers, broken parity) with a
non-zero exit."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from frcnn_trt import selftest_checks as checks
from frcnn_trt.cli import app
from frcnn_trt.selftest import GENERIC_FIX, CheckResult, exit_code, run_checks

FAST = ["train", "detect", "export", "kernel", "onnxruntime", "tensorrt_fp32", "tensorrt_fp16"]


@pytest.fixture(scope="module")
def cpu_results() -> dict[str, CheckResult]:
    return {r.name: r for r in run_checks("cpu", only=FAST)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU machine's verdicts")
def test_cpu_parts_pass_and_gpu_parts_skip_with_reasons(cpu_results: dict[str, CheckResult]) -> None:
    for name in ("train", "detect", "export", "onnxruntime"):
        assert cpu_results[name].status == "pass", cpu_results[name]
        assert cpu_results[name].detail and not cpu_results[name].fix
    assert "CPUExecutionProvider" in cpu_results["onnxruntime"].detail
    assert "matched" in cpu_results["export"].detail
    assert cpu_results["kernel"].status in ("pass", "skip"), cpu_results["kernel"]  # skip: no host emulation yet
    for name in ("tensorrt_fp32", "tensorrt_fp16"):
        r = cpu_results[name]
        assert r.status == "skip" and "CUDA GPU" in r.detail and "--device cuda" in r.fix
    assert exit_code(list(cpu_results.values())) == 0


def test_kernel_by_emulation_exact_and_wrong(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The kernel check compares the emulated kernel with torchvision: exact passes, one ulp off fails."""
    fake = types.ModuleType("frcnn_trt.engines.tensorrt.emulation")
    fake.emulation_available = lambda: (True, "")  # type: ignore[attr-defined]
    offset = {"value": 0.0}

    def emulated(features: torch.Tensor, rois: torch.Tensor, pooled: tuple[int, int], scale: float) -> torch.Tensor:
        return torchvision.ops.roi_pool(features, rois, pooled, scale) + offset["value"]

    fake.roi_pool_emulated = emulated  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    import frcnn_trt.engines.tensorrt as trt_pkg

    monkeypatch.setattr(trt_pkg, "emulation", fake, raising=False)
    ctx = checks.Context(torch.device("cpu"), tmp_path)
    assert "equals torchvision" in checks.check_kernel(ctx)
    offset["value"] = 1e-6
    [r] = [x for x in run_checks("cpu", only=["kernel"]) if x.name == "kernel"]
    assert r.status == "fail" and "differs from torchvision.ops.roi_pool" in r.detail and r.fix
    fake.emulation_available = lambda: (False, "no C++ compiler")  # type: ignore[attr-defined]
    [r] = run_checks("cpu", only=["kernel"])
    assert r.status == "skip" and "no C++ compiler" in r.detail


def test_parity_bound_rejects_wrong_numbers() -> None:
    good = {"detections": {"matched": 10, "reference": 10, "matched_fraction": 1.0},
            "max_abs_error": {"cls_prob": 1e-7}}
    checks._parity_ok(good, "fp32", "x")
    for bad in ({**good, "detections": {"matched": 8, "reference": 10, "matched_fraction": 0.8}},
                {**good, "max_abs_error": {"cls_prob": 0.01}}, {**good, "max_abs_error": {"cls_prob": float("nan")}}):
        with pytest.raises(checks.CheckFailed, match="need ≥ 95% matched"):
            checks._parity_ok(bad, "fp32", "x")
    checks._parity_ok({**good, "max_abs_error": {"cls_prob": 0.01}}, "fp16", "x")


def _fake_checks(monkeypatch: pytest.MonkeyPatch, broken: str | None) -> None:
    def ok(ctx: checks.Context) -> str:
        return f"fine on {ctx.device}"

    def crash(ctx: checks.Context) -> str:
        raise RuntimeError("injected crash")

    def skip(ctx: checks.Context) -> str:
        raise checks.Skip("not here", "go elsewhere")

    table = [("a", "check A", ok), ("b", "check B", crash if broken == "b" else ok), ("c", "check C", skip)]
    monkeypatch.setattr("frcnn_trt.selftest.CHECKS", table)


def test_cli_exit_codes_and_report(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    _fake_checks(monkeypatch, broken=None)
    res = runner.invoke(app, ["doctor", "--selftest", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "check A" in res.output and "not here" in res.output and "go elsewhere" in res.output
    assert "2 passed, 0 failed, 1 skipped" in res.output

    _fake_checks(monkeypatch, broken="b")
    res = runner.invoke(app, ["doctor", "--selftest", "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert "injected crash" in res.output and "FAILED" in res.output and "1 failed" in res.output

    res = runner.invoke(app, ["doctor", "--selftest", "--device", "cpu", "--json"])
    assert res.exit_code == 1
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["b"]["status"] == "fail" and rows["b"]["fix"] == GENERIC_FIX
    assert "RuntimeError" in rows["b"]["traceback"]
    assert rows["c"]["status"] == "skip" and rows["a"]["status"] == "pass"

    res = runner.invoke(app, ["doctor", "--device", "cpu"])
    assert res.exit_code != 0 and "--selftest" in res.output


def test_failed_training_skips_detect(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that depends on a failed one is skipped with that reason, not failed twice."""
    def broken_train(*args: object, **kwargs: object) -> Path:
        raise checks.CheckFailed("injected: loss is NaN")

    monkeypatch.setattr(checks, "train_end2end", broken_train)
    results = {r.name: r for r in run_checks("cpu", only=["train", "detect"])}
    assert results["train"].status == "fail" and "NaN" in results["train"].detail
    assert results["detect"].status == "skip" and "train-step" in results["detect"].detail
    assert exit_code(list(results.values())) == 1


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="gloo on the CPU machine")
def test_torchrun_two_processes_gloo() -> None:
    [r] = run_checks("cpu", only=["torchrun"])
    assert r.status == "pass", r
    assert "gloo" in r.detail
