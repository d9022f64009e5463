"""The part of Caffe's protobuf schema a ``.caffemodel`` needs, built at run time (no ``protoc`` step).

A ``.caffemodel`` is a binary ``NetParameter``: the training net's layers, each with its learned ``blobs``
(weights first, then bias). Caffe wrote two layer lists over its life, and both are read:

- ``layer`` (field 100): ``LayerParameter`` with a string ``type`` ("Convolution", "InnerProduct", …) —
  what caffe-fast-rcnn (py-faster-rcnn's fork) writes;
- ``layers`` (field 2): the legacy ``V1LayerParameter`` with an enum ``type`` (``V1_TYPES``), found in older
  ImageNet models.

A ``BlobProto`` gives its shape as ``shape`` (a ``BlobShape``) or, in old files, as the legacy
``num``/``channels``/``height``/``width``; its values as ``data`` (float32) or ``double_data``.

Only the fields used here are declared, under Caffe's own field numbers; every other field of a real file
(layer parameters, ``phase``, ``include`` rules, …) is skipped by the parser as an unknown field. The messages
live in a private descriptor pool (package ``frcnn_trt.caffe``), so they clash with nothing else loaded.
The V1 ``type`` is declared ``int32`` (same wire encoding as the enum) so an unknown value never fails a parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["V1_TYPES", "CaffeMessages", "caffe_messages"]

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "frcnn_trt.caffe"

#: ``V1LayerParameter.LayerType`` values → the layer type names of ``LayerParameter`` (Caffe's schema)
V1_TYPES: dict[int, str] = {
    0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
    7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col", 12: "ImageData",
    13: "InfogainLoss", 14: "InnerProduct", 15: "LRN", 16: "MultinomialLogisticLoss", 17: "Pooling",
    18: "ReLU", 19: "Sigmoid", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 23: "TanH",
    24: "WindowData", 25: "Eltwise", 26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss",
    29: "MemoryData", 30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN",
    35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}

# (message, [(field name, number, type, label, message type, packed)]); numbers are Caffe's own.
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str, bool]]]] = [
    ("BlobShape", [("dim", 1, _F.TYPE_INT64, _REP, "", True)]),
    ("BlobProto", [
        ("num", 1, _F.TYPE_INT32, _OPT, "", False),
        ("channels", 2, _F.TYPE_INT32, _OPT, "", False),
        ("height", 3, _F.TYPE_INT32, _OPT, "", False),
        ("width", 4, _F.TYPE_INT32, _OPT, "", False),
        ("data", 5, _F.TYPE_FLOAT, _REP, "", True),
        ("shape", 7, _F.TYPE_MESSAGE, _OPT, "BlobShape", False),
        ("double_data", 8, _F.TYPE_DOUBLE, _REP, "", True),
    ]),
    ("InnerProductParameter", [("transpose", 6, _F.TYPE_BOOL, _OPT, "", False)]),
    ("LayerParameter", [
        ("name", 1, _F.TYPE_STRING, _OPT, "", False),
        ("type", 2, _F.TYPE_STRING, _OPT, "", False),
        ("bottom", 3, _F.TYPE_STRING, _REP, "", False),
        ("top", 4, _F.TYPE_STRING, _REP, "", False),
        ("blobs", 7, _F.TYPE_MESSAGE, _REP, "BlobProto", False),
        ("inner_product_param", 117, _F.TYPE_MESSAGE, _OPT, "InnerProductParameter", False),
    ]),
    ("V1LayerParameter", [
        ("bottom", 2, _F.TYPE_STRING, _REP, "", False),
        ("top", 3, _F.TYPE_STRING, _REP, "", False),
        ("name", 4, _F.TYPE_STRING, _OPT, "", False),
        ("type", 5, _F.TYPE_INT32, _OPT, "", False),
        ("blobs", 6, _F.TYPE_MESSAGE, _REP, "BlobProto", False),
        ("inner_product_param", 17, _F.TYPE_MESSAGE, _OPT, "InnerProductParameter", False),
    ]),
    ("NetParameter", [
        ("name", 1, _F.TYPE_STRING, _OPT, "", False),
        ("layers", 2, _F.TYPE_MESSAGE, _REP, "V1LayerParameter", False),
        ("input", 3, _F.TYPE_STRING, _REP, "", False),
        ("layer", 100, _F.TYPE_MESSAGE, _REP, "LayerParameter", False),
    ]),
]


@dataclass(frozen=True)
class CaffeMessages:
    """The generated message classes (use them like protoc's: ``NetParameter()``, ``.ParseFromString``)."""

    NetParameter: Any
    LayerParameter: Any
    V1LayerParameter: Any
    BlobProto: Any
    BlobShape: Any
    InnerProductParameter: Any


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="frcnn_trt_caffe.proto", package=_PACKAGE, syntax="proto2")
    for message_name, fields in _MESSAGES:
        message = proto.message_type.add(name=message_name)
        for name, number, ftype, label, type_name, packed in fields:
            field = message.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
            if packed:
                field.options.packed = True
    return proto


@cache
def caffe_messages() -> CaffeMessages:
    """Build the schema once (a private pool) and return its message classes."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    classes = {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
               for name, _ in _MESSAGES}
    return CaffeMessages(**classes)
