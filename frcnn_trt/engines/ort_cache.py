"""ONNX Runtime's optimised graphs, cached so that a session starts without re-doing the work.

Building a session for ``detector.onnx`` means parsing it with ``onnx`` (an import of ~1.5 s), rewriting its
``frcnn.RoIPool`` node to ``MaxRoiPool``, serialising it again and letting ONNX Runtime optimise the graph
(constant folding, fusions, NCHWc layouts for the CPU). ONNX Runtime can save the optimised graph
(``SessionOptions.optimized_model_filepath``); a later session loads that file with graph optimisation
disabled: same kernels, bit-identical outputs (checked in tests), without the rewrite or the optimiser.

- **Key**: the source graph's SHA-256 as ``export.json`` records it plus the file's size and modification time
  (a replaced file misses), whether the RoI-pool rewrite applies, the optimisation level, the ONNX Runtime
  version, the execution provider and the CPU (model name and flags: ``all`` inserts layouts chosen for this
  CPU's instruction set). Only the CPU provider is cached: CUDA sessions build as before.
- **Validated on load, never trusted blindly**: next to each ``<name>-<key>.onnx`` lies a JSON record of the
  key and the cached file's own SHA-256; a record that does not match, or a file whose hash differs, is rebuilt
  (and the log says why).
- **Where**: ``<export>/ort_cache/``, or ``~/.cache/frcnn-trt/ort/`` (``$XDG_CACHE_HOME`` honoured) when the
  export folder is read-only. Files are written atomically (:mod:`frcnn_trt.io`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frcnn_trt.io import atomic_write_bytes, atomic_write_json, sha256_bytes

__all__ = ["CACHE_DIRNAME", "GraphCache", "GraphKey", "cpu_signature", "optimised_session", "user_cache_dir"]

log = logging.getLogger("frcnn_trt.engines.onnxruntime")

CACHE_DIRNAME = "ort_cache"
_FORMAT = "frcnn-trt-ort-cache"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/frcnn-trt/ort`` (default ``~/.cache/frcnn-trt/ort``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "frcnn-trt" / "ort"


def cpu_signature() -> str:
    """The CPU model name and feature flags (``/proc/cpuinfo``; ``platform`` elsewhere), hashed."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                if line.strip() == "":  # the first processor is enough
                    break
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GraphKey:
    """Everything that makes an optimised graph valid (module docstring)."""

    name: str
    source_sha256: str
    source_size: int
    source_mtime_ns: int
    rewrite: bool
    optimization: str
    ort_version: str
    provider: str
    cpu: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def for_file(cls, path: Path, sha256: str, *, rewrite: bool, optimization: str, ort_version: str,
                 provider: str) -> GraphKey:
        st = path.stat()
        return cls(path.name, sha256, st.st_size, st.st_mtime_ns, rewrite, optimization, ort_version, provider,
                   cpu_signature())


class GraphCache:
    """Optimised graphs in ``directory`` (or the user cache when that cannot be written)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def for_export(cls, export_dir: Path) -> GraphCache:
        """``<export>/ort_cache`` when the export folder is writable, else :func:`user_cache_dir`."""
        own = export_dir / CACHE_DIRNAME
        writable = os.access(own if own.is_dir() else export_dir, os.W_OK | os.X_OK)
        return cls(own if writable else user_cache_dir())

    def _paths(self, key: GraphKey) -> tuple[Path, Path]:
        stem = f"{Path(key.name).stem}-{key.digest}"
        return self.directory / f"{stem}.onnx", self.directory / f"{stem}.json"

    def lookup(self, key: GraphKey) -> bytes | None:
        """The cached optimised graph for ``key``, or ``None`` (missing, or failing validation: logged)."""
        model_path, record_path = self._paths(key)
        if not record_path.is_file() or not model_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            data = model_path.read_bytes()
        except (OSError, ValueError) as exc:
            log.info("onnxruntime cache %s unreadable (%s): rebuilding", record_path, exc)
            return None
        if not isinstance(record, dict) or record.get("format") != _FORMAT or record.get("key") != key.to_dict():
            log.info("onnxruntime cache %s was made for other settings: rebuilding", record_path)
            return None
        if record.get("sha256") != sha256_bytes(data):
            log.warning("onnxruntime cache %s: SHA-256 mismatch (corrupt or modified): rebuilding", model_path)
            return None
        return data

    def store(self, key: GraphKey, data: bytes) -> Path | None:
        """Write ``data`` for ``key`` (atomically); ``None`` (logged) when the folder cannot be written."""
        model_path, record_path = self._paths(key)
        try:
            atomic_write_bytes(model_path, data)
            atomic_write_json(record_path, {"format": _FORMAT, "key": key.to_dict(), "sha256": sha256_bytes(data)})
        except OSError as exc:
            log.warning("cannot write the onnxruntime cache in %s (%s): sessions will be built from scratch",
                        self.directory, exc)
            return None
        return model_path


def optimised_session(ort: Any, payload: bytes, so: Any, providers: list[Any]) -> tuple[Any, bytes]:
    """A session of ``payload`` built with ``so``, and the optimised graph ONNX Runtime saved while building it
    (written to a private temporary folder, read back, removed)."""
    with tempfile.TemporaryDirectory(prefix="frcnn_ort_") as tmp:
        out = Path(tmp) / "optimised.onnx"
        so.optimized_model_filepath = str(out)
        try:
            session = ort.InferenceSession(payload, so, providers=providers)
        finally:
            so.optimized_model_filepath = ""
        return session, out.read_bytes()
