"""The detector every backend shares: py-faster-rcnn's ``im_detect`` + ``test_net`` tail, and ``rpn_generate``.

Glossary: ``N`` images per call, ``H × W`` an original image, ``s`` its scale, ``M = H'·W'·A`` anchors,
``R`` RoIs over the batch (``[R, 5]``: image index, x1, y1, x2, y2 in blob pixels), ``K`` classes including
background, ``D`` detections of one image, ``P`` proposals of one image.

Per batch of BGR uint8 images (docs/REFERENCE.md §7, §11):

1. **preprocess**: scale rule (shorter side to ``target_size`` unless the longer passes ``max_size``), mean
   subtraction before the cv2-exact bilinear resize, zero-padded NCHW blob (:func:`preprocess_images`);
2. **rpn**: ``backend.run_rpn(blob)``;
3. **proposals**: the ProposalLayer (decode, clip, min size, top-k, NMS 0.7, top-k), shared torch code, with
   TEST settings 6000 / 300 for detection and −1 / 2000 for :meth:`Detector.propose` (alt-opt's
   ``rpn_generate``);
4. **detector**: ``backend.run_detector(features, rois)``;
5. **postprocess**: rois / s, decode the raw deltas, clip to the original image, per-class score > thresh
   (strict), NMS 0.3, keep scores ≥ the 100th best per image.

Each image comes back as one :class:`~frcnn_trt.engines.results.ImageDetections` (proposals: without labels);
many images at a time go through :mod:`frcnn_trt.engines.runner`.

Timings are wall-clock per phase with the device synchronised before each clock read (GPU-honest).
Batches of N > 1 are zero-padded to the largest image (as py-faster-rcnn's training blobs), which can move
features near the padded borders slightly; py-faster-rcnn tests one image at a time (``batch_size=1``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from frcnn_trt.anchors import AnchorGenerator, AnchorSettings
from frcnn_trt.boxes import generate_anchors
from frcnn_trt.config import Config, from_dict
from frcnn_trt.data.blob import preprocess_images
from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.export_format import ExportInfo, load_export
from frcnn_trt.engines.protocol import Backend
from frcnn_trt.engines.results import ImageDetections
from frcnn_trt.engines.selection import open_backend
from frcnn_trt.engines.torch_backend import TorchBackend
from frcnn_trt.errors import BackendError, ModelError
from frcnn_trt.postprocess import batched_detections_from_scores, im_detect_postprocess
from frcnn_trt.proposals import ProposalLayer, ProposalSettings

__all__ = ["Detector", "DetectorRun", "ImageDetections", "InferenceSettings", "PhaseTimes", "Task"]

#: what one call does to a batch: detect objects, or only propose boxes (``rpn_generate``)
Task = Literal["detect", "propose"]

log = logging.getLogger("frcnn_trt.engines")


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class InferenceSettings:
    """Everything besides the two networks: preprocessing, anchors, proposal and test settings."""

    class_names: tuple[str, ...]
    pixel_means: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)
    target_size: int = 600
    max_size: int = 1000
    feat_stride: int = 16
    anchor_scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n: int = 6000
    rpn_post_nms_top_n: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 16.0
    generate_pre_nms_top_n: int = -1
    generate_post_nms_top_n: int = 2000
    score_thresh: float = 0.05
    nms_thresh: float = 0.3
    max_per_image: int = 100
    bbox_reg: bool = True

    @classmethod
    def from_config(cls, cfg: Config, class_names: Sequence[str]) -> InferenceSettings:
        """From a :class:`~frcnn_trt.config.Config` (``TEST.SCALES[0]`` is the single test scale)."""
        t = cfg.TEST
        return cls(
            class_names=tuple(class_names),
            pixel_means=tuple(float(v) for v in cfg.PIXEL_MEANS),  # type: ignore[arg-type]
            target_size=int(t.SCALES[0]),
            max_size=int(t.MAX_SIZE),
            feat_stride=int(cfg.MODEL.FEAT_STRIDE),
            anchor_scales=tuple(float(v) for v in cfg.MODEL.ANCHOR_SCALES),
            anchor_ratios=tuple(float(v) for v in cfg.MODEL.ANCHOR_RATIOS),
            rpn_pre_nms_top_n=int(t.RPN_PRE_NMS_TOP_N),
            rpn_post_nms_top_n=int(t.RPN_POST_NMS_TOP_N),
            rpn_nms_thresh=float(t.RPN_NMS_THRESH),
            rpn_min_size=float(t.RPN_MIN_SIZE),
            score_thresh=float(getattr(t, "SCORE_THRESH", 0.05)),
            nms_thresh=float(t.NMS),
            max_per_image=int(getattr(t, "MAX_PER_IMAGE", 100)),
            bbox_reg=bool(t.BBOX_REG),
        )

    @classmethod
    def from_export(cls, info: ExportInfo) -> InferenceSettings:
        d = info.data
        try:
            pre, anc, test = d["preprocessing"], d["anchors"], d["proposals"]["test"]
            gen, tst = d["proposals"]["rpn_generate"], d["test"]
            return cls(
                class_names=tuple(d["class_names"]),
                pixel_means=tuple(float(v) for v in pre["pixel_means_bgr"]),  # type: ignore[arg-type]
                target_size=int(pre["target_size"]),
                max_size=int(pre["max_size"]),
                feat_stride=int(anc["feat_stride"]),
                anchor_scales=tuple(float(v) for v in anc["scales"]),
                anchor_ratios=tuple(float(v) for v in anc["ratios"]),
                rpn_pre_nms_top_n=int(test["pre_nms_top_n"]),
                rpn_post_nms_top_n=int(test["post_nms_top_n"]),
                rpn_nms_thresh=float(test["nms_thresh"]),
                rpn_min_size=float(test["min_size"]),
                generate_pre_nms_top_n=int(gen["pre_nms_top_n"]),
                generate_post_nms_top_n=int(gen["post_nms_top_n"]),
                score_thresh=float(tst["score_thresh"]),
                nms_thresh=float(tst["nms_thresh"]),
                max_per_image=int(tst["max_per_image"]),
                bbox_reg=bool(tst.get("bbox_reg", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"{info.directory / 'export.json'}: malformed settings ({exc!r})") from None

    def base_anchors(self) -> list[list[float]]:
        base = generate_anchors(self.feat_stride, self.anchor_ratios, self.anchor_scales, dtype=torch.float64)
        return base.tolist()


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class PhaseTimes:
    """Milliseconds spent per phase (summed over the calls :meth:`add` saw) and the images they covered."""

    preprocess: float = 0.0
    rpn: float = 0.0
    proposals: float = 0.0
    detector: float = 0.0
    postprocess: float = 0.0
    images: int = 0

    PHASES = ("preprocess", "rpn", "proposals", "detector", "postprocess")

    @property
    def total(self) -> float:
        return sum(getattr(self, p) for p in self.PHASES)

    def add(self, other: PhaseTimes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def per_image(self) -> dict[str, float]:
        """Per-phase ms per image, plus ``total``."""
        n = max(self.images, 1)
        out = {p: getattr(self, p) / n for p in self.PHASES}
        out["total"] = self.total / n
        return out

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class DetectorRun:
    """One :meth:`Detector.forward` call: the intermediate tensors and the detections."""

    blob: Tensor
    im_info: Tensor
    features: Tensor
    rpn_cls_prob: Tensor
    rpn_bbox_pred: Tensor
    rois: Tensor
    cls_prob: Tensor
    bbox_pred: Tensor
    detections: list[ImageDetections]
    timing: PhaseTimes


@dataclass
class _Clock:
    backend: Backend
    times: PhaseTimes = field(default_factory=PhaseTimes)
    _t: float = 0.0

    def start(self) -> None:
        self.backend.synchronize()
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        self.backend.synchronize()
        now = time.perf_counter()
        setattr(self.times, phase, getattr(self.times, phase) + (now - self._t) * 1000.0)
        self._t = now


# ------------------------------------------------------------------------------------------------ detector


class Detector:
    """Shared pre/post-processing around a :class:`~frcnn_trt.engines.protocol.Backend`.

    Build it with :meth:`from_export` or :meth:`from_checkpoint`. ``conf_thresh``, ``nms`` and ``max_dets``
    override the test settings (py-faster-rcnn: 0.05 / 0.3 / 100; its demo used 0.8 / 0.3).
    """

    def __init__(
        self,
        backend: Backend,
        settings: InferenceSettings,
        *,
        conf_thresh: float | None = None,
        nms: float | None = None,
        max_dets: int | None = None,
        export: ExportInfo | None = None,
    ) -> None:
        self.backend = backend
        self.export = export
        if conf_thresh is not None and not 0.0 <= conf_thresh < 1.0:
            raise ModelError(f"conf_thresh must be in [0, 1), got {conf_thresh}")
        if nms is not None and not 0.0 < nms <= 1.0:
            raise ModelError(f"nms must be in (0, 1], got {nms}")
        self.settings = settings
        self.conf_thresh = settings.score_thresh if conf_thresh is None else float(conf_thresh)
        self.nms = settings.nms_thresh if nms is None else float(nms)
        self.max_dets = settings.max_per_image if max_dets is None else int(max_dets)
        s = settings
        anchors = AnchorGenerator(AnchorSettings(s.feat_stride, s.anchor_scales, s.anchor_ratios))
        self.proposal_layer = ProposalLayer(
            ProposalSettings(s.rpn_pre_nms_top_n, s.rpn_post_nms_top_n, s.rpn_nms_thresh, s.rpn_min_size), anchors)
        self.last_timing = PhaseTimes()

    # ------------------------------------------------------------------------------------------ builders

    @classmethod
    def from_export(
        cls,
        directory: str | Path,
        backend: str = "auto",
        *,
        device: str | torch.device | None = None,
        verify: bool = True,
        model: Any = None,
        backend_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Detector:
        """Load an export directory and run it with ``backend`` (``"auto"``, ``"tensorrt"``,
        ``"onnxruntime"``, ``"torch"``). ``auto`` logs which backend it picked and why. ``model``: the
        exported :class:`FasterRCNN` already in memory, for the torch backend (else it loads the source
        checkpoint). ``backend_options``: options of the backends' ``from_export`` (``BACKEND_OPTIONS``: e.g.
        ``intra_op_threads`` for onnxruntime, ``workspace_mib`` for tensorrt); with ``auto`` each candidate gets
        its own, a named backend must take them all. ``kwargs`` go to :class:`Detector` (``conf_thresh``,
        ``nms``, ``max_dets``)."""
        info = load_export(directory, verify=verify)
        impl, _why = open_backend(backend, info, device, model=model, options=backend_options)
        return cls(impl, InferenceSettings.from_export(info), export=info, **kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        backend: str = "torch",
        *,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> Detector:
        """Run a checkpoint eagerly (NCHW, as trained). Other backends need an export first (``frcnn-trt export``)."""
        # imported here: the model package (torchvision under it) is not needed to run an export
        from frcnn_trt.model.checkpoint import load_checkpoint

        if backend not in ("torch", "auto"):
            raise BackendError(f"backend {backend!r} runs an export directory, not a checkpoint: run "
                               f"`frcnn-trt export {path}` first, or use backend='torch'")
        dev = resolve_device(device)
        model, info = load_checkpoint(path, device=dev)
        settings = InferenceSettings.from_config(from_dict(info.config), info.class_names)
        return cls(TorchBackend(model, dev), settings, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_model(cls, model: Any, cfg: Config, class_names: Sequence[str],
                   device: str | torch.device | None = None, **kwargs: Any) -> Detector:
        """An in-memory :class:`FasterRCNN` on the torch backend (tests, training-time evaluation)."""

        return cls(TorchBackend(model, device), InferenceSettings.from_config(cfg, class_names), **kwargs)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.settings.class_names

    # ------------------------------------------------------------------------------------------ running

    def _prepare(self, images: Sequence[np.ndarray], clock: _Clock) -> tuple[Tensor, Tensor]:
        if len(images) == 0:
            raise ModelError("detect/propose need at least one image")
        clock.start()
        blob, im_info = preprocess_images(images, self.settings.pixel_means, self.settings.target_size,
                                          self.settings.max_size, device=self.backend.device)
        clock.lap("preprocess")
        return blob, im_info

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[ImageDetections]:
        """Detections of each ``H x W x 3`` uint8 BGR image; per-phase times land in :attr:`last_timing`."""
        return self.forward(images).detections

    @torch.inference_mode()
    def forward(self, images: Sequence[np.ndarray]) -> DetectorRun:
        """:meth:`detect`, keeping every intermediate tensor (parity checks and debugging)."""
        clock = _Clock(self.backend)
        blob, im_info = self._prepare(images, clock)
        n = len(images)
        features, prob, deltas = self.backend.run_rpn(blob)
        clock.lap("rpn")
        rois, _ = self.proposal_layer(prob, deltas, im_info)
        clock.lap("proposals")
        k = len(self.settings.class_names)
        if rois.shape[0] > 0:
            cls_prob, bbox_pred = self.backend.run_detector(features, rois)
        else:  # no proposal survived: nothing to classify (engines need R ≥ 1)
            cls_prob = rois.new_zeros((0, k))
            bbox_pred = rois.new_zeros((0, 4 * k))
        clock.lap("detector")
        orig = torch.tensor([im.shape[:2] for im in images], dtype=torch.float32, device=rois.device)
        scores, boxes = im_detect_postprocess(rois, cls_prob.float(), bbox_pred.float(), im_info[:, 2], orig,
                                              bbox_reg=self.settings.bbox_reg)
        det_boxes, det_scores, det_labels, det_img = batched_detections_from_scores(
            scores, boxes, rois[:, 0].long(), n, score_thresh=self.conf_thresh, nms_thresh=self.nms,
            max_per_image=self.max_dets)
        counts = torch.bincount(det_img, minlength=n).tolist()
        b_np = det_boxes.float().cpu().numpy()
        s_np = det_scores.float().cpu().numpy()
        l_np = det_labels.cpu().numpy().astype(np.int64)
        names = self.settings.class_names
        out = []
        start = 0
        for c, im in zip(counts, images, strict=True):  # det_img is sorted: contiguous slices per image
            sl = slice(start, start + c)
            out.append(ImageDetections(b_np[sl], s_np[sl], l_np[sl], [names[i] for i in l_np[sl]],
                                       size=(int(im.shape[0]), int(im.shape[1]))))
            start += c
        clock.lap("postprocess")
        clock.times.images = n
        self.last_timing = clock.times
        return DetectorRun(blob, im_info, features, prob, deltas, rois, cls_prob, bbox_pred, out, clock.times)

    def run(
        self,
        images: Sequence[np.ndarray],
        task: Task = "detect",
        *,
        pre_nms_top_n: int | None = None,
        post_nms_top_n: int | None = None,
    ) -> tuple[list[ImageDetections], PhaseTimes]:
        """One batch: :meth:`detect` or :meth:`propose` (``task``), with this call's own per-phase times
        (safe when several threads call one detector at once, where :attr:`last_timing` is whichever came
        last). ``pre_nms_top_n`` / ``post_nms_top_n``: :meth:`propose`'s."""
        if task == "detect":
            run = self.forward(images)
            return run.detections, run.timing
        if task != "propose":
            raise ModelError(f"task must be 'detect' or 'propose', got {task!r}")
        with torch.inference_mode():
            out, times = self._propose(images, pre_nms_top_n, post_nms_top_n)
        self.last_timing = times
        return out, times

    def propose(
        self,
        images: Sequence[np.ndarray],
        pre_nms_top_n: int | None = None,
        post_nms_top_n: int | None = None,
    ) -> list[ImageDetections]:
        """py-faster-rcnn's ``rpn_generate``: per image its proposals (``boxes [P, 4]`` float32 in ORIGINAL image
        pixels, ``scores [P]`` float32, no labels), in descending score order. Defaults: the export's
        ``rpn_generate`` settings (−1 = no pre-NMS cap, 2000 kept), NMS 0.7, min size 16 · s. Single scale,
        boxes divided by ``s``."""
        return self.run(images, "propose", pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n)[0]

    def _propose(self, images: Sequence[np.ndarray], pre_nms_top_n: int | None,
                 post_nms_top_n: int | None) -> tuple[list[ImageDetections], PhaseTimes]:
        s = self.settings
        pre = s.generate_pre_nms_top_n if pre_nms_top_n is None else int(pre_nms_top_n)
        post = s.generate_post_nms_top_n if post_nms_top_n is None else int(post_nms_top_n)
        clock = _Clock(self.backend)
        blob, im_info = self._prepare(images, clock)
        _, prob, deltas = self.backend.run_rpn(blob)
        clock.lap("rpn")
        layer = self.proposal_layer.with_settings(  # shares the anchor cache
            ProposalSettings(pre, post, s.rpn_nms_thresh, s.rpn_min_size))
        rois, scores = layer(prob, deltas, im_info)
        clock.lap("proposals")
        img = rois[:, 0].long()
        boxes = rois[:, 1:5] / im_info[img, 2:3]  # tensor division, as im_detect_postprocess
        counts = torch.bincount(img, minlength=len(images)).tolist()
        b_np = boxes.cpu().numpy()
        s_np = scores[:, 0].cpu().numpy()
        out = []
        start = 0
        for c, im in zip(counts, images, strict=True):
            out.append(ImageDetections(b_np[start:start + c], s_np[start:start + c],
                                       size=(int(im.shape[0]), int(im.shape[1]))))
            start += c
        clock.lap("postprocess")
        clock.times.images = len(images)
        return out, clock.times

    def describe(self) -> str:
        return self.backend.describe()
