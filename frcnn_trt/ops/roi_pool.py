"""RoI max pooling with py-faster-rcnn (Caffe ``ROIPooling``) semantics, as one unit.

The same op in every form it takes:

- **eager / autograd**: the custom op ``frcnn::roi_pool`` (``torch.library.custom_op``) runs
  ``torchvision.ops.roi_pool``'s kernels, which implement Caffe's ``roi_pooling_layer`` exactly;
- **ONNX**: under ``torch.onnx.export(..., dynamo=True, custom_translation_table=onnx_translation_table())``
  it becomes ONE node ``frcnn.RoIPool`` with attributes ``pooled_shape`` (ints), ``spatial_scale`` (float),
  ``plugin_namespace="frcnn"``, ``plugin_version="1"`` (what TensorRT's ONNX parser maps to a plugin);
- **ONNX Runtime**: :func:`to_onnxruntime` rewrites that node into the standard ``MaxRoiPool``, whose CPU
  kernel is bit-identical to torchvision's.

Semantics (caffe-fast-rcnn ``roi_pooling_layer.cpp``; arithmetic in the feature dtype, float32 for float32
features, as Caffe's ``Dtype``):

- roi start/end = ``round(x · spatial_scale)`` (half away from zero), roi size = ``max(end − start + 1, 1)``;
- bin size = size / pooled; bin i covers ``[floor(i·bin), ceil((i+1)·bin))`` + start, clipped to the map;
- an empty bin gives 0; otherwise the max over the bin.

Float32 quirk kept on purpose: ``ceil(pooled · float32(size / pooled))`` can exceed ``size`` (e.g. size 57,
pooled 7), so the last bin then reaches one cell past the roi end (still clipped to the map). Caffe,
torchvision and ONNX Runtime all do this; a TensorRT plugin must compute the bin size in float32 too.

Glossary: N images, C channels, H×W feature map, R RoIs, ph×pw pooled shape.
``rois`` is ``[R, 5]``: batch index, x1, y1, x2, y2 in image pixels (0-based, inclusive).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.roi_pool and its backward)
from torch import Tensor, nn

from frcnn_trt.errors import ExportError
from frcnn_trt.ops.checks import check_pooled_shape, check_roi_inputs

if TYPE_CHECKING:
    import onnx

__all__ = [
    "ONNX_DOMAIN",
    "ONNX_OP_TYPE",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "RoIPool",
    "onnx_translation_table",
    "register_onnx_schema",
    "roi_pool",
    "to_onnxruntime",
]

ONNX_DOMAIN = "frcnn"
ONNX_OP_TYPE = "RoIPool"
ONNX_DOMAIN_VERSION = 1
PLUGIN_NAMESPACE = "frcnn"
PLUGIN_VERSION = "1"
#: ONNX Runtime has MaxRoiPool up to this ai.onnx opset only.
MAX_ROI_POOL_MAX_OPSET = 21


# --------------------------------------------------------------------------------------------- eager op


@torch.library.custom_op("frcnn::roi_pool", mutates_args=())
def _roi_pool_op(features: Tensor, rois: Tensor, pooled_shape: Sequence[int], spatial_scale: float) -> Tensor:
    out, _argmax = torch.ops.torchvision.roi_pool(features, rois, spatial_scale, pooled_shape[0], pooled_shape[1])
    return out


@_roi_pool_op.register_fake
def _roi_pool_fake(features: Tensor, rois: Tensor, pooled_shape: Sequence[int], spatial_scale: float) -> Tensor:
    return features.new_empty((rois.shape[0], features.shape[1], pooled_shape[0], pooled_shape[1]))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    features, rois, pooled_shape, spatial_scale = inputs
    ctx.save_for_backward(features, rois)
    ctx.pooled_shape = (int(pooled_shape[0]), int(pooled_shape[1]))
    ctx.spatial_scale = float(spatial_scale)


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
    # The op has one output (what ONNX and TensorRT see), so the argmax is not kept from the forward:
    # recompute it (one more cheap roi_pool forward) and scatter with torchvision's backward kernel.
    # Like Caffe, no gradient flows to the RoI coordinates.
    features, rois = ctx.saved_tensors
    ph, pw = ctx.pooled_shape
    _, argmax = torch.ops.torchvision.roi_pool(features, rois, ctx.spatial_scale, ph, pw)
    n, c, h, w = features.shape
    grad_features = torch.ops.torchvision._roi_pool_backward(
        grad.contiguous(), rois, argmax, ctx.spatial_scale, ph, pw, n, c, h, w
    )
    return grad_features, None, None, None


_roi_pool_op.register_autograd(_backward, setup_context=_setup_context)
# Under CUDA autocast, pool in float32 (torchvision's own roi_pool does the same); torch >= 2.5.
if hasattr(torch.library, "register_autocast"):
    torch.library.register_autocast("frcnn::roi_pool", "cuda", torch.float32)


def roi_pool(features: Tensor, rois: Tensor, pooled_shape: Sequence[int], spatial_scale: float) -> Tensor:
    """Caffe RoI max pooling: ``features [N, C, H, W]``, ``rois [R, 5]`` → ``[R, C, ph, pw]``.

    ``rois`` rows are (batch index, x1, y1, x2, y2) in image pixels; ``spatial_scale`` maps image pixels to
    feature cells (1/16 for stride-16 nets). Differentiable w.r.t. ``features`` only.
    """
    ph, pw = check_pooled_shape(pooled_shape, "roi_pool")
    check_roi_inputs(features, rois, "roi_pool")
    return _roi_pool_op(features, rois, [ph, pw], float(spatial_scale))


class RoIPool(nn.Module):
    """:func:`roi_pool` as a module (py-faster-rcnn's ``roi_pool5`` layer)."""

    def __init__(self, pooled_shape: Sequence[int] | int, spatial_scale: float) -> None:
        super().__init__()
        self.pooled_shape = check_pooled_shape(pooled_shape, "RoIPool")
        self.spatial_scale = float(spatial_scale)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_pool(features, rois, self.pooled_shape, self.spatial_scale)

    def export_spec(self) -> dict[str, Any]:
        """What ``export.json`` records of the op (its ``roi_op`` section): the ONE custom node
        ``frcnn.RoIPool`` of ``detector.onnx`` and the TensorRT plugin it maps to."""
        return {"type": "RoIPool", "domain": ONNX_DOMAIN, "op_type": ONNX_OP_TYPE,
                "pooled_shape": list(self.pooled_shape), "spatial_scale": self.spatial_scale,
                "plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}

    def extra_repr(self) -> str:
        return f"pooled_shape={self.pooled_shape}, spatial_scale={self.spatial_scale}"


# --------------------------------------------------------------------------------------------- ONNX form


def _infer_roi_pool_shape(ctx: Any) -> None:
    import onnx

    features_type = ctx.get_input_type(0)
    rois_type = ctx.get_input_type(1)
    pooled = ctx.get_attribute("pooled_shape")
    if features_type is None or pooled is None:
        return
    ph, pw = list(pooled.ints)
    out = onnx.TypeProto()
    out.tensor_type.elem_type = features_type.tensor_type.elem_type
    dims = [onnx.TensorShapeProto.Dimension() for _ in range(4)]
    if rois_type is not None and rois_type.tensor_type.HasField("shape"):
        dims[0].CopyFrom(rois_type.tensor_type.shape.dim[0])
    if features_type.tensor_type.HasField("shape"):
        dims[1].CopyFrom(features_type.tensor_type.shape.dim[1])
    dims[2].dim_value = ph
    dims[3].dim_value = pw
    out.tensor_type.shape.dim.extend(dims)
    ctx.set_output_type(0, out)


def register_onnx_schema() -> None:
    """Register the ``frcnn.RoIPool`` (version 1) ONNX schema, so the checker and shape inference know it.

    Idempotent: a second call does nothing.
    """
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(ONNX_OP_TYPE, ONNX_DOMAIN):
        return
    attr = OpSchema.AttrType
    schema = OpSchema(
        ONNX_OP_TYPE,
        ONNX_DOMAIN,
        ONNX_DOMAIN_VERSION,
        doc=(
            "RoI max pooling with Caffe (py-faster-rcnn) semantics; same maths as ai.onnx MaxRoiPool. "
            "rois: [R, 5] (batch index, x1, y1, x2, y2) in input-image pixels. Output [R, C, ph, pw]."
        ),
        inputs=[
            OpSchema.FormalParameter("features", "T", "feature map [N, C, H, W]"),
            OpSchema.FormalParameter("rois", "T", "regions [R, 5]: batch index, x1, y1, x2, y2"),
        ],
        outputs=[OpSchema.FormalParameter("output", "T", "pooled features [R, C, ph, pw]")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(double)"], "float tensors")],
        attributes=[
            OpSchema.Attribute("pooled_shape", attr.INTS, "output bin grid (ph, pw)", required=True),
            OpSchema.Attribute("spatial_scale", attr.FLOAT, "image pixels → feature cells", required=True),
            OpSchema.Attribute("plugin_namespace", attr.STRING, "TensorRT plugin namespace", required=False),
            OpSchema.Attribute("plugin_version", attr.STRING, "TensorRT plugin version", required=False),
        ],
    )
    if hasattr(schema, "set_type_and_shape_inference_function"):
        schema.set_type_and_shape_inference_function(_infer_roi_pool_shape)
    onnx.defs.register_schema(schema)


def _translate_roi_pool(features: Any, rois: Any, pooled_shape: Sequence[int], spatial_scale: float) -> Any:
    import onnxscript

    frcnn_opset = onnxscript.values.Opset(ONNX_DOMAIN, ONNX_DOMAIN_VERSION)
    return frcnn_opset.RoIPool(
        features,
        rois,
        pooled_shape=[int(v) for v in pooled_shape],
        spatial_scale=float(spatial_scale),
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
    )


def onnx_translation_table() -> dict[Any, Any]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``.

    Registers the ONNX schema too (see :func:`register_onnx_schema`).
    """
    register_onnx_schema()
    return {torch.ops.frcnn.roi_pool.default: _translate_roi_pool}


# ------------------------------------------------------------------------------------ ONNX Runtime form


def _rewrite_nodes(nodes: Iterable[onnx.NodeProto]) -> int:
    """Rewrite ``frcnn.RoIPool`` nodes (and those in their subgraphs) into ``MaxRoiPool``; count them."""
    import onnx

    count = 0
    for node in nodes:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                count += _rewrite_nodes(attribute.g.node)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                count += sum(_rewrite_nodes(g.node) for g in attribute.graphs)
        if node.domain != ONNX_DOMAIN or node.op_type != ONNX_OP_TYPE:
            continue
        kept = [a for a in node.attribute if a.name in ("pooled_shape", "spatial_scale")]
        if not any(a.name == "pooled_shape" for a in kept):
            raise ExportError(f"node {node.name!r} ({ONNX_DOMAIN}.{ONNX_OP_TYPE}) lacks pooled_shape")
        node.op_type = "MaxRoiPool"
        node.domain = ""
        del node.attribute[:]
        node.attribute.extend(kept)
        count += 1
    return count


def _fix_opsets(opset_import: Any, where: str) -> None:
    """Check the ai.onnx opset allows MaxRoiPool in ORT and drop the ``frcnn`` import."""
    default = [o for o in opset_import if o.domain in ("", "ai.onnx")]
    if not default:
        raise ExportError(f"{where} has no ai.onnx opset import; cannot place MaxRoiPool")
    if default[0].version > MAX_ROI_POOL_MAX_OPSET:
        raise ExportError(
            f"{where} uses ai.onnx opset {default[0].version}; ONNX Runtime's MaxRoiPool needs opset "
            f"<= {MAX_ROI_POOL_MAX_OPSET}: export with opset_version={MAX_ROI_POOL_MAX_OPSET} or lower"
        )


def to_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` whose ``frcnn.RoIPool`` nodes are standard ``MaxRoiPool`` nodes.

    ONNX Runtime's ``MaxRoiPool`` CPU kernel has Caffe semantics and is bit-identical to
    ``torchvision.ops.roi_pool``. A rewrite (rather than a model-local function ``frcnn.RoIPool``) leaves a
    plain standard-ops model that any ONNX tool can load without our schema. ``MaxRoiPool`` exists in ORT
    for ai.onnx opset ≤ 21: a model with a newer opset is refused (``ExportError``).
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    if _rewrite_nodes(out.graph.node):
        _fix_opsets(out.opset_import, "model")
    for function in out.functions:
        if _rewrite_nodes(function.node):
            _fix_opsets(function.opset_import, f"function {function.name!r}")
            _fix_opsets(out.opset_import, "model")
    if not _uses_domain(out, ONNX_DOMAIN):
        kept = [o for o in out.opset_import if o.domain != ONNX_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(kept)
        for function in out.functions:
            if not any(_node_uses(n, ONNX_DOMAIN) for n in function.node):
                kept_f = [o for o in function.opset_import if o.domain != ONNX_DOMAIN]
                del function.opset_import[:]
                function.opset_import.extend(kept_f)
    return out


def _node_uses(node: onnx.NodeProto, domain: str) -> bool:
    import onnx

    if node.domain == domain:
        return True
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH and any(_node_uses(n, domain) for n in attribute.g.node):
            return True
        if attribute.type == onnx.AttributeProto.GRAPHS and any(
            _node_uses(n, domain) for g in attribute.graphs for n in g.node
        ):
            return True
    return False


def _uses_domain(model: onnx.ModelProto, domain: str) -> bool:
    return any(_node_uses(n, domain) for n in model.graph.node) or any(
        f.domain == domain or any(_node_uses(n, domain) for n in f.node) for f in model.functions
    )
