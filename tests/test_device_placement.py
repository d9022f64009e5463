"""Device placement of the GPU-facing code, checked without a GPU (issue 17 item 2).

A static scan: every tensor factory (``torch.zeros``, ``torch.arange``, ``torch.tensor``, ...) in the modules
that run on the training / inference device — the target layers, the losses, the proposal layer, the
post-processing, the model, the inference layer (Detector), the feature cache and the blob code — either
names its ``device=`` or is one of the few host-side constructions listed in :data:`HOST_SIDE` with the reason
it is right (the result is moved with ``.to(device)`` before it meets device tensors, or never leaves the
host). ``*_like`` / ``new_*`` constructors inherit the device and are not factories here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "frcnn_trt"

FACTORIES = frozenset({
    "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye", "tensor", "as_tensor",
    "randperm", "rand", "randn", "randint", "normal", "empty_strided", "scalar_tensor", "tril_indices",
    "triu_indices", "Generator",
})

SCANNED = sorted([
    *(PKG / f"{name}.py" for name in ("anchors", "boxes", "proposals", "postprocess", "losses")),
    *(PKG / "targets").glob("*.py"),
    PKG / "model" / "faster_rcnn.py",
    PKG / "engines" / "detector.py",
    PKG / "train" / "feature_cache.py",
    PKG / "data" / "blob.py",
])

# (file relative to frcnn_trt/, enclosing function, factory): why a host tensor is right there
HOST_SIDE: dict[tuple[str, str, str], str] = {
    ("boxes.py", "generate_anchors", "tensor"):
        "ratios/scales in float64 on the host; the function returns anchors.to(dtype=dtype, device=device)",
    ("boxes.py", "_threshold_f32_up", "tensor"):
        "float32 rounding of a Python threshold; returns a Python float",
    ("data/blob.py", "_linear_taps", "arange"):
        "resize taps built on the host; resize_hwc moves them with .to(image.device)",
}


def _factory_calls(path: Path) -> list[tuple[str, str, int, bool]]:
    """``(function, factory, line, has_device)`` for every ``torch.<factory>(...)`` call in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, str, int, bool]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and isinstance(child.func.value, ast.Name) and child.func.value.id == "torch"
                    and child.func.attr in FACTORIES):
                has_device = any(k.arg == "device" or k.arg is None for k in child.keywords)
                found.append((inner, child.func.attr, child.lineno, has_device))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def _missing_device(path: Path) -> list[str]:
    rel = path.relative_to(PKG).as_posix()
    return [f"frcnn_trt/{rel}:{line} torch.{name}(...) in {func}() has no device="
            for func, name, line, has_device in _factory_calls(path)
            if not has_device and (rel, func, name) not in HOST_SIDE]


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.relative_to(PKG).as_posix())
def test_factories_name_their_device(path: Path) -> None:
    assert path.is_file(), path
    assert _missing_device(path) == []


def test_host_side_list_is_current() -> None:
    """Every allowed host-side factory still exists (a stale entry would hide nothing and should go)."""
    seen = {(p.relative_to(PKG).as_posix(), func, name)
            for p in SCANNED for func, name, _, has_device in _factory_calls(p) if not has_device}
    assert set(HOST_SIDE) <= seen, sorted(set(HOST_SIDE) - seen)


def test_scan_finds_a_factory_without_device(tmp_path: Path) -> None:
    """The scan itself: a factory without ``device=`` is reported; ``device=`` / ``**kw`` / ``*_like`` pass."""
    src = tmp_path / "m.py"
    src.write_text("import torch\n\ndef f(x, **kw):\n    a = torch.zeros(3)\n    b = torch.arange(4, device=x.device)\n"
                   "    c = torch.zeros_like(x)\n    d = torch.full((2,), 1.0, **kw)\n    return x.new_zeros(2)\n")
    calls = _factory_calls(src)
    assert [(f, n, line, d) for f, n, line, d in calls] == [
        ("f", "zeros", 4, False), ("f", "arange", 5, True), ("f", "full", 7, True)]
