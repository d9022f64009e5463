"""Small file helpers: atomic writes, content hashes, and byte-reproducible safetensors / npz bytes.

Every file a long job writes (checkpoints, proposals, caches, reports) goes through a temporary file in
the same folder and :func:`os.replace`, so an interruption never leaves a half-written file behind. The file
gets the permissions an ordinary ``open(path, "w")`` would give it (``0666`` less the process umask: ``0644``
under umask 022), not the ``0600`` of a bare :func:`tempfile.mkstemp`: an export written by one user can be
served by another.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as fh:
            line = next(ln for ln in fh if ln.startswith("Umask:"))
        return int(line.split()[1], 8)
    with _UMASK_LOCK:  # elsewhere: set and restore (os has no read-only call)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file's bytes) with its JSON header written in one canonical form, so that the same
    tensors and metadata give the same bytes in every process.

    The safetensors library keeps ``__metadata__`` in a hash map whose order changes from process to process
    (Rust's seeded hashing), so two saves of the same weights differ byte-wise and so would every SHA-256 taken
    of them (checkpoint sidecars, proposals files, export.json). The format is an 8-byte little-endian header
    length, the JSON header, space padding to a multiple of 8 bytes, then the tensor data (offsets relative to
    its start): here the header is re-serialised compactly with the metadata keys sorted and the tensor entries
    in data order, and padded the same way; the data is untouched.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    out: dict[str, Any] = {}
    if meta is not None:
        out["__metadata__"] = {k: meta[k] for k in sorted(meta)}
    for name in sorted(header, key=lambda k: (header[k]["data_offsets"][0], k)):
        out[name] = header[name]
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` (uncompressed, no pickles) of ``arrays`` in the given order whose bytes depend only on the
    arrays: :func:`numpy.savez` stamps each member with the current time, so the same arrays saved twice differ
    (and so does their SHA-256); here every member carries the zip epoch 1980-01-01 instead."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()
