"""Box maths with py-faster-rcnn's +1 pixel geometry (docs/REFERENCE.md §2, §3, §5).

Boxes are float ``[..., 4]`` rows ``x1, y1, x2, y2`` in 0-based **inclusive** pixels, so a box is
``x2 - x1 + 1`` wide. Every function is vectorised torch and runs on its inputs' device; leading batch
dimensions broadcast where the docstring says so.

Glossary of shape letters:

- ``R``: boxes (RoIs, anchors, detections); ``Q``: query boxes; ``...``: any leading batch dimensions.
- ``K``: boxes per row in the py-faster-rcnn ``[R, 4K]`` layout (one box per class; columns ``4k..4k+3``).
- ``A``: anchors per feature-map location.

Names follow py-faster-rcnn (``generate_anchors``, ``bbox_transform``, ``bbox_transform_inv``,
``clip_boxes``, ``bbox_overlaps``, ``nms``) so a reader of the original finds every piece.

NMS is ``torchvision.ops.nms`` on boxes shifted by +1 on ``x2, y2``: torchvision's ``(x2 - x1)`` areas then
equal the +1 areas and its test ``IoU > thresh`` (strict, like py-faster-rcnn's default GPU NMS and
``py_cpu_nms``) suppresses the same boxes. Precision: the IoU is evaluated in float64 (the +1 shift and the
per-group offset of :func:`batched_nms` are then exact for float32 boxes), and the threshold is rounded
*up* to the nearest float32 — torchvision's CUDA kernel reads the threshold as a float32 anyway, and doing
the same on CPU makes both devices decide identically. An IoU equal to the threshold in exact arithmetic
(e.g. 140/200 at 0.7) is therefore kept, as in the original GPU NMS (float32 IoU against a float32
threshold). Implementations can disagree only for IoUs within ~1e-7 of the threshold.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from frcnn_trt.errors import ModelError

__all__ = [
    "batched_nms",
    "bbox_overlaps",
    "bbox_transform",
    "bbox_transform_inv",
    "clip_boxes",
    "generate_anchors",
    "nms",
]


def _check_last_dim(name: str, t: Tensor, multiple: int = 4) -> None:
    if t.dim() == 0 or t.shape[-1] % multiple != 0 or (multiple == 4 and t.shape[-1] == 0):
        raise ModelError(f"{name} must have a last dimension that is a positive multiple of {multiple}, "
                         f"got shape {tuple(t.shape)}")


# ----------------------------------------------------------------------------------------------------------
# Anchors


def generate_anchors(
    base_size: int = 16,
    ratios: Sequence[float] = (0.5, 1, 2),
    scales: Sequence[float] = (8, 16, 32),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """py-faster-rcnn's reference anchors: ``Tensor[A, 4]`` with ``A = len(ratios) * len(scales)``.

    Base anchor ``[0, 0, base_size - 1, base_size - 1]``; for each ratio ``r`` (ratio-major):
    ``ws = round(sqrt(base_size² / r))``, ``hs = round(ws · r)`` (round half to even, as ``np.round``),
    then for each scale ``s`` (scale-minor) the box of size ``(ws·s, hs·s)`` about the base centre.
    The defaults give docs/REFERENCE.md §2's nine anchors exactly. Computed in float64, returned in ``dtype``.
    """
    if base_size <= 0 or len(ratios) == 0 or len(scales) == 0:
        raise ModelError(f"generate_anchors needs base_size > 0 and non-empty ratios/scales, got "
                         f"base_size={base_size}, ratios={tuple(ratios)}, scales={tuple(scales)}")
    f64 = torch.float64
    r = torch.tensor([float(x) for x in ratios], dtype=f64)
    s = torch.tensor([float(x) for x in scales], dtype=f64)
    if bool((r <= 0).any()) or bool((s <= 0).any()):
        raise ModelError(f"anchor ratios and scales must be > 0, got ratios={tuple(ratios)}, "
                         f"scales={tuple(scales)}")
    size = float(base_size) * float(base_size)
    ctr = 0.5 * (base_size - 1)  # _whctrs of [0, 0, base-1, base-1]
    ws = torch.round(torch.sqrt(size / r))  # torch.round is half-to-even, like np.round
    hs = torch.round(ws * r)
    ws_all = (ws[:, None] * s[None, :]).reshape(-1)  # ratio-major, scale-minor
    hs_all = (hs[:, None] * s[None, :]).reshape(-1)
    anchors = torch.stack(
        [ctr - 0.5 * (ws_all - 1), ctr - 0.5 * (hs_all - 1),
         ctr + 0.5 * (ws_all - 1), ctr + 0.5 * (hs_all - 1)],
        dim=1,
    )
    return anchors.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------------
# Box coding


def bbox_transform(ex_rois: Tensor, gt_rois: Tensor) -> Tensor:
    """Encode ``gt_rois`` relative to ``ex_rois``: ``[..., 4]`` × ``[..., 4]`` → deltas ``[..., 4]``.

    ``w = x2 - x1 + 1``, ``cx = x1 + 0.5·w``; ``dx = (gcx - ecx) / ew``, ``dy`` likewise,
    ``dw = log(gw / ew)``, ``dh = log(gh / eh)``. Leading dimensions broadcast; computed in the promoted
    dtype of the inputs.
    """
    _check_last_dim("ex_rois", ex_rois)
    _check_last_dim("gt_rois", gt_rois)
    if ex_rois.shape[-1] != 4 or gt_rois.shape[-1] != 4:
        raise ModelError(f"bbox_transform takes [..., 4] boxes, got {tuple(ex_rois.shape)} and "
                         f"{tuple(gt_rois.shape)}")
    ex_widths = ex_rois[..., 2] - ex_rois[..., 0] + 1.0
    ex_heights = ex_rois[..., 3] - ex_rois[..., 1] + 1.0
    ex_ctr_x = ex_rois[..., 0] + 0.5 * ex_widths
    ex_ctr_y = ex_rois[..., 1] + 0.5 * ex_heights

    gt_widths = gt_rois[..., 2] - gt_rois[..., 0] + 1.0
    gt_heights = gt_rois[..., 3] - gt_rois[..., 1] + 1.0
    gt_ctr_x = gt_rois[..., 0] + 0.5 * gt_widths
    gt_ctr_y = gt_rois[..., 1] + 0.5 * gt_heights

    dx = (gt_ctr_x - ex_ctr_x) / ex_widths
    dy = (gt_ctr_y - ex_ctr_y) / ex_heights
    dw = torch.log(gt_widths / ex_widths)
    dh = torch.log(gt_heights / ex_heights)
    return torch.stack([dx, dy, dw, dh], dim=-1)


def bbox_transform_inv(boxes: Tensor, deltas: Tensor, *, clamp: float | None = None) -> Tensor:
    """Decode ``deltas [..., 4K]`` against ``boxes [..., 4]`` → boxes ``[..., 4K]`` (dtype of ``deltas``).

    As py-faster-rcnn: boxes are cast to ``deltas.dtype``; ``x1 = cx - 0.5·pw`` and **``x2 = cx + 0.5·pw``**
    (no −1, so ``decode(encode(g)) == g + [0, 0, 1, 1]``). ``dw``/``dh`` are **not** clamped by default:
    a large delta overflows ``exp`` to ``inf`` exactly like the original (``clip_boxes`` then pins it to the
    image border). ``clamp`` (e.g. ``log(1000 / 16)``, torchvision's value) caps ``dw``/``dh`` from above
    as a documented departure. Leading dimensions of ``boxes`` and ``deltas`` broadcast.
    """
    _check_last_dim("boxes", boxes)
    _check_last_dim("deltas", deltas)
    if boxes.shape[-1] != 4:
        raise ModelError(f"bbox_transform_inv takes boxes [..., 4], got {tuple(boxes.shape)}")
    boxes = boxes.to(deltas.dtype)
    widths = (boxes[..., 2] - boxes[..., 0] + 1.0).unsqueeze(-1)
    heights = (boxes[..., 3] - boxes[..., 1] + 1.0).unsqueeze(-1)
    ctr_x = boxes[..., 0].unsqueeze(-1) + 0.5 * widths
    ctr_y = boxes[..., 1].unsqueeze(-1) + 0.5 * heights

    dx = deltas[..., 0::4]
    dy = deltas[..., 1::4]
    dw = deltas[..., 2::4]
    dh = deltas[..., 3::4]
    if clamp is not None:
        dw = dw.clamp(max=clamp)
        dh = dh.clamp(max=clamp)

    # Same operation order as the original (no fused multiply-add), so float32 results match it.
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights

    out = torch.stack(
        [pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
         pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h],
        dim=-1,
    )  # [..., K, 4]
    return out.reshape(*out.shape[:-2], out.shape[-2] * 4)


def clip_boxes(boxes: Tensor, im_shape: Tensor | Sequence[float]) -> Tensor:
    """Clip ``boxes [..., 4K]``: x to ``[0, W - 1]``, y to ``[0, H - 1]`` (a new tensor, same dtype).

    ``im_shape`` is one ``(H, W)`` pair (numbers or a ``Tensor[2]``) for all boxes, or a ``Tensor[..., 2]``
    of per-row ``(H, W)`` that broadcasts against ``boxes.shape[:-1]`` (e.g. ``im_info[:, None, :2]`` for
    boxes ``[N, R, 4K]``; extra columns such as ``im_info``'s scale are not allowed — slice them off).
    NaN stays NaN; ``±inf`` is pinned to the border, as ``np.maximum(np.minimum(...))`` does.
    """
    _check_last_dim("boxes", boxes)
    shape_t = torch.as_tensor(im_shape, device=boxes.device)
    if shape_t.dim() == 0 or shape_t.shape[-1] != 2:
        raise ModelError(f"clip_boxes needs im_shape (H, W) or [..., 2], got shape {tuple(shape_t.shape)}")
    shape_t = shape_t.to(boxes.dtype)
    x_max = (shape_t[..., 1] - 1)[..., None, None]  # [..., 1, 1] against [..., K, 2]
    y_max = (shape_t[..., 0] - 1)[..., None, None]
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    b = boxes.reshape(*boxes.shape[:-1], boxes.shape[-1] // 4, 4)
    x = torch.maximum(torch.minimum(b[..., 0::2], x_max), zero)
    y = torch.maximum(torch.minimum(b[..., 1::2], y_max), zero)
    out = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
    if out.shape != b.shape:
        raise ModelError(f"clip_boxes: im_shape {tuple(shape_t.shape)} does not broadcast against boxes "
                         f"{tuple(boxes.shape)}")
    return out.reshape(boxes.shape)


# ----------------------------------------------------------------------------------------------------------
# Overlaps and NMS


def bbox_overlaps(boxes: Tensor, query_boxes: Tensor) -> Tensor:
    """IoU with +1 geometry: ``boxes [..., R, 4]`` × ``query_boxes [..., Q, 4]`` → ``[..., R, Q]``.

    As ``lib/utils/bbox.pyx``: ``iw = min(x2) - max(x1) + 1`` (0 if ≤ 0), likewise ``ih``; union =
    ``area_b + area_q - iw·ih`` with +1 areas. Computed in the promoted input dtype (py-faster-rcnn uses
    float64: pass float64 boxes to get its numbers bit for bit). Leading dimensions broadcast.
    """
    _check_last_dim("boxes", boxes)
    _check_last_dim("query_boxes", query_boxes)
    if boxes.shape[-1] != 4 or query_boxes.shape[-1] != 4 or boxes.dim() < 2 or query_boxes.dim() < 2:
        raise ModelError(f"bbox_overlaps takes [..., R, 4] and [..., Q, 4], got {tuple(boxes.shape)} and "
                         f"{tuple(query_boxes.shape)}")
    dtype = torch.promote_types(boxes.dtype, query_boxes.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    b = boxes.to(dtype).unsqueeze(-2)  # [..., R, 1, 4]
    q = query_boxes.to(dtype).unsqueeze(-3)  # [..., 1, Q, 4]
    iw = (torch.minimum(b[..., 2], q[..., 2]) - torch.maximum(b[..., 0], q[..., 0]) + 1).clamp_min_(0)
    ih = (torch.minimum(b[..., 3], q[..., 3]) - torch.maximum(b[..., 1], q[..., 1]) + 1).clamp_min_(0)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    area_q = (q[..., 2] - q[..., 0] + 1) * (q[..., 3] - q[..., 1] + 1)
    inter = iw * ih
    # inter > 0 implies both boxes have positive size, so union > 0 there; where inter == 0 the clamp only
    # avoids 0/0 for degenerate boxes and the result is 0, as the original's "iw > 0 and ih > 0" test.
    union = (area_b + area_q - inter).clamp_min_(torch.finfo(dtype).tiny)
    return inter / union


def _threshold_f32_up(thresh: float) -> float:
    """The smallest float32 value ≥ ``thresh`` (``thresh`` itself when float32 represents it)."""
    t32 = torch.tensor(float(thresh), dtype=torch.float32)
    if float(t32) < float(thresh):
        t32 = torch.nextafter(t32, torch.tensor(math.inf, dtype=torch.float32))
    return float(t32)


def _nms_op() -> Any:
    """``torch.ops.torchvision.nms``, the kernel ``torchvision.ops.nms`` runs. Until torchvision is imported
    anyway, its C++ library is loaded alone: ``import torchvision`` imports ``torch._dynamo``, ~3 s of a
    one-image ``detect`` with ONNX Runtime. Falls back to importing torchvision."""
    if not hasattr(torch.ops.torchvision, "nms") and "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        libs = [Path(r) / f"{name}{suffix}" for r in roots for name in ("_C_stable", "_C")
                for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        lib = next((p for p in libs if p.is_file()), None)
        if lib is not None:
            with contextlib.suppress(OSError, RuntimeError):  # then the import below says what is wrong
                torch.ops.load_library(str(lib))
    if not hasattr(torch.ops.torchvision, "nms"):
        import torchvision  # noqa: F401  (registers its ops)
    return torch.ops.torchvision.nms


def _nms_in_order(boxes: Tensor, thresh: float, idxs: Tensor | None = None) -> Tensor:
    """NMS of ``boxes [R, 4]`` already sorted by priority (row 0 first); optional groups ``idxs [R]``.

    Returns the kept row indices, ascending. Ties cannot reorder anything: torchvision gets strictly
    decreasing surrogate scores ``-row``.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.to(torch.float64)
    b = torch.cat([b[:, :2], b[:, 2:] + 1.0], dim=1)  # +1 geometry -> torchvision's (x2 - x1) areas
    if idxs is not None:
        # Offset trick (torchvision batched_nms): groups are moved apart so they cannot overlap. In float64
        # the offset is exact for float32 coordinates, so the IoU inside a group is unchanged.
        lo = b.min()
        span = b.max() - lo + 1.0
        b = b - lo + idxs.to(torch.float64)[:, None] * span
    surrogate = -torch.arange(n, dtype=torch.float64, device=boxes.device)
    keep = _nms_op()(b, surrogate, _threshold_f32_up(thresh))
    return torch.sort(keep).values


def _stable_desc_order(scores: Tensor) -> Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


def _check_nms_inputs(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ModelError(f"nms takes boxes [R, 4] and scores [R], got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}")


def nms(boxes: Tensor, scores: Tensor, thresh: float) -> Tensor:
    """py-faster-rcnn NMS (GPU / ``py_cpu_nms`` semantics): ``boxes [R, 4]``, ``scores [R]`` → ``keep [R']``.

    Boxes are visited by descending score; a box whose +1-geometry IoU with a kept box is **> thresh** is
    suppressed (IoU == thresh is kept). Returns indices into ``boxes`` sorted by descending score; equal
    scores are visited lowest index first (the original's ``argsort()[::-1]`` order of ties is unspecified).
    Boxes must be finite.
    """
    _check_nms_inputs(boxes, scores)
    order = _stable_desc_order(scores)
    return order[_nms_in_order(boxes[order], thresh)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, thresh: float) -> Tensor:
    """:func:`nms` run independently within each group ``idxs [R]`` (class or image index), in one call.

    Returns kept indices sorted by descending score (ties: lowest index first), all groups interleaved.
    """
    _check_nms_inputs(boxes, scores)
    if idxs.shape != scores.shape:
        raise ModelError(f"batched_nms idxs must be [R] like scores, got {tuple(idxs.shape)}")
    order = _stable_desc_order(scores)
    return order[_nms_in_order(boxes[order], thresh, idxs[order])]
