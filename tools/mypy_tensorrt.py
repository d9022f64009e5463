"""Type-check the TensorRT code against ``tensorrt-stubs`` (``pip install tensorrt-stubs --no-deps``).

``tensorrt-stubs`` 10.13 installs ``tensorrt/__init__.pyi`` and ``tensorrt_bindings/*.pyi`` without a
``py.typed`` marker (so mypy skips them) and with five lines that are not valid Python (parameters named
``in``; a parameter without a default after defaulted ones). This script copies the installed stubs to a
temporary folder, repairs those lines, and runs mypy with that folder on ``MYPYPATH`` and the settings below
(errors inside the stubs themselves are silenced; imported project modules are analysed, not reported).
Nothing is vendored.

    python tools/mypy_tensorrt.py            # the TensorRT subpackage (FILES below)
    python tools/mypy_tensorrt.py FILE...    # other files or folders
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

FILES = [
    "frcnn_trt/engines/tensorrt",
]
_ROOT = Path(__file__).resolve().parent.parent


def _stub_dirs() -> list[Path]:
    found = []
    for name in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for loc in locations:
            if any(p.suffix == ".pyi" for p in Path(loc).iterdir()):
                found.append(Path(loc))
                break
        else:
            sys.exit(f"no {name} stubs found (searched {locations or 'nothing'}): pip install tensorrt-stubs --no-deps")
    return found


def _repair(text: str) -> str:
    text = re.sub(r"(\(|, )in: ", r"\1in_: ", text)  # `in` is a keyword
    # a parameter without a default after defaulted ones (add_scale_nd's channel_axis)
    return re.sub(r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)", text)


CONFIG = """\
[mypy]
python_version = 3.11
strict_optional = True
check_untyped_defs = True
disallow_untyped_defs = True
disallow_incomplete_defs = True
warn_unused_ignores = True
warn_redundant_casts = True
follow_imports = silent
ignore_missing_imports = True

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
"""


def main(argv: list[str]) -> int:
    files = argv or FILES
    with tempfile.TemporaryDirectory(prefix="trt-stubs-") as tmp:
        for src in _stub_dirs():
            dst = Path(tmp) / src.name
            dst.mkdir()
            for p in src.glob("*.pyi"):
                (dst / p.name).write_text(_repair(p.read_text(encoding="utf-8")), encoding="utf-8")
        config = Path(tmp) / "mypy.ini"
        config.write_text(CONFIG, encoding="utf-8")
        env = dict(os.environ, MYPYPATH=tmp)
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), *files]
        print("MYPYPATH=<repaired tensorrt-stubs> mypy", " ".join(files), flush=True)
        return subprocess.call(cmd, env=env, cwd=_ROOT)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
