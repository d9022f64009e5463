"""``frcnn-trt doctor --selftest [--device cuda]``: prove each layer of the stack end to end on this machine.

A tiny random model is made, trained, exported and run in a temporary folder; every check of
:data:`frcnn_trt.selftest_checks.CHECKS` ends as ``pass``, ``fail`` or ``skip``, with the reason and, where it
did not pass, what to do. :func:`run_selftest` prints the table and returns the results; :func:`exit_code` is
non-zero when anything failed (skips are not failures: they say what could not run here and why).
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from frcnn_trt.distributed import resolve_device
from frcnn_trt.log import console as make_console
from frcnn_trt.selftest_checks import CHECKS, CheckFailed, Context, Skip

__all__ = ["CheckResult", "exit_code", "run_checks", "run_selftest"]

GENERIC_FIX = "run `frcnn-trt doctor` for what is installed; rerun with --json and report the traceback"
_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: ``status`` is ``pass`` / ``fail`` / ``skip``; ``fix`` is empty on a pass."""

    name: str
    title: str
    status: str
    detail: str
    fix: str = ""
    seconds: float = 0.0
    traceback: str = ""


def _run_one(name: str, title: str, check: Any, ctx: Context) -> CheckResult:
    t0 = time.perf_counter()
    fix, tb = "", ""
    try:
        status, detail = "pass", str(check(ctx))
    except Skip as exc:
        status, detail, fix = "skip", exc.reason, exc.fix
    except CheckFailed as exc:
        status, detail, fix = "fail", str(exc), exc.fix or GENERIC_FIX
    except Exception as exc:  # a crashing check is a finding: reported, and the others still run
        status, detail, fix = "fail", f"{type(exc).__name__}: {exc}", GENERIC_FIX
        tb = traceback.format_exc()
    return CheckResult(name, title, status, detail, fix, round(time.perf_counter() - t0, 2), tb)


def run_checks(device: str | None = None, *, only: list[str] | None = None,
               workdir: str | Path | None = None) -> list[CheckResult]:
    """Run the checks (``only``: these names, in the usual order) on ``device`` (default: auto)."""
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="frcnn_selftest_") as tmp:
        ctx = Context(dev, Path(workdir) if workdir is not None else Path(tmp))
        return [_run_one(name, title, check, ctx) for name, title, check in CHECKS
                if only is None or name in only]


def exit_code(results: list[CheckResult]) -> int:
    """1 when any check failed, else 0."""
    return int(any(r.status == "fail" for r in results))


def _table(results: list[CheckResult], device: str) -> Table:
    table = Table(title=f"frcnn-trt self-test on {device}", show_lines=False)
    for col in ("check", "result", "seconds", "detail / fix"):
        table.add_column(col, overflow="fold")
    for r in results:
        text = r.detail + (f"\nfix: {r.fix}" if r.fix else "")
        table.add_row(r.title, f"[{_STYLE[r.status]}]{r.status}[/]", f"{r.seconds:.1f}", text)
    return table


def run_selftest(device: str | None = None, *, as_json: bool = False, console: Any = None,
                 only: list[str] | None = None) -> list[CheckResult]:
    """Run and print the self-test (``as_json``: a JSON list on stdout); returns the results."""
    dev = str(resolve_device(device))
    results = run_checks(dev, only=only)
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return results
    console = console if console is not None else make_console()
    console.print(_table(results, dev))
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    verdict = "[bold red]FAILED[/]" if counts["fail"] else "[green]OK[/]"
    console.print(f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return results
