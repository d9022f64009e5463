"""The backends, fastest first: the one list every other list of backends is derived from.

``BACKEND_MODULES`` holds the backend modules in order of preference for ``backend="auto"`` (TensorRT >
ONNX Runtime > torch). From their specs (:class:`~frcnn_trt.engines.protocol.BackendSpec`) come
:data:`BACKEND_NAMES` (``--backend`` choices, auto's order, ``doctor``'s and ``benchmark``'s lists) and
:data:`BACKEND_OPTIONS` (which ``backend_options`` each takes).

Adding a backend:

1. write ``frcnn_trt/engines/<name>_backend.py`` (or a subpackage, as :mod:`frcnn_trt.engines.tensorrt`)
   with a :class:`~frcnn_trt.engines.protocol.Backend` subclass and a module-level
   ``SPEC = BackendSpec(name=..., summary=..., availability=..., options=..., loader=..., version=...,
   install=...)``; import heavy libraries inside functions so that importing the module never fails;
2. add the module to ``BACKEND_MODULES`` below, at its place in the preference order;
3. test it in ``tests/engines/`` against the torch backend on the tiny export.

Nothing else changes: selection (:mod:`frcnn_trt.engines.selection`), ``doctor``, ``benchmark`` and the
option checks read the specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines import onnxruntime_backend, torch_backend
from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.protocol import BackendSpec
from frcnn_trt.engines.tensorrt import backend as tensorrt_backend
from frcnn_trt.errors import BackendError

__all__ = [
    "BACKEND_MODULES",
    "BACKEND_NAMES",
    "BACKEND_OPTIONS",
    "BACKEND_SPECS",
    "backend_availability",
    "backend_spec",
    "check_backend_options",
    "check_named_options",
    "options_for",
]

#: The backend modules, fastest first (the order ``backend="auto"`` tries them in).
BACKEND_MODULES: tuple[ModuleType, ...] = (tensorrt_backend, onnxruntime_backend, torch_backend)


def _spec_of(module: ModuleType) -> BackendSpec:
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, BackendSpec):
        raise TypeError(f"backend module {module.__name__} has no SPEC = BackendSpec(...)")
    return spec


#: Their specs, in the same order.
BACKEND_SPECS: tuple[BackendSpec, ...] = tuple(_spec_of(m) for m in BACKEND_MODULES)
#: Backend names in order of preference for ``backend="auto"`` (fastest first).
BACKEND_NAMES: tuple[str, ...] = tuple(s.name for s in BACKEND_SPECS)
#: The options each backend's loader takes (``Detector.from_export(backend_options=...)``); with
#: ``backend="auto"`` each candidate gets its own from one dict.
BACKEND_OPTIONS: dict[str, frozenset[str]] = {s.name: s.options for s in BACKEND_SPECS}


def backend_spec(name: str) -> BackendSpec:
    """The spec of backend ``name``; BackendError naming the choices for an unknown one."""
    for spec in BACKEND_SPECS:
        if spec.name == name:
            return spec
    raise BackendError(f"unknown backend {name!r}; expected one of auto, {', '.join(BACKEND_NAMES)}")


def backend_availability(device: str | torch.device | None = None, info: ExportInfo | None = None
                         ) -> dict[str, tuple[bool, str]]:
    """For each backend (preference order): ``(can run here, why / how)``; with ``info``, for that export."""
    dev = resolve_device(device)
    return {spec.name: spec.availability(dev, info) for spec in BACKEND_SPECS}


def _describe_options() -> str:
    return "; ".join(f"{b}: {', '.join(sorted(o)) or '(none)'}" for b, o in BACKEND_OPTIONS.items())


def check_backend_options(options: Mapping[str, Any]) -> None:
    """BackendError naming any option that no backend takes."""
    unknown = sorted(set(options) - frozenset().union(*BACKEND_OPTIONS.values()))
    if unknown:
        raise BackendError(f"unknown backend option(s) {unknown}; known: {_describe_options()}")


def check_named_options(name: str, options: Mapping[str, Any]) -> None:
    """BackendError naming the options that backend ``name`` does not take, and whose they are."""
    theirs = sorted(set(options) - backend_spec(name).options)
    if theirs:
        owners = {k: [b for b, o in BACKEND_OPTIONS.items() if k in o] for k in theirs}
        raise BackendError(f"backend {name} does not take option(s) "
                           + ", ".join(f"{k} ({'/'.join(v) or 'no backend'}'s)" for k, v in owners.items()))


def options_for(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``options`` backend ``name`` takes (after :func:`check_backend_options`)."""
    check_backend_options(options)
    return {k: v for k, v in options.items() if k in backend_spec(name).options}
