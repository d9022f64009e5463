"""tools/gpu_check.py without a GPU: arguments, the dry-run plan (only missing wheels), the honest failure where
torch sees no GPU, and the step order / report / exit status with the commands recorded instead of run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def _wheels(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--budget", "0"], "--budget must be positive"), (["--wheels", "/nonexistent/wheels"], "is not a folder")],
)
def test_bad_arguments_exit_2(tool: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        tool.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_wheels_to_install_skips_installed_distributions(tool: ModuleType, tmp_path: Path) -> None:
    folder = _wheels(tmp_path / "w", "Foo_Bar-1.0-py3-none-any.whl", "typer-0.1-py3-none-any.whl", "notes.txt")
    got = tool.wheels_to_install(folder, {"typer": "0.12"})
    assert [p.name for p in got] == ["Foo_Bar-1.0-py3-none-any.whl"]
    assert tool.wheels_to_install(folder, {"foo-bar": "1", "typer": "1"}) == []
    assert tool.wheels_to_install(None, {}) == []


def test_dry_run_plans_and_runs_nothing(tool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _wheels(tmp_path / "w", "typer-0.1-py3-none-any.whl", "not_a_real_dist_xyz-1.0-py3-none-any.whl")
    report = tmp_path / "r.md"
    assert tool.main(["--wheels", str(folder), "--dry-run", "--report", str(report)]) == 0
    text = report.read_text()
    assert text.startswith("# frcnn-trt GPU check: DRY RUN") and text == capsys.readouterr().out
    install = next(line for line in text.splitlines() if line.startswith("- install wheels:"))
    assert "not_a_real_dist_xyz-1.0" in install and "typer-0.1" not in install and "--no-deps" in install
    assert "- gpu tests:" in text and "-m gpu" in text and "--selftest --device cuda" in text
    assert report.with_suffix(".log").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour where torch sees no GPU")
def test_without_a_gpu_it_fails_after_the_probe(tool: ModuleType, tmp_path: Path) -> None:
    report = tmp_path / "r.md"
    assert tool.main(["--no-install", "--report", str(report)]) == 1
    text = report.read_text()
    assert text.startswith("# frcnn-trt GPU check: FAIL") and "torch sees no CUDA GPU" in text
    assert "| gpu tests |" not in text  # nothing else ran


def _fake_run(tool: ModuleType, monkeypatch: pytest.MonkeyPatch, fail: set[str]) -> list[str]:
    """Record the steps instead of running them; ``fail`` names the ones that exit 1."""
    ran: list[str] = []

    def probe(check: object) -> object:
        check.probe = {"installed": {"typer": "1"}, "missing": ["defusedxml"]}  # type: ignore[attr-defined]
        return tool.Step("probe", "pass", detail="fake probe")

    def run(check: object, name: str, cmd: list[str], reserve: float = 0.0) -> object:
        ran.append(name)
        output = "3 passed, 1 skipped, 40 deselected in 2.00s\n" if name == "gpu tests" else ""
        code = 1 if name in fail else 0
        return tool.Step(name, "fail" if code else "pass", detail=f"exit {code}", output=output)

    monkeypatch.setattr(tool, "probe_step", probe)
    monkeypatch.setattr(tool, "run_command", run)
    return ran


@pytest.mark.parametrize(
    ("fail", "code", "verdict"),
    [(set(), 0, "PASS"), ({"install project"}, 0, "PASS"), ({"gpu tests"}, 1, "FAIL"), ({"install wheels"}, 1, "FAIL")],
)
def test_steps_report_and_exit_status(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: set[str], code: int, verdict: str
) -> None:
    ran = _fake_run(tool, monkeypatch, fail)
    folder = _wheels(tmp_path / "w", "defusedxml-0.7.1-py2.py3-none-any.whl")
    report = tmp_path / "r.md"
    assert tool.main(["--wheels", str(folder), "--report", str(report)]) == code
    text = report.read_text()
    assert text.startswith(f"# frcnn-trt GPU check: {verdict}")
    if "install wheels" in fail:  # nothing runs on a half-installed environment
        assert ran == ["install wheels"]
        return
    has_selftest = (ROOT / "frcnn_trt" / "selftest.py").is_file()
    assert ran == ["install wheels", "install project", "gpu tests", *(["doctor --selftest"] if has_selftest else [])]
    assert "| gpu tests | " in text and "3 passed, 1 skipped, 40 deselected" in text
    if "install project" in fail:
        assert "| install project | skip |" in text and "from the source tree" in text
