"""The package is a stack of rooms: no import cycle between files or rooms, and no room imports one above it.

Every import counts: module level, inside functions, under ``TYPE_CHECKING``. A room is a top-level module
(``frcnn_trt/boxes.py`` → ``boxes``) or a top-level folder (``frcnn_trt/engines/`` → ``engines``); the floors
below are docs/ARCHITECTURE.md's, bottom first. A room may import rooms on its own floor or below; within a
floor the arrows must still not close a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "frcnn_trt"

FLOORS: list[set[str]] = [
    {"__init__", "errors", "io", "files", "log", "config", "distributed", "plotting"},
    {"boxes", "anchors", "losses", "ops", "data"},
    {"proposals", "targets", "postprocess", "evaluation"},
    {"model"},
    {"engines"},
    {"export"},
    {"train"},
    {"detect", "inference", "demo", "doctor", "benchmark", "serve", "selftest", "selftest_checks"},
    {"cli", "__main__"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The package module ``name`` refers to (the longest known prefix), or None outside the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path, known: dict[str, Path]) -> Iterable[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := _resolve(alias.name, known)) is not None:
                    yield target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                full = f"{base}.{alias.name}"
                target = full if full in known else _resolve(base, known)
                if target is not None:
                    yield target


def _file_graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: {t for t in _imports(m, p, known) if t != m} for m, p in known.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_the_scanner_sees_function_local_imports(tmp_path: Path) -> None:
    # the checks below are only as good as the import scan: it must see imports inside functions
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from frcnn_trt.engines import detector\n    import frcnn_trt.boxes\n")
    known = _modules()
    assert set(_imports("frcnn_trt.m", src, known)) == {"frcnn_trt.engines.detector", "frcnn_trt.boxes"}
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_files() -> None:
    cycle = _find_cycle(_file_graph())
    assert cycle is None, "import cycle between files: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_rooms() -> None:
    rooms: dict[str, set[str]] = {}
    for module, targets in _file_graph().items():
        rooms.setdefault(_room(module), set()).update(_room(t) for t in targets if _room(t) != _room(module))
    cycle = _find_cycle(rooms)
    assert cycle is None, "import cycle between rooms: " + " -> ".join(cycle or [])


def test_every_room_has_a_floor() -> None:
    placed = set().union(*FLOORS)
    rooms = {_room(m) for m in _modules()}
    assert rooms <= placed, f"rooms without a floor in docs/ARCHITECTURE.md and this test: {sorted(rooms - placed)}"


def test_no_room_imports_a_room_above_it() -> None:
    floor = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}
    upward = sorted(
        f"{m} (floor {floor[_room(m)] + 1}) imports {t} (floor {floor[_room(t)] + 1})"
        for m, targets in _file_graph().items()
        for t in targets
        if floor.get(_room(t), -1) > floor.get(_room(m), len(FLOORS))
    )
    assert not upward, "imports that run up the stack:\n" + "\n".join(upward)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_package_file_over_500_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 500, f"{path.relative_to(PACKAGE.parent)} has {lines} lines: split it by idea"
