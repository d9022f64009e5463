"""Reading tensor files a user hands us (checkpoints, solver states, initial weights) without trusting them.

- ``.safetensors``: the 8-byte header length and the JSON header are checked before the library maps the file
  (:func:`check_safetensors`): a header within limits, every tensor entry with a known dtype, a shape of
  non-negative sizes and data offsets that tile the data section exactly — a truncated, padded or hand-made file
  is a :class:`~frcnn_trt.errors.CheckpointError` naming the file, never a crash or a huge allocation.
- ``.pth`` / ``.pt``: only a zip archive (``torch.save``'s format) or a legacy pickle stream is handed to
  ``torch.load(weights_only=True)``; a zip whose members expand far beyond their stored size (a zip bomb) or hold
  more than :data:`MAX_TENSORS` members is refused first (:func:`check_torch_file`).
- every floating-point tensor must be finite (:func:`check_finite`, one vectorised ``isfinite`` per tensor): a
  model whose weights hold NaN/inf would otherwise load and silently detect nothing.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from frcnn_trt.errors import CheckpointError
from frcnn_trt.files import parse_json, read_prefix, short

__all__ = ["MAX_HEADER_BYTES", "MAX_TENSORS", "check_finite", "check_safetensors", "check_torch_file"]

#: safetensors' own header limit (100 MB)
MAX_HEADER_BYTES = 100_000_000
#: the most tensors (or zip members) one file may hold
MAX_TENSORS = 1 << 16
#: a zip member may expand to at most this many times its stored size (torch.save stores members uncompressed)
MAX_ZIP_RATIO = 200
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def _entry(path: Path, name: str, entry: Any) -> tuple[int, int]:
    """``(begin, end)`` of one header entry after checking its dtype, shape and offsets."""
    if not isinstance(entry, Mapping):
        raise CheckpointError(f"{path}: safetensors header entry {short(name)} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPE_BYTES:
        raise CheckpointError(f"{path}: tensor {short(name)} has unknown dtype {short(dtype)}")
    if (not isinstance(shape, list) or len(shape) > 16
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 48 for d in shape)):
        raise CheckpointError(f"{path}: tensor {short(name)} has an invalid shape {short(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise CheckpointError(f"{path}: tensor {short(name)} has invalid data_offsets {short(offsets)}")
    begin, end = offsets
    if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype] or begin < 0:
        raise CheckpointError(f"{path}: tensor {short(name)} ({dtype} {shape}) does not match its data_offsets "
                              f"{offsets}")
    return begin, end


def check_safetensors(path: str | Path, what: str = "safetensors file") -> dict[str, Any]:
    """The checked JSON header of a ``.safetensors`` file (module doc); CheckpointError naming the file."""
    path = Path(path)
    head, size = read_prefix(path, what, 8, CheckpointError)
    if len(head) < 8:
        raise CheckpointError(f"{path}: {what} is truncated ({size} bytes, not even a header length)")
    n = int.from_bytes(head, "little")
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
        raise CheckpointError(f"{path}: {what} is truncated or not a safetensors file (header length {n}, "
                              f"file size {size})")
    raw, _ = read_prefix(path, what, 8 + n, CheckpointError)
    try:
        text = raw[8:].decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: {what} is not a safetensors file (its header is not UTF-8)") from None
    header = parse_json(text, path, f"{what} header", error=CheckpointError)
    if not isinstance(header, dict) or len(header) > MAX_TENSORS:
        raise CheckpointError(f"{path}: {what} header is not an object of at most {MAX_TENSORS} tensors")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: {what} metadata must map names to strings")
    spans = sorted(_entry(path, name, entry) for name, entry in header.items() if name != "__metadata__")
    at = 0
    for begin, end in spans:
        if begin != at:
            raise CheckpointError(f"{path}: {what} tensor data overlaps or leaves gaps (offset {begin}, expected {at})")
        at = end
    if at != size - 8 - n:
        raise CheckpointError(f"{path}: {what} holds {size - 8 - n} data bytes, its header describes {at}: "
                              "the file is truncated or was appended to")
    return header


def check_torch_file(path: str | Path, what: str = "torch file") -> None:
    """Refuse a ``.pth`` / ``.pt`` that is neither a zip archive nor a pickle stream, or a zip bomb (module doc)."""
    path = Path(path)
    head, _ = read_prefix(path, what, 4, CheckpointError)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                members = zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise CheckpointError(f"{path}: {what} is a damaged zip archive ({exc})") from None
        if len(members) > MAX_TENSORS:
            raise CheckpointError(f"{path}: {what} holds {len(members)} archive members (at most {MAX_TENSORS})")
        for m in members:
            if m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1 << 16):
                raise CheckpointError(f"{path}: {what} member {short(m.filename)} expands from {m.compress_size} to "
                                      f"{m.file_size} bytes: refused as a zip bomb")
        return
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return  # a legacy (pre-1.6) torch.save pickle stream: torch.load(weights_only=True) reads it safely
    raise CheckpointError(f"{path}: {what} is not a torch file (it starts with {short(head)}, neither a zip "
                          "archive nor a pickle stream); is it a text file or another format?")


def check_finite(tensors: Mapping[str, Tensor], path: str | Path) -> None:
    """CheckpointError naming the tensors of ``tensors`` that hold NaN or inf (floating-point ones only)."""
    bad = [name for name, t in tensors.items()
           if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"{path}: tensor {', '.join(bad[:3])}{more} holds NaN or inf values: the weights are "
                              "corrupt or training diverged")
