"""The roidb cache file format: a :class:`~frcnn_trt.data.roidb_chain.TrainingRoidb` as one npz of the entries'
arrays laid end to end plus a JSON sidecar (format, version, key, the npz's SHA-256, the entry list, the
filtered-out entries, the bbox-target statistics). Never pickle: a cache is a file anyone can hand you.

The cache key (:func:`cache_key`) covers everything that changes the result: the imdb's fingerprint and name,
every setting of the chain and the digest of the stored proposals. The images are not in the key (their files
may change while the annotations do not): the sidecar keeps every image record and the signature of their check
(:mod:`frcnn_trt.data.image_check`), and a hit is used only when checking them again gives the same signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_trt.data.image_check import ImageRecord
from frcnn_trt.data.roidb_chain import RoidbEntry, TrainingRoidb
from frcnn_trt.distributed import is_main_process
from frcnn_trt.errors import DatasetError
from frcnn_trt.files import load_json
from frcnn_trt.io import atomic_write_bytes, atomic_write_json, npz_bytes, sha256_bytes, sha256_file

__all__ = [
    "CACHE_VERSION",
    "CachedRoidb",
    "cache_files",
    "cache_key",
    "load_cache",
    "proposals_digest",
    "save_cache",
    "writes_cache",
]

CACHE_VERSION = 2
_MAX_SIDECAR_BYTES = 1 << 28


@dataclass
class CachedRoidb:
    """A cached roidb with the image records it was built from and the signature of their check."""

    roidb: TrainingRoidb
    images: list[ImageRecord] = field(default_factory=list)
    image_signature: str = ""


def proposals_digest(proposals: Mapping[str, np.ndarray] | None) -> str | None:
    """SHA-256 of a proposals mapping (ids sorted; float32 boxes), for cache keys."""
    if proposals is None:
        return None
    h = hashlib.sha256()
    for key in sorted(proposals):
        arr = np.ascontiguousarray(np.asarray(proposals[key], dtype=np.float32).reshape(-1, 4))
        h.update(key.encode("utf-8") + b"\0" + str(arr.shape[0]).encode() + b"\0")
        h.update(arr.tobytes())
    return h.hexdigest()


def cache_key(
    fingerprint: str, name: str, settings: Mapping[str, Any], proposals: Mapping[str, np.ndarray] | None
) -> str:
    """SHA-256 of everything that changes a training roidb: the imdb, the chain's settings, the proposals."""
    key_src = {
        "version": CACHE_VERSION,
        "imdb": fingerprint,
        "name": name,
        "settings": dict(settings),
        "proposals": proposals_digest(proposals),
    }
    return hashlib.sha256(json.dumps(key_src, sort_keys=True).encode("utf-8")).hexdigest()


def cache_files(cache_dir: Path, name: str, key: str) -> tuple[Path, Path]:
    """The sidecar and npz paths of the cache of imdb ``name`` under ``key``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "imdb"
    stem = f"roidb_{safe}_{key[:20]}"
    return cache_dir / f"{stem}.json", cache_dir / f"{stem}.npz"


def writes_cache() -> bool:
    """Whether this process writes the cache: always, except ranks other than 0 under torchrun."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return True
    return is_main_process()


def save_cache(
    json_path: Path,
    npz_path: Path,
    key: str,
    result: TrainingRoidb,
    images: Sequence[ImageRecord] = (),
    image_signature: str = "",
) -> bool:
    """Write the cache (npz, then its JSON sidecar); returns whether this process wrote it.

    The sidecar's hash is that of the bytes written (hashed in memory before the atomic write, not read
    back from disk, where another writer may have replaced the file meanwhile). Under torchrun only rank 0
    writes: every rank that missed the cache builds the same roidb, and concurrent writers would each
    leave their own npz (its zip timestamps differ) next to another's sidecar.
    """
    if not writes_cache():
        return False
    entries = result.entries
    offsets = np.zeros(len(entries) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([e.num_rois for e in entries])
    has_targets = bool(entries) and all(e.bbox_targets is not None for e in entries)

    def cat(arrays: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(shape, dtype=dtype)

    arrays: dict[str, Any] = {
        "offsets": offsets,
        "boxes": cat([e.boxes for e in entries], (0, 4), np.float32),
        "gt_classes": cat([e.gt_classes for e in entries], (0,), np.int32),
        "max_overlaps": cat([e.max_overlaps for e in entries], (0,), np.float32),
        "max_classes": cat([e.max_classes for e in entries], (0,), np.int32),
    }
    if has_targets:
        arrays["bbox_targets"] = cat(
            [e.bbox_targets for e in entries if e.bbox_targets is not None], (0, 5), np.float32
        )
    data = npz_bytes(arrays)
    atomic_write_bytes(npz_path, data)
    meta = {
        "format": "frcnn_trt.roidb",
        "version": CACHE_VERSION,
        "key": key,
        "npz": npz_path.name,
        "npz_sha256": sha256_bytes(data),
        "num_classes": entries[0].num_classes if entries else 0,
        "entries": [[e.image_id, str(e.image), e.width, e.height, e.flipped] for e in entries],
        "removed": [list(r) for r in result.removed],
        "skipped": list(result.skipped),
        "bbox_means": None if result.bbox_means is None else result.bbox_means.tolist(),
        "bbox_stds": None if result.bbox_stds is None else result.bbox_stds.tolist(),
        "images": [[r.image_id, str(r.path), int(r.width), int(r.height)] for r in images],
        "image_signature": image_signature,
    }
    atomic_write_json(json_path, meta)
    return True


def load_cache(json_path: Path, npz_path: Path, key: str) -> CachedRoidb:
    """The roidb cached under ``key``; DatasetError (or the reader's own error) when stale or corrupt."""
    meta = load_json(json_path, "roidb cache", max_bytes=_MAX_SIDECAR_BYTES)
    if meta.get("format") != "frcnn_trt.roidb" or meta.get("version") != CACHE_VERSION or meta.get("key") != key:
        raise DatasetError("cache metadata does not match (format, version or key)")
    if sha256_file(npz_path) != meta["npz_sha256"]:
        raise DatasetError("checksum mismatch")
    with np.load(npz_path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    offsets = data["offsets"]
    rows = meta["entries"]
    if offsets.shape != (len(rows) + 1,) or int(offsets[-1]) != data["boxes"].shape[0]:
        raise DatasetError("cache arrays do not match its entry list")
    k1 = int(meta["num_classes"])
    targets = data.get("bbox_targets")
    entries = []
    for i, (image_id, path, width, height, flipped) in enumerate(rows):
        a, b = int(offsets[i]), int(offsets[i + 1])
        entries.append(
            RoidbEntry(
                image_id=str(image_id),
                image=Path(path),
                width=int(width),
                height=int(height),
                flipped=bool(flipped),
                boxes=data["boxes"][a:b].copy(),
                gt_classes=data["gt_classes"][a:b].astype(np.int64),
                max_overlaps=data["max_overlaps"][a:b].copy(),
                max_classes=data["max_classes"][a:b].astype(np.int64),
                num_classes=k1,
                bbox_targets=None if targets is None else targets[a:b].copy(),
            )
        )
    means = None if meta["bbox_means"] is None else np.asarray(meta["bbox_means"], dtype=np.float64)
    stds = None if meta["bbox_stds"] is None else np.asarray(meta["bbox_stds"], dtype=np.float64)
    removed = [(str(r[0]), bool(r[1]), str(r[2])) for r in meta["removed"]]
    images = [ImageRecord(str(i), Path(p), int(w), int(h)) for i, p, w, h in meta["images"]]
    skipped = [str(s) for s in meta["skipped"]] if isinstance(meta.get("skipped"), list) else []
    roidb = TrainingRoidb(entries, removed, means, stds, cache_path=json_path, from_cache=True, skipped=skipped)
    return CachedRoidb(roidb, images, str(meta["image_signature"]))
