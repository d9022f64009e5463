"""The TensorRT Python module: which one is loaded, what it can do, its logger, its plugin libraries.

Glossary: a *flavour* is which TensorRT Python module runs: ``"tensorrt"`` (TensorRT 10 / 11, needs a CUDA
GPU) or ``"tensorrt_rtx"`` (TensorRT for RTX: builds on a CPU-only machine for a named compute capability,
no Python plugins; used here to prove parsing and building in CI).

The module-level ``trt`` is the TensorRT module, type-checked against ``tensorrt-stubs`` and resolved on
first use (to ``tensorrt`` or, inside :func:`use_flavour`, ``tensorrt_rtx``): importing this file, or any
file of :mod:`frcnn_trt.engines.tensorrt`, never needs TensorRT. What the loaded module can do is found by
feature detection (:func:`tensorrt_info`), not by parsing its version.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from frcnn_trt.errors import BackendError

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = [
    "FLAVOURS",
    "INSTALL_HINTS",
    "Shape",
    "TensorRTInfo",
    "TensorRTLogger",
    "dims_tuple",
    "gpu_compute_capability",
    "init_standard_plugins",
    "load_tensorrt",
    "probe_tensorrt",
    "tensorrt_info",
    "trt",
    "use_flavour",
]

log = logging.getLogger("frcnn_trt.engines.tensorrt")

FLAVOURS: tuple[str, ...] = ("tensorrt", "tensorrt_rtx")
#: import names tried per flavour (the RTX metapackage provides ``tensorrt_rtx``; its bindings wheel alone
#: provides ``tensorrt_rtx_bindings``)
_IMPORTS: dict[str, tuple[str, ...]] = {"tensorrt": ("tensorrt",),
                                        "tensorrt_rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}
INSTALL_HINTS: dict[str, str] = {
    "tensorrt": "pip install 'tensorrt-cu13>=10.9'  (or tensorrt-cu12 for a CUDA 12 driver; "
                "needs an NVIDIA GPU and NVIDIA's package index)",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
}

Shape = tuple[int, ...]

_FLAVOUR: contextvars.ContextVar[str] = contextvars.ContextVar("frcnn_trt_tensorrt_flavour", default="tensorrt")
_LOADED: dict[str, ModuleType] = {}


def _label(flavour: str) -> str:
    return "TensorRT" if flavour == "tensorrt" else "TensorRT-RTX"


def load_tensorrt(flavour: str = "tensorrt") -> ModuleType:
    """The TensorRT Python module of ``flavour``; :class:`BackendError` with the install command if absent.

    ``tensorrt-stubs`` alone leaves an importable but empty ``tensorrt`` namespace package: that counts as
    absent (the error says so)."""
    if flavour not in FLAVOURS:
        raise BackendError(f"unknown TensorRT flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    if flavour in _LOADED:
        return _LOADED[flavour]
    problems: list[str] = []
    for name in _IMPORTS[flavour]:
        module, problem = _try_import(name)
        if module is not None:
            _LOADED[flavour] = module
            return module
        problems.append(problem)
    raise BackendError(f"{_label(flavour)} is not available: " + "; ".join(problems)
                       + f". Install: {INSTALL_HINTS[flavour]}")


def _try_import(name: str) -> tuple[ModuleType | None, str]:
    """``(module, "")`` when ``name`` imports and holds a TensorRT library, else ``(None, why not)``."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return None, f"import {name}: {exc}"
    except Exception as exc:  # a broken install (missing libnvinfer, CUDA mismatch) raises other types
        return None, f"import {name}: {type(exc).__name__}: {exc}"
    if not hasattr(module, "Builder") or not hasattr(module, "__version__"):
        paths = [str(p) for p in getattr(module, "__path__", None) or []]
        where = str(paths) if paths else str(getattr(module, "__file__", "?"))
        return None, (f"import {name}: found {where}, which holds no TensorRT library (only type stubs such as "
                      "tensorrt-stubs, or a metapackage whose libraries failed to install)")
    return module, ""


class _LazyTensorRT:
    """Stands for the TensorRT module of the current flavour (see :func:`use_flavour`) until first use."""

    def __getattr__(self, name: str) -> Any:
        return getattr(load_tensorrt(_FLAVOUR.get()), name)

    def __repr__(self) -> str:
        return f"<lazy TensorRT module, flavour {_FLAVOUR.get()}>"


if not TYPE_CHECKING:
    trt = _LazyTensorRT()


@contextlib.contextmanager
def use_flavour(flavour: str) -> Iterator[ModuleType]:
    """Within the block, this package's ``trt`` is ``flavour``'s module (loaded, or BackendError)."""
    module = load_tensorrt(flavour)
    token = _FLAVOUR.set(flavour)
    try:
        yield module
    finally:
        _FLAVOUR.reset(token)


# ------------------------------------------------------------------------------------------------ features


@dataclass(frozen=True)
class TensorRTInfo:
    """What the loaded TensorRT can do, found by feature detection (attributes), not version parsing."""

    flavour: str
    module: str
    version: str
    #: ``BuilderFlag.FP16`` exists (TensorRT ≤ 10): FP32 ONNX may be built with FP16 kernels
    fp16_flag: bool
    #: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists
    strongly_typed_flag: bool
    #: ``BuilderFlag.REFIT`` and ``Refitter`` exist
    refit: bool
    #: the ONNX parser can refit weights (``OnnxParserRefitter``)
    onnx_refitter: bool
    #: ``ComputeCapability`` targets the builder accepts (TensorRT-RTX), e.g. ``("7.5", "8.6")``
    compute_capabilities: tuple[str, ...] = ()

    @property
    def always_strongly_typed(self) -> bool:
        """No weak typing (TensorRT 11, TensorRT-RTX): precision comes from the ONNX alone."""
        return not self.fp16_flag

    @property
    def label(self) -> str:
        return f"{_label(self.flavour)} {self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["always_strongly_typed"] = self.always_strongly_typed
        return d


def _compute_capabilities(module: ModuleType) -> tuple[str, ...]:
    cc_enum = getattr(module, "ComputeCapability", None)
    ccs = [f"{name[2:-1]}.{name[-1]}" for name in dir(cc_enum) if name.startswith("SM") and name[2:].isdigit()] \
        if cc_enum is not None else []
    return tuple(sorted(ccs, key=lambda s: tuple(int(p) for p in s.split("."))))


def tensorrt_info(flavour: str = "tensorrt") -> TensorRTInfo:
    """Feature-detect the TensorRT module of ``flavour`` (BackendError when it is absent)."""
    module = load_tensorrt(flavour)
    bf = getattr(module, "BuilderFlag", None)
    nf = getattr(module, "NetworkDefinitionCreationFlag", None)
    return TensorRTInfo(
        flavour=flavour,
        module=module.__name__,
        version=str(module.__version__),
        fp16_flag=hasattr(bf, "FP16"),
        strongly_typed_flag=hasattr(nf, "STRONGLY_TYPED"),
        refit=hasattr(bf, "REFIT") and hasattr(module, "Refitter"),
        onnx_refitter=hasattr(module, "OnnxParserRefitter"),
        compute_capabilities=_compute_capabilities(module),
    )


def probe_tensorrt(flavour: str = "tensorrt") -> tuple[TensorRTInfo | None, str]:
    """``(info or None, one line)``: never raises (for ``doctor`` and backend availability)."""
    try:
        info = tensorrt_info(flavour)
    except BackendError as exc:
        return None, str(exc)
    return info, info.label


def gpu_compute_capability() -> str | None:
    """``"8.6"``-style compute capability of torch's current CUDA device, or ``None`` without one."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except Exception:  # torch without CUDA support, a broken driver
        return None
    return None


def dims_tuple(dims: trt.Dims) -> Shape:
    """A TensorRT ``Dims`` as a tuple of ints (``-1`` = dynamic)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


# ------------------------------------------------------------------------------------------------ logging


class TensorRTLogger:
    """A TensorRT ``ILogger`` forwarding to :mod:`logging` and keeping the lines of one build (for errors).

    Built lazily by :meth:`create` (the base class lives in the TensorRT module of the current flavour)."""

    @staticmethod
    def create(verbose: bool = False, forward: bool = True) -> Any:
        base = trt.ILogger

        class CapturingLogger(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)
                self.lines: list[tuple[str, str]] = []
                self.verbose = verbose

            def log(self, severity: Any, msg: str) -> None:
                level = getattr(severity, "name", str(severity))
                self.lines.append((level, msg))
                if forward:
                    _forward(level, msg, self.verbose)

            def errors(self) -> list[str]:
                return [m for lvl, m in self.lines if lvl in ("INTERNAL_ERROR", "ERROR")]

        return CapturingLogger()


def _forward(level: str, msg: str, verbose: bool) -> None:
    if level in ("INTERNAL_ERROR", "ERROR"):
        log.error("TensorRT: %s", msg)
    elif level == "WARNING":
        log.warning("TensorRT: %s", msg)
    elif verbose:
        log.debug("TensorRT %s: %s", level.lower(), msg)


# ------------------------------------------------------------------------------------------------ plugins


_PLUGIN_LOCK = threading.Lock()
#: flavour → the logger handed to ``init_libnvinfer_plugins`` (TensorRT keeps a pointer to it: it must live on)
_STANDARD_PLUGINS: dict[str, Any] = {}


def init_standard_plugins(flavour: str = "tensorrt") -> None:
    """Register TensorRT's standard plugin library (``libnvinfer_plugin``: ``ROIAlign_TRT``, which the ONNX
    parser uses for ONNX ``RoiAlign``) in the plugin registry; once per flavour, before a parse or a
    deserialisation that needs it. BackendError naming the TensorRT when the library cannot be initialised."""
    with _PLUGIN_LOCK:
        if flavour in _STANDARD_PLUGINS:
            return
        with use_flavour(flavour) as module:
            logger = TensorRTLogger.create()
            init: Any = trt.init_libnvinfer_plugins  # the stubs type the logger as a capsule
            try:
                ok = bool(init(logger, ""))
            except Exception as exc:  # the plugin library is missing or fails to load
                raise BackendError(f"{_label(flavour)} {module.__version__}: init_libnvinfer_plugins failed "
                                   f"({exc}); ONNX RoiAlign needs TensorRT's standard plugin library") from None
            if not ok:
                raise BackendError(f"{_label(flavour)} {module.__version__}: init_libnvinfer_plugins returned "
                                   f"False ({'; '.join(logger.errors()) or 'no message'}); ONNX RoiAlign needs "
                                   "TensorRT's standard plugin library (libnvinfer_plugin)")
            _STANDARD_PLUGINS[flavour] = logger
