"""Which backend runs an export: ``auto`` picks the fastest that can run it here and says why; a named
backend that cannot run is a :class:`~frcnn_trt.errors.BackendError` with the reason — nothing falls back
silently.

:func:`open_backend` is the one way in (``Detector.from_export`` calls it); :func:`select_backend` answers
the same question without loading anything (``doctor``). Each candidate gets only its own options
(:data:`~frcnn_trt.engines.backends.BACKEND_OPTIONS`); an option no backend takes is an error, and so is
giving a named backend an option that is not its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.backends import (
    BACKEND_SPECS,
    backend_availability,
    backend_spec,
    check_backend_options,
    check_named_options,
    options_for,
)
from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.protocol import Backend, BackendSpec
from frcnn_trt.errors import BackendError

if TYPE_CHECKING:
    from frcnn_trt.model.faster_rcnn import FasterRCNN

__all__ = ["open_backend", "select_backend"]

log = logging.getLogger("frcnn_trt.engines")


def _auto_reason(why: str, skipped: list[str]) -> str:
    return f"fastest available: {why}" + (" (" + "; ".join(skipped) + ")" if skipped else "")


def select_backend(requested: str, device: str | torch.device | None = None, info: ExportInfo | None = None
                   ) -> tuple[str, str]:
    """``(backend name, reason)``: ``"auto"`` → the first of tensorrt > onnxruntime > torch that can run here
    (for ``info`` when given); an explicit name that cannot run raises :class:`BackendError` with the reason.
    Loads nothing: ``auto`` may still pass a backend over at load time (:func:`open_backend`)."""
    avail = backend_availability(device, info)
    if requested != "auto":
        backend_spec(requested)  # BackendError for an unknown name
        ok, why = avail[requested]
        if not ok:
            raise BackendError(f"backend {requested!r} cannot run here: {why}")
        return requested, why
    skipped: list[str] = []
    for name, (ok, why) in avail.items():
        if ok:
            return name, _auto_reason(why, skipped)
        skipped.append(f"{name}: {why}")
    raise BackendError("no backend can run here: " + "; ".join(skipped))  # pragma: no cover - torch always


def open_backend(
    requested: str,
    info: ExportInfo,
    device: str | torch.device | None = None,
    *,
    model: FasterRCNN | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[Backend, str]:
    """Load export ``info`` with backend ``requested`` (``"auto"`` or a name of
    :data:`~frcnn_trt.engines.backends.BACKEND_NAMES`) on ``device``: ``(backend, why it was chosen)``.

    ``options``: backend options (one dict; ``auto`` gives each candidate its own, a named backend must take
    them all). ``model``: the exported FasterRCNN when the caller holds it (the torch backend runs it).
    ``auto`` tries the available backends fastest first and passes over one that cannot load this export
    (logged, and part of the reason)."""
    dev = resolve_device(device)
    opts = dict(options or {})
    if requested == "auto":
        return _open_auto(info, dev, model, opts)
    spec = backend_spec(requested)
    check_named_options(requested, opts)
    ok, why = spec.availability(dev, info)
    if not ok:
        raise BackendError(f"backend {requested!r} cannot run here: {why}")
    return spec.loader(info, dev, opts, model), why


def _open_auto(info: ExportInfo, device: torch.device, model: FasterRCNN | None, options: dict[str, Any]
               ) -> tuple[Backend, str]:
    check_backend_options(options)  # before trying any backend
    skipped: list[str] = []
    candidates: list[tuple[BackendSpec, str]] = []
    for spec in BACKEND_SPECS:
        ok, why = spec.availability(device, info)
        if ok:
            candidates.append((spec, why))
        else:
            skipped.append(f"{spec.name}: {why}")
    for spec, why in candidates:
        try:
            backend = spec.loader(info, device, options_for(spec.name, options), model)
        except BackendError as exc:  # available in principle, but this export/device does not load
            log.warning("backend auto: %s cannot load %s: %s", spec.name, info.directory, exc)
            skipped.append(f"{spec.name}: {exc}")
            continue
        reason = _auto_reason(why, skipped)
        log.info("backend auto → %s: %s", spec.name, reason)
        return backend, reason
    raise BackendError("no backend can run this export here: " + "; ".join(skipped))
