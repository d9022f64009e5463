"""Read a ``.caffemodel`` into plain layers and float32 tensors, checking everything a file can get wrong.

Nothing in the file is executed: it is parsed as data with the schema of :mod:`frcnn_trt.model.caffe_schema`
(a protobuf parse has no code paths of its own), and only the layers' names, types and blobs are kept.

Checks, each a one-line :class:`~frcnn_trt.errors.CheckpointError` naming the file (and the layer):

- the file exists, is not empty and is at most :data:`MAX_CAFFEMODEL_BYTES` (protobuf's 2 GiB message limit);
- it is not a text ``.prototxt``, an HDF5 ``.caffemodel.h5``, a zip (PyTorch ``.pth``) or a safetensors file;
- it parses as a ``NetParameter`` (a truncated or corrupt file does not) and holds layers;
- it does not use both layer lists (Caffe refuses such a net too);
- each blob has a shape (``shape`` or the legacy num/channels/height/width) of at most 32 axes
  (Caffe's ``kMaxBlobAxes``), non-negative dims and at most 2³¹ − 1 elements (Caffe's count limit), and
  exactly that many ``data`` (or ``double_data``) values, all finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf.message import DecodeError
from torch import Tensor

from frcnn_trt.errors import CheckpointError
from frcnn_trt.model.caffe_schema import V1_TYPES, caffe_messages

__all__ = ["MAX_CAFFEMODEL_BYTES", "CaffeLayer", "CaffeNet", "read_caffemodel"]

#: protobuf cannot parse a message of 2 GiB or more
MAX_CAFFEMODEL_BYTES = 2**31 - 1
_MAX_AXES = 32
_MAX_COUNT = 2**31 - 1


@dataclass(frozen=True)
class CaffeLayer:
    """One layer of the file: name, type ("Convolution", …), blobs (float32, the file's shapes)."""

    name: str
    type: str
    blobs: tuple[Tensor, ...]
    #: ``inner_product_param.transpose``: an InnerProduct weight stored (in, out) instead of (out, in)
    transpose: bool = False


@dataclass(frozen=True)
class CaffeNet:
    """A parsed ``.caffemodel``: its name, which layer list it used (``layer`` or legacy ``layers``), layers."""

    path: str
    name: str
    format: str
    layers: tuple[CaffeLayer, ...]


def _sniff(head: bytes) -> str | None:
    """What the file is instead of a binary caffemodel, from its first bytes (None: could be one)."""
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a .caffemodel.h5?); save the net as a binary .caffemodel"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a PyTorch .pth?); frcnn-trt loads .safetensors checkpoints directly"
    if head[8:10] in (b'{"', b"{}"):  # an 8-byte header length, then the JSON header
        return "a safetensors file; it is a checkpoint already, not a caffemodel"
    sample = head[:256]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample) and (b"{" in sample or b":" in sample):
        return "a text file (a .prototxt describes a net; its trained weights are in the binary .caffemodel)"
    return None


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path}: caffemodel does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file, not a caffemodel")
    if size > max_bytes:
        raise CheckpointError(f"{path}: {size} bytes, over the {max_bytes}-byte limit of a caffemodel")
    data = path.read_bytes()
    problem = _sniff(data[:4096])
    if problem is not None:
        raise CheckpointError(f"{path}: not a caffemodel: {problem}")
    return data


def _shape(blob: Any) -> tuple[int, ...] | None:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    legacy = ("num", "channels", "height", "width")
    if any(blob.HasField(f) for f in legacy):
        return tuple(int(getattr(blob, f)) for f in legacy)
    return None


def _blob_tensor(path: Path, layer: str, index: int, blob: Any) -> Tensor:
    where = f"{path}: layer {layer!r} blob {index}"
    shape = _shape(blob)
    if shape is None:
        raise CheckpointError(f"{where}: no shape (neither shape nor num/channels/height/width)")
    if len(shape) > _MAX_AXES or any(d < 0 for d in shape):
        raise CheckpointError(f"{where}: invalid shape {shape}")
    count = math.prod(shape)
    if count > _MAX_COUNT:
        raise CheckpointError(f"{where}: shape {shape} has {count} elements, over Caffe's limit {_MAX_COUNT}")
    values, kind = (blob.data, "data") if len(blob.data) or not len(blob.double_data) else (blob.double_data,
                                                                                             "double_data")
    if len(values) != count:
        raise CheckpointError(f"{where}: shape {shape} needs {count} values, the file holds {len(values)} "
                              f"({kind}); a net saved without weights, or a corrupt file")
    array = np.array(values, dtype=np.float32 if kind == "data" else np.float64).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise CheckpointError(f"{where}: holds NaN or infinite values (a diverged training run?)")
    return torch.from_numpy(array).reshape(shape)


def _layer(path: Path, raw: Any, v1: bool) -> CaffeLayer:
    kind = V1_TYPES.get(int(raw.type), f"V1 type {int(raw.type)}") if v1 else str(raw.type)
    name = str(raw.name)
    blobs = tuple(_blob_tensor(path, name, i, b) for i, b in enumerate(raw.blobs))
    transpose = raw.HasField("inner_product_param") and bool(raw.inner_product_param.transpose)
    return CaffeLayer(name=name, type=kind, blobs=blobs, transpose=transpose)


def read_caffemodel(path: str | Path, *, max_bytes: int = MAX_CAFFEMODEL_BYTES) -> CaffeNet:
    """Parse ``path`` (module doc for the checks); layers in file order, with their blobs as float32."""
    path = Path(path)
    data = _read_bytes(path, max_bytes)
    net = caffe_messages().NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt caffemodel (protobuf: {exc})") from None
    del data
    if len(net.layer) and len(net.layers):
        raise CheckpointError(f"{path}: uses both the 'layer' and the legacy 'layers' list (Caffe refuses "
                              "such a net too)")
    if not len(net.layer) and not len(net.layers):
        raise CheckpointError(f"{path}: not a caffemodel: no layers (a protobuf of another kind, or garbage)")
    v1 = not len(net.layer)
    layers = tuple(_layer(path, raw, v1) for raw in (net.layers if v1 else net.layer))
    return CaffeNet(path=str(path), name=str(net.name), format="layers" if v1 else "layer", layers=layers)
