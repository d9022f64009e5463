"""The engine cache: keys of everything that invalidates a plan, lookup with the reason for a miss, sidecars,
and TensorRT's timing cache.

``<cache>/<engine>-<key>.engine`` + a JSON sidecar (the key dict, the engine's SHA-256, how and when it was
made). The key (:func:`engine_key`) covers the ONNX SHA-256, profile, precision and builder settings, TensorRT
flavour + version, GPU compute capability and, for a detector with the custom RoIPool node, our plugin and
its kernel source (a RoIAlign detector uses TensorRT's own plugin: its version is TensorRT's). A hit is
checked against the sidecar's SHA-256; a miss says why (what differs from the newest other engine of that
name).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.tensorrt.kernel import source_sha256
from frcnn_trt.engines.tensorrt.plugin import PLUGIN_ID, PLUGIN_VERSION
from frcnn_trt.engines.tensorrt.runtime import TensorRTInfo
from frcnn_trt.engines.tensorrt.settings import BuildSettings, EngineSpec, PrecisionPlan
from frcnn_trt.io import atomic_write_bytes, atomic_write_json, sha256_file

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_CACHE_DIRNAME",
    "EngineResult",
    "cache_lookup",
    "default_cache_dir",
    "diff_keys",
    "engine_key",
    "load_timing_cache",
    "save_timing_cache",
    "timing_cache_path",
    "write_sidecar",
]

log = logging.getLogger("frcnn_trt.engines.tensorrt")

CACHE_FORMAT = 1
DEFAULT_CACHE_DIRNAME = "engines"


def default_cache_dir(info: ExportInfo) -> Path:
    """``<export>/engines``."""
    return info.directory / DEFAULT_CACHE_DIRNAME


@dataclass
class EngineResult:
    """One engine: where it is, its cache key and whether this call built it (and why)."""

    name: str
    path: Path
    key: str
    built: bool
    reason: str
    precision: str
    tensorrt: str
    compute_capability: str
    seconds: float = 0.0
    size: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


# ------------------------------------------------------------------------------------------------ keys


def engine_key(spec: EngineSpec, settings: BuildSettings, plan: PrecisionPlan, info: TensorRTInfo,
               compute_capability: str) -> tuple[str, dict[str, Any]]:
    """``(16-hex key, the dict it hashes)``: everything that invalidates a plan."""
    d: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "engine": spec.name,
        "onnx_sha256": spec.onnx_sha256,
        "profile": {k: [list(s) for s in v] for k, v in sorted(spec.profile.items())},
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.builder_flags),
        "workspace_mib": settings.workspace_mib,
        "optimization_level": settings.optimization_level,
        "refit": settings.refit,
        "tensorrt": f"{info.flavour} {info.version}",
        "compute_capability": compute_capability,
    }
    if spec.plugin:
        d["plugin"] = {"id": PLUGIN_ID, "version": PLUGIN_VERSION, "impl": settings.plugin_impl,
                       "kernel_sha256": source_sha256()}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16], d


def diff_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"field: old → new"`` for each key field that differs (SHA-256s shortened)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a != b:
            if isinstance(a, str) and isinstance(b, str) and len(a) == 64 and len(b) == 64:
                a, b = a[:12] + "…", b[:12] + "…"
            out.append(f"{k}: {json.dumps(a, sort_keys=True)} → {json.dumps(b, sort_keys=True)}")
    return out


# ------------------------------------------------------------------------------------------------ lookup


def cache_lookup(cache_dir: Path, name: str, key: str, key_dict: Mapping[str, Any]) -> tuple[Path | None, str]:
    """``(engine path if a valid cached engine exists, why not / "cached")``."""
    if not cache_dir.is_dir():
        return None, f"no engine cache at {cache_dir}"
    engine = cache_dir / f"{name}-{key}.engine"
    sidecar = engine.with_suffix(".json")
    if engine.is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            return None, f"{sidecar} is unreadable ({exc})"
        if meta.get("engine_sha256") != sha256_file(engine):
            return None, f"cached {engine.name} fails its SHA-256 check (corrupt or replaced)"
        return engine, "cached"
    return None, _why_missing(cache_dir, name, key_dict)


def _why_missing(cache_dir: Path, name: str, key_dict: Mapping[str, Any]) -> str:
    others = []
    for p in cache_dir.glob(f"{name}-*.json"):
        try:
            others.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    if not others:
        return f"no cached {name} engine in {cache_dir}"
    newest = max(others, key=lambda m: str(m.get("created", "")))
    diff = diff_keys(newest.get("key", {}), key_dict)
    return "settings changed since the cached engine: " + ("; ".join(diff) if diff else "(unknown)")


def write_sidecar(engine_path: Path, key: str, key_dict: Mapping[str, Any], *, engine_sha256: str, size: int,
                  onnx: Path, seconds: float, reason: str, notes: list[str], **extra: Any) -> None:
    """The JSON next to a cached engine (atomic): key, SHA-256, size, source ONNX, when, how long, why."""
    atomic_write_json(engine_path.with_suffix(".json"), {
        "key": dict(key_dict), "key_hash": key, "engine_sha256": engine_sha256, "size": size, "onnx": str(onnx),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 3),
        "reason": reason, **extra, "notes": notes,
    })


# ------------------------------------------------------------------------------------------------ timing cache


def timing_cache_path(cache_dir: Path, info: TensorRTInfo, cc: str) -> Path:
    """One timing cache per TensorRT flavour + version and compute capability, inside the engine cache."""
    return cache_dir / f"timing-{info.flavour}-{info.version}-sm{cc.replace('.', '')}.cache"


def load_timing_cache(config: trt.IBuilderConfig, path: Path) -> str:
    """Give ``config`` the timing cache at ``path`` (a new one if absent or unfit); says which."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        if data:
            log.warning("timing cache %s does not fit this TensorRT/GPU: starting a new one", path)
            cache = config.create_timing_cache(b"")
            if cache is not None:
                config.set_timing_cache(cache, False)
        return "new"
    return f"loaded ({len(data)} bytes)" if data else "new"


def save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Write ``config``'s timing cache to ``path`` (atomic), grown by the build just done."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    blob = bytes(memoryview(cache.serialize()))
    if blob:
        atomic_write_bytes(path, blob)
