"""Parity of an export against the torch model it came from, on a few images.

Glossary: ``R`` RoIs, ``K`` classes including background, ``D`` detections of one image.

For each image, both backends run the whole detector (:meth:`Detector.forward`) from the same blob:

- **graph outputs**: max abs error of ``features``, ``rpn_cls_prob``, ``rpn_bbox_pred`` (same blob) and of
  ``cls_prob``, ``bbox_pred`` (the export's detector fed the *torch* features and RoIs, so each graph is
  measured on identical inputs);
- **detections**: each backend's own end-to-end detections; a torch detection is matched by the
  highest-scoring unmatched export detection of the same class with IoU ≥ ``iou_thresh`` (+1 geometry).
  Reported: the fraction of torch detections matched (recall), the export detections left unmatched, and
  the max box-coordinate and score error over matched pairs.

An FP16 export runs its float16 graphs here against the float32 torch model, so the same numbers are the
FP16-vs-FP32 report; :func:`ort_compute_precision` says what ONNX Runtime actually computed in float16
(its CPU provider has no float16 Conv/Gemm kernels and inserts float32 casts around them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn_trt.boxes import bbox_overlaps
from frcnn_trt.engines.detector import Detector, ImageDetections
from frcnn_trt.ops.roi_pool import to_onnxruntime

__all__ = ["compare_detections", "ort_compute_precision", "parity_report", "synthetic_images"]

_FLOAT16_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


def synthetic_images(count: int = 3, seed: int = 0,
                     sizes: Sequence[tuple[int, int]] = ((375, 500), (500, 333), (300, 460))) -> list[np.ndarray]:
    """Deterministic BGR uint8 test images: smooth gradients, noise and a few solid rectangles."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([(xx / w) * 255, (yy / h) * 255, ((xx + yy) / (h + w)) * 255], axis=2)
        img = 0.6 * base + rng.normal(0, 20, (h, w, 3)).astype(np.float32) + 40
        for _ in range(4):
            bw, bh = rng.integers(w // 8, w // 2), rng.integers(h // 8, h // 2)
            x0, y0 = rng.integers(0, w - bw), rng.integers(0, h - bh)
            img[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 256, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def compare_detections(ref: ImageDetections, other: ImageDetections, iou_thresh: float = 0.9) -> dict[str, Any]:
    """Greedy same-class matching of ``other`` to ``ref`` (``ref`` in descending score order)."""
    n_ref, n_other = len(ref), len(other)
    matched = 0
    box_err = 0.0
    score_err = 0.0
    if n_ref and n_other:
        iou = bbox_overlaps(torch.from_numpy(ref.boxes).double(), torch.from_numpy(other.boxes).double())
        same = torch.from_numpy(ref.labels)[:, None] == torch.from_numpy(other.labels)[None, :]
        ok = (iou >= iou_thresh) & same
        taken = torch.zeros(n_other, dtype=torch.bool)
        other_scores = torch.from_numpy(other.scores).double()
        for i in np.argsort(-ref.scores, kind="stable").tolist():  # ≤ 100 detections per image
            cand = ok[i] & ~taken
            if not bool(cand.any()):
                continue
            j = int(torch.where(cand, other_scores, torch.full_like(other_scores, -1.0)).argmax())
            taken[j] = True
            matched += 1
            box_err = max(box_err, float(np.abs(ref.boxes[i] - other.boxes[j]).max()))
            score_err = max(score_err, abs(float(ref.scores[i]) - float(other.scores[j])))
    return {"reference": n_ref, "other": n_other, "matched": matched, "unmatched_other": n_other - matched,
            "max_box_error": box_err, "max_score_error": score_err}


def parity_report(
    reference: Detector,
    candidate: Detector,
    images: Sequence[np.ndarray],
    *,
    iou_thresh: float = 0.9,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compare ``candidate`` (an export's backend) with ``reference`` (torch) on ``images`` (see module doc)."""
    errs = {k: 0.0 for k in ("features", "rpn_cls_prob", "rpn_bbox_pred", "cls_prob", "bbox_pred")}
    totals = {"reference": 0, "other": 0, "matched": 0, "unmatched_other": 0}
    box_err = score_err = 0.0
    per_image = []
    for i, image in enumerate(images):
        ref = reference.forward([image])
        cand = candidate.forward([image])
        errs["features"] = max(errs["features"], _max_abs(ref.features, cand.features))
        errs["rpn_cls_prob"] = max(errs["rpn_cls_prob"], _max_abs(ref.rpn_cls_prob, cand.rpn_cls_prob))
        errs["rpn_bbox_pred"] = max(errs["rpn_bbox_pred"], _max_abs(ref.rpn_bbox_pred, cand.rpn_bbox_pred))
        if ref.rois.shape[0] > 0:
            feats = ref.features.to(device=candidate.backend.device, dtype=cand.features.dtype)
            c_prob, c_bbox = candidate.backend.run_detector(feats, ref.rois.to(candidate.backend.device))
            errs["cls_prob"] = max(errs["cls_prob"], _max_abs(ref.cls_prob, c_prob))
            errs["bbox_pred"] = max(errs["bbox_pred"], _max_abs(ref.bbox_pred, c_bbox))
        m = compare_detections(ref.detections[0], cand.detections[0], iou_thresh)
        for k in totals:
            totals[k] += m[k]
        box_err = max(box_err, m["max_box_error"])
        score_err = max(score_err, m["max_score_error"])
        per_image.append({"image": names[i] if names else f"synthetic_{i}",
                          "size": [int(image.shape[0]), int(image.shape[1])],
                          "proposals": [int(ref.rois.shape[0]), int(cand.rois.shape[0])], **m})
    recall = totals["matched"] / totals["reference"] if totals["reference"] else 1.0
    return {
        "reference": reference.describe(),
        "candidate": candidate.describe(),
        "images": len(images),
        "max_abs_error": errs,
        "detections": {**totals, "iou_thresh": iou_thresh, "matched_fraction": recall,
                       "max_box_error": box_err, "max_score_error": score_err,
                       "conf_thresh": reference.conf_thresh},
        "per_image": per_image,
    }


def ort_compute_precision(model_path: str | Path, providers: Sequence[Any] = ("CPUExecutionProvider",),
                          rewrite: bool = False) -> dict[str, Any]:
    """What ONNX Runtime computes after its graph optimisations: the heavy nodes (Conv, Gemm, MatMul and
    their fused forms) counted by the element type of their weight. Returns ``{"float16": n, "float32": m,
    "provider": ...}``."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(model_path))
    payload = (to_onnxruntime(proto) if rewrite else proto).SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(payload, so, providers=list(providers))
        optimized = onnx.load(so.optimized_model_filepath)
    types: dict[str, int] = {t.name: int(t.data_type) for t in optimized.graph.initializer}
    names = {int(onnx.TensorProto.FLOAT16): "float16", int(onnx.TensorProto.FLOAT): "float32"}
    counts = {"float16": 0, "float32": 0, "other": 0}
    for node in optimized.graph.node:
        if node.op_type in _FLOAT16_OPS and len(node.input) > 1:
            key = names.get(types.get(node.input[1], -1), "other")
            counts[key] += 1
    return {**counts, "provider": session.get_providers()[0]}
