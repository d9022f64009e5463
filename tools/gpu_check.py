"""The project's GPU check, for a GPU machine with no network (docs/GPU_CHECK.md says how to prepare and run it).

On a machine whose Python already has torch (CUDA build), torchvision, onnx and CuPy / NVRTC, it

1. probes the interpreter: torch and the GPU it sees, NVRTC (``cuda.bindings.nvrtc``), CuPy, nvcc, g++, and which
   of the project's dependencies are missing;
2. installs the missing ones from a folder of wheels prepared beforehand (``pip install --no-index --no-deps``;
   a wheel whose distribution is already installed is left alone, so nothing present is up- or downgraded);
3. installs the project itself (``pip install --no-deps --no-index --no-build-isolation -e .``; where that
   fails the checks run from the source tree and the report says so);
4. runs the ``gpu``-marked tests (``pytest -m gpu``) and ``frcnn-trt doctor --selftest --device cuda`` (skipped,
   with the reason, in a checkout without ``--selftest``), all within ``--budget`` seconds (300 by default);

and writes a short Markdown report (``--report``) with each step's result, time and the end of its output, plus
the full output next to it (``.log``). Exit status 0 when no step failed, 1 when one did, 2 for bad arguments.
Without a CUDA GPU it stops after the probe and fails: a GPU check does not pass where nothing was checked.

    python tools/gpu_check.py --wheels gpu-wheels --report gpu_check.md
    python tools/gpu_check.py --wheels gpu-wheels --dry-run      # the plan only; installs and runs nothing
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # frcnn_trt.io (standard library only) before the project is installed

from frcnn_trt.io import atomic_write_text  # noqa: E402

DEFAULT_BUDGET_S = 300
TAIL_LINES = 25
# Installed for the checks themselves, beside the project's own dependencies.
CHECK_REQUIREMENTS = ["pytest>=8"]

# Runs in the checked interpreter; prints one JSON object. argv[1]: requirement strings as JSON.
PROBE = r"""
import importlib.metadata as md, importlib.util, json, re, shutil, subprocess, sys
reqs = json.loads(sys.argv[1])
out = {"python": sys.version.split()[0], "executable": sys.executable, "missing": [], "optional_missing": []}
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
installed = {norm(d.metadata["Name"] or ""): d.version for d in md.distributions()}
try:
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None
for text in reqs:
    if Requirement is not None:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = req.name
    else:
        name = re.match(r"[A-Za-z0-9._-]+", text).group(0)
    if norm(name) not in installed:
        out["missing"].append(norm(name))
out["installed"] = installed
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if out["cuda_available"]:
        out["gpu"] = torch.cuda.get_device_name(0)
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
except Exception as exc:
    out["torch_error"] = repr(exc)
    out["cuda_available"] = False
try:
    from cuda.bindings import nvrtc
    err, major, minor = nvrtc.nvrtcVersion()
    out["nvrtc"] = f"{major}.{minor}"
except Exception as exc:
    out["nvrtc"] = f"unavailable ({type(exc).__name__}: {exc})"
out["cupy"] = "yes" if importlib.util.find_spec("cupy") else "no"
out["nvcc"] = shutil.which("nvcc") or "not on PATH"
out["gxx"] = shutil.which("g++") or "not on PATH"
print(json.dumps(out))
"""


@dataclass
class Step:
    name: str
    status: str = "skip"  # pass | fail | skip
    seconds: float = 0.0
    detail: str = ""
    output: str = ""


@dataclass
class Check:
    args: argparse.Namespace
    deadline: float
    steps: list[Step] = field(default_factory=list)
    probe: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


# ----------------------------------------------------------------------------------------------
# Arguments and plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="gpu_check.py")
    parser.add_argument("--wheels", type=Path, help="folder of wheels prepared with `pip download --no-deps`")
    parser.add_argument("--report", type=Path, default=Path("gpu_check_report.md"), help="Markdown report path")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to check (default: this one)")
    parser.add_argument("--no-install", action="store_true", help="install neither wheels nor the project")
    parser.add_argument("--dry-run", action="store_true", help="probe and print the plan; install and run nothing")
    parser.add_argument("--tests", nargs="+", default=["tests"], help="test paths for `pytest -m gpu` (default: tests)")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, one string (e.g. '-x -k kernel')")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget must be positive seconds, got {args.budget}")
    if args.wheels is not None and not args.wheels.is_dir():
        parser.error(f"--wheels {args.wheels} is not a folder")
    return args


def project_requirements() -> list[str]:
    """The project's ``[project] dependencies`` (from pyproject.toml) plus what the checks need."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as fh:
        deps: list[str] = tomllib.load(fh)["project"]["dependencies"]
    return [*deps, *CHECK_REQUIREMENTS]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheels_to_install(folder: Path | None, installed: dict[str, str]) -> list[Path]:
    """The wheels in ``folder`` whose distribution is not installed (one per distribution, newest name last)."""
    if folder is None:
        return []
    chosen: dict[str, Path] = {}
    for wheel in sorted(folder.glob("*.whl")):
        dist = normalize(wheel.name.split("-")[0])
        if dist not in installed:
            chosen[dist] = wheel
    return list(chosen.values())


def plan_commands(check: Check) -> dict[str, list[str]]:
    py, args = check.args.python, check.args
    wheels = wheels_to_install(args.wheels, check.probe.get("installed", {}))
    pip = [py, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check"]
    commands: dict[str, list[str]] = {}
    if not args.no_install and wheels:
        commands["install wheels"] = [*pip, *map(str, wheels)]
    if not args.no_install:
        commands["install project"] = [*pip, "--no-build-isolation", "-e", str(ROOT)]
    extra = args.pytest_args.split() if args.pytest_args else []
    pytest = [py, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    commands["gpu tests"] = [*pytest, *extra, *args.tests]
    commands["doctor --selftest"] = [py, "-m", "frcnn_trt", "doctor", "--selftest", "--device", "cuda"]
    return commands


# ----------------------------------------------------------------------------------------------
# Steps


def run_command(check: Check, name: str, cmd: list[str], reserve: float = 0.0) -> Step:
    """Run ``cmd`` from the repository root within the time left (less ``reserve`` for later steps)."""
    step = Step(name)
    limit = check.remaining() - reserve
    if limit < 5:
        step.detail = f"not run: {check.remaining():.0f} s of the budget left"
        step.status = "fail"
        return step
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=check.env, capture_output=True, text=True, timeout=limit, check=False)
        step.output = proc.stdout + proc.stderr
        step.status = "pass" if proc.returncode == 0 else "fail"
        step.detail = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as exc:
        step.output = _text(exc.stdout) + _text(exc.stderr)
        step.status, step.detail = "fail", f"timed out after {limit:.0f} s"
    except OSError as exc:
        step.status, step.detail = "fail", f"could not run: {exc}"
    step.seconds = time.monotonic() - start
    return step


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def probe_step(check: Check) -> Step:
    cmd = [check.args.python, "-c", PROBE, json.dumps(project_requirements())]
    step = run_command(check, "probe", cmd)
    if step.status == "pass":
        check.probe = json.loads(step.output.strip().splitlines()[-1])
        probe = check.probe
        step.detail = (
            f"Python {probe['python']}, torch {probe.get('torch', '-')} (CUDA {probe.get('torch_cuda', '-')}), "
            f"GPU {probe.get('gpu', 'none')} (sm {probe.get('capability', '-')}), NVRTC {probe['nvrtc']}, "
            f"CuPy {probe['cupy']}, nvcc {probe['nvcc']}, g++ {probe['gxx']}; "
            f"missing dependencies: {', '.join(probe['missing']) or 'none'}"
        )
        step.output = ""
        if not probe.get("cuda_available"):
            step.status = "fail"
            step.detail += f"; torch sees no CUDA GPU {probe.get('torch_error', '')}".rstrip()
    return step


def gpu_tests_step(check: Check, cmd: list[str]) -> Step:
    step = run_command(check, "gpu tests", cmd, reserve=min(120.0, check.remaining() / 3))
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|deselected|error).*?)\s*=*$", step.output, re.M)
    if summary:
        step.detail = f"{step.detail}: {summary[-1]}"
    if "exit 5" in step.detail:  # pytest: no test collected
        step.detail += " (no gpu-marked test collected)"
    return step


def selftest_step(check: Check, cmd: list[str]) -> Step:
    if not (ROOT / "frcnn_trt" / "selftest.py").is_file():
        return Step(
            "doctor --selftest", "skip", detail="this checkout has no `doctor --selftest` (frcnn_trt/selftest.py)"
        )
    return run_command(check, "doctor --selftest", cmd)


def install_project_step(check: Check, cmd: list[str]) -> Step:
    step = run_command(check, "install project", cmd)
    if step.status == "fail" and "timed out" not in step.detail:
        step.status = "skip"
        step.detail += "; the checks run from the source tree (PYTHONPATH) instead"
    return step


def run_steps(check: Check) -> None:
    probe = probe_step(check)
    check.steps.append(probe)
    if probe.status != "pass" or check.args.dry_run:
        return
    for name, cmd in plan_commands(check).items():
        if name == "install wheels":
            step = run_command(check, name, cmd)
        elif name == "install project":
            step = install_project_step(check, cmd)
        elif name == "gpu tests":
            step = gpu_tests_step(check, cmd)
        else:
            step = selftest_step(check, cmd)
        check.steps.append(step)
        if name == "install wheels" and step.status == "fail":
            return


# ----------------------------------------------------------------------------------------------
# Report


def _tail(text: str) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def render_report(check: Check, commands: dict[str, list[str]] | None) -> str:
    failed = any(s.status == "fail" for s in check.steps)
    verdict = "DRY RUN (nothing installed or run)" if check.args.dry_run else ("FAIL" if failed else "PASS")
    lines = [
        f"# frcnn-trt GPU check: {verdict}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, interpreter {check.args.python}, budget {check.args.budget:.0f} s",
        "",
        "| step | result | seconds | detail |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.detail.replace('|', '/')} |" for s in check.steps]
    if commands is not None:
        lines += ["", "## Plan", ""] + [f"- {name}: `{' '.join(cmd)}`" for name, cmd in commands.items()]
    for step in check.steps:
        if step.output.strip():
            lines += ["", f"## {step.name} (last {TAIL_LINES} lines)", "", "```", _tail(step.output), "```"]
    return "\n".join(lines) + "\n"


def write_report(check: Check, commands: dict[str, list[str]] | None) -> str:
    text = render_report(check, commands)
    atomic_write_text(check.args.report, text)
    log = "\n".join(f"===== {s.name} ({s.status}, {s.detail})\n{s.output}" for s in check.steps)
    atomic_write_text(check.args.report.with_suffix(".log"), log)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    check = Check(args, deadline=time.monotonic() + args.budget, env=env)
    run_steps(check)
    commands = plan_commands(check) if args.dry_run and check.probe else None
    print(write_report(check, commands), end="")
    if args.dry_run:
        return 0 if check.probe else 1
    return 1 if any(s.status == "fail" for s in check.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
