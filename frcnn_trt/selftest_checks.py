"""The checks of ``frcnn-trt doctor --selftest`` (run and reported by :mod:`frcnn_trt.selftest`).

Each check *does* one layer of the stack on this machine with a tiny random model made on the fly in a
temporary folder, and either returns a one-line detail (pass), raises :class:`Skip` (cannot run here, with the
reason and what to do) or raises anything else (fail). Checks share what they make through :class:`Context`
(the synthetic dataset, the tiny export, test images), built once on first use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from frcnn_trt import config as C
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.data.synthetic import make_synthetic_dataset
from frcnn_trt.engines.detector import Detector
from frcnn_trt.engines.tensorrt.runtime import INSTALL_HINTS, probe_tensorrt
from frcnn_trt.export.onnx_export import export_model, random_checkpoint, run_parity
from frcnn_trt.export.parity import compare_detections, parity_report, synthetic_images
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.train.end2end import train_end2end

__all__ = ["CHECKS", "CheckFailed", "Context", "Skip", "tiny_selftest_config"]

NUM_CLASSES = 4
TRAIN_ITERS = 2
TORCHRUN_TIMEOUT_S = 180.0
# detections of two runs of one model must match at IoU 0.9 for at least this fraction (and errors stay below)
PARITY = {"fp32": {"matched": 0.95, "cls_prob": 1e-3}, "fp16": {"matched": 0.8, "cls_prob": 5e-2}}
KERNEL_CASES = 200


class Skip(Exception):
    """The check cannot run on this machine: ``reason`` and ``fix`` (what would let it run)."""

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


class CheckFailed(Exception):
    """The check ran and its result is wrong: the message says what, ``fix`` what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


def tiny_selftest_config(device: str) -> C.Config:
    """The tiny CPU-sized net (anchors for small images) at 112 px for training, 240 px for tests."""
    cfg = C.load(C.builtin("faster_rcnn_end2end"))
    return C.override(
        cfg,
        MODEL={"NET": "tiny", "ANCHOR_SCALES": [2, 4, 8]},
        TRAIN={"SCALES": [112], "MAX_SIZE": 160, "RPN_MIN_SIZE": 4, "SNAPSHOT_ITERS": 0, "NUM_WORKERS": 0,
               "RPN_PRE_NMS_TOP_N": 600, "RPN_POST_NMS_TOP_N": 100, "BATCH_SIZE": 32, "RPN_BATCHSIZE": 64,
               "IMS_PER_BATCH": 1},
        TEST={"SCALES": [240], "MAX_SIZE": 400, "RPN_MIN_SIZE": 4, "RPN_PRE_NMS_TOP_N": 6000,
              "RPN_POST_NMS_TOP_N": 300},
        SOLVER={"BASE_LR": 0.005, "STEPSIZE": 1000, "MAX_ITERS": TRAIN_ITERS, "DISPLAY": 100},
        DEVICE=device,
    )


@dataclass
class Context:
    """What the checks share: the device under test, a scratch folder and the artefacts made on first use."""

    device: torch.device
    workdir: Path
    made: dict[str, Any] = field(default_factory=dict)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def cfg(self) -> C.Config:
        return tiny_selftest_config(str(self.device))

    def synth_dir(self) -> Path:
        if "synth" not in self.made:
            out = self.workdir / "synth"
            make_synthetic_dataset(out, num_images=8, image_size=(160, 120), seed=1)
            self.made["synth"] = out
        return Path(self.made["synth"])

    def images(self) -> list[np.ndarray]:
        if "images" not in self.made:
            self.made["images"] = synthetic_images(2, sizes=((150, 200), (200, 133)))
        return list(self.made["images"])

    def export(self, fp16: bool = False) -> tuple[Path, FasterRCNN]:
        """``(export_dir, model)``: a random tiny model (RPN scores spread out) and its export (FP16 graphs with
        ``fp16``)."""
        if "model" not in self.made:
            ckpt = random_checkpoint(self.workdir / "tiny.safetensors", net="tiny", num_classes=NUM_CLASSES,
                                     cfg=tiny_selftest_config("cpu"), seed=0, rpn_spread=50.0)
            model, info = load_checkpoint(ckpt)
            if not isinstance(model, FasterRCNN):
                raise CheckFailed(f"{ckpt} did not load as a FasterRCNN")
            self.made["model"] = (model, info.class_names)
        model, class_names = self.made["model"]
        key = "export_fp16" if fp16 else "export"
        if key not in self.made:
            self.made[key] = export_model(model, cfg=tiny_selftest_config("cpu"), class_names=class_names,
                                          output_dir=self.workdir / key, fp16=fp16)
        return self.made[key].directory, model


def _gpu_only(ctx: Context, what: str) -> None:
    if not ctx.on_gpu:
        raise Skip(f"{what} runs on a CUDA GPU; this self-test runs on {ctx.device}",
                   "run `frcnn-trt doctor --selftest --device cuda` on a machine with an NVIDIA GPU")


def _finite(values: dict[str, float], what: str) -> None:
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise CheckFailed(f"{what}: non-finite values {bad}")


# ------------------------------------------------------------------------------------------------ checks


def check_train_step(ctx: Context) -> str:
    """end2end training (both stages' targets and losses, backward, solver step) for a few iterations."""
    imdb = get_imdb(f"synth:{ctx.synth_dir()}:trainval")
    out = ctx.workdir / "train"
    ckpt = train_end2end(ctx.cfg, imdb, out, device=str(ctx.device))
    if not ckpt.is_file():
        raise CheckFailed(f"training returned {ckpt}, which does not exist")
    model, _ = load_checkpoint(ckpt)
    params = {k: float(v.detach().abs().sum()) for k, v in model.state_dict().items()}
    _finite(params, "trained weights")
    ctx.made["trained"] = ckpt
    return f"{TRAIN_ITERS} end2end iterations on {ctx.device} (synthetic data), finite weights in {ckpt.name}"


def check_detect(ctx: Context) -> str:
    """The inference layer (torch backend) on the device; on a GPU its detections match the CPU's."""
    ckpt = ctx.made.get("trained")
    if ckpt is None:
        raise Skip("needs the trained checkpoint of the train-step check, which did not pass")
    images = ctx.images()
    dets = Detector.from_checkpoint(ckpt, "torch", device=ctx.device).detect(images)
    if len(dets) != len(images):
        raise CheckFailed(f"{len(images)} images gave {len(dets)} results")
    total = sum(len(d.scores) for d in dets)
    if not ctx.on_gpu:
        return f"detected {len(images)} images on cpu ({total} detections)"
    ref = Detector.from_checkpoint(ckpt, "torch", device="cpu").detect(images)
    matched = [compare_detections(r, d)["matched"] / max(1, len(r.scores)) for r, d in zip(ref, dets, strict=True)]
    if min(matched) < PARITY["fp32"]["matched"]:
        raise CheckFailed(f"{ctx.device} detections differ from cpu's (matched fractions {matched})")
    return f"detected {len(images)} images on {ctx.device} ({total} detections), matching cpu's"


def check_export(ctx: Context) -> str:
    """A tiny export (rpn.onnx + detector.onnx with frcnn::RoIPool), ONNX Runtime (CPU) vs torch."""
    directory, model = ctx.export()
    report = run_parity(ctx.made["export"], model, ctx.images())
    _parity_ok(report, "fp32", "ONNX Runtime (cpu) vs torch")
    return f"exported to {directory.name}/ and ran it on ONNX Runtime (cpu): {_parity_line(report)}"


def check_kernel(ctx: Context) -> str:
    """The RoIPool plugin kernel vs torchvision: on the GPU through the project's loader, else by emulation."""
    feats, rois, scale = _kernel_cases(ctx.device if ctx.on_gpu else torch.device("cpu"))
    want = torchvision.ops.roi_pool(feats, rois, (7, 7), scale)
    if ctx.on_gpu:
        from frcnn_trt.engines.tensorrt.cuda_launch import run_roi_pool_cuda

        got = run_roi_pool_cuda(feats, rois, (7, 7), scale)
        how = f"the CUDA kernel on {ctx.device}"
    else:
        try:
            from frcnn_trt.engines.tensorrt import emulation  # type: ignore[attr-defined,unused-ignore]
        except ImportError as exc:
            raise Skip(f"the host emulation of the kernel is not available ({exc})",
                       "upgrade frcnn-trt, or run with --device cuda on a GPU") from None
        ok, why = emulation.emulation_available()
        if not ok:
            raise Skip(f"host emulation unavailable: {why}", "install a C++ compiler (g++ or clang++)")
        got = emulation.roi_pool_emulated(feats, rois, (7, 7), scale)
        how = "the kernel source compiled for the host"
    if got.shape != want.shape or not torch.equal(got.cpu(), want.cpu()):
        err = float((got.cpu().float() - want.cpu().float()).abs().max()) if got.shape == want.shape else "shape"
        raise CheckFailed(f"{how} differs from torchvision.ops.roi_pool (max abs error {err})",
                          "report it with `frcnn-trt doctor --json` output: the plugin would give wrong detections")
    return f"{how} equals torchvision.ops.roi_pool on {rois.shape[0]} RoIs (FP32, exact)"


def _kernel_cases(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 8, 19, 23, generator=gen)
    x0, y0 = torch.rand(KERNEL_CASES, generator=gen) * 420 - 40, torch.rand(KERNEL_CASES, generator=gen) * 340 - 40
    w, h = torch.rand(KERNEL_CASES, generator=gen) * 200, torch.rand(KERNEL_CASES, generator=gen) * 200
    batch = torch.randint(0, 2, (KERNEL_CASES,), generator=gen).float()
    rois = torch.stack([batch, x0, y0, x0 + w, y0 + h], 1)
    return feats.to(device), rois.to(device), 1.0 / 16.0


def check_onnxruntime(ctx: Context) -> str:
    """ONNX Runtime on the device with the provider it claims; on a GPU, parity with the CPU provider."""
    directory, _ = ctx.export()
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Skip(f"onnxruntime is not installed ({exc})", "pip install onnxruntime-gpu") from None
    want = "CUDAExecutionProvider" if ctx.on_gpu else "CPUExecutionProvider"
    if ctx.on_gpu and want not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider", "pip install onnxruntime-gpu")
    det = Detector.from_export(directory, "onnxruntime", device=ctx.device, verify=False)
    sessions = [det.backend.rpn_session, det.backend.detector_session]  # type: ignore[attr-defined]
    kept = [s.get_providers()[0] for s in sessions]
    if any(k != want for k in kept):
        raise CheckFailed(f"asked for {want}, the sessions run on {kept}",
                          "install the CUDA and cuDNN libraries onnxruntime-gpu was built for "
                          "(pip install 'onnxruntime-gpu[cuda,cudnn]')")
    if not ctx.on_gpu:
        det.detect(ctx.images())
        return f"onnxruntime {ort.__version__}: both sessions keep {want}"
    ref = Detector.from_export(directory, "onnxruntime", device="cpu", verify=False)
    report = parity_report(ref, det, ctx.images())
    _parity_ok(report, "fp32", "CUDA provider vs CPU provider")
    return f"onnxruntime {ort.__version__}: both sessions keep {want}; vs CPU: {_parity_line(report)}"


def _tensorrt_ready(ctx: Context) -> Any:
    _gpu_only(ctx, "TensorRT")
    info, why = probe_tensorrt("tensorrt")
    if info is None:
        raise Skip(why.split(". Install: ")[0], INSTALL_HINTS["tensorrt"])
    return info


def _tensorrt_run(ctx: Context, precision: str) -> str:
    info = _tensorrt_ready(ctx)
    # a strongly typed TensorRT (11) builds FP16 from FP16 graphs only; TensorRT 10 from the FP32 export's flag
    fp16_graphs = precision == "fp16" and info.always_strongly_typed
    directory, _ = ctx.export(fp16=fp16_graphs)
    options = {"precision": precision, "cache_dir": str(ctx.workdir / f"engines_{precision}")}
    det = Detector.from_export(directory, "tensorrt", device=ctx.device, verify=False, backend_options=options)
    ref = Detector.from_export(directory, "onnxruntime", device="cpu", verify=False)
    report = parity_report(ref, det, ctx.images())
    _parity_ok(report, precision, f"TensorRT {precision} vs ONNX Runtime")
    again = Detector.from_export(directory, "tensorrt", device=ctx.device, verify=False, backend_options=options)
    rebuilt = [n for n, e in again.backend.engines.items() if e.built]  # type: ignore[attr-defined]
    if rebuilt:
        raise CheckFailed(f"the second load rebuilt {rebuilt} instead of using the engine cache",
                          "check that the cache folder is writable and the engine key is stable")
    return f"{info.label}: built, ran, {_parity_line(report)}; second load: cache hit"


def check_tensorrt_fp32(ctx: Context) -> str:
    """TensorRT FP32: engine build with the RoIPool plugin, run, parity with ONNX Runtime, cache hit."""
    return _tensorrt_run(ctx, "fp32")


def check_tensorrt_fp16(ctx: Context) -> str:
    """TensorRT FP16: as FP32, with FP16 tolerances."""
    return _tensorrt_run(ctx, "fp16")


def check_torchrun(ctx: Context) -> str:
    """``torchrun --nproc-per-node 2 -m frcnn_trt train end2end``: gloo on CPU, NCCL on 2 GPUs."""
    if ctx.on_gpu and torch.cuda.device_count() < 2:
        raise Skip(f"NCCL with 2 processes needs 2 GPUs; torch sees {torch.cuda.device_count()}",
                   "run on a machine with 2 GPUs, or check gloo with --device cpu")
    cfg_file = ctx.workdir / "torchrun.yml"
    cfg_file.write_text(C.dump(ctx.cfg))
    out = ctx.workdir / "torchrun"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    package_root = str(Path(__file__).resolve().parents[1])  # the workers import this very package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "frcnn_trt", "train", "end2end", "--imdb", f"synth:{ctx.synth_dir()}:trainval", "--net", "tiny",
           "--iters", str(TRAIN_ITERS), "--cfg", str(cfg_file), "--output", str(out), "--device", ctx.device.type]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"2 processes did not finish {TRAIN_ITERS} iterations in {TORCHRUN_TIMEOUT_S:.0f} s",
                          "a firewall blocking 127.0.0.1 ports, or a hung NCCL: try NCCL_DEBUG=INFO") from None
    if r.returncode != 0 or not (out / "end2end_final.safetensors").is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise CheckFailed(f"torchrun exited {r.returncode}: {' | '.join(tail)}",
                          "see `torchrun --nproc-per-node 2 -m frcnn_trt train end2end ...` output")
    backend = "nccl" if ctx.on_gpu else "gloo"
    return f"2 processes ({backend}) trained {TRAIN_ITERS} iterations and wrote one final checkpoint"


# ------------------------------------------------------------------------------------------------ parity


def _parity_ok(report: dict[str, Any], precision: str, what: str) -> None:
    bound = PARITY[precision]
    matched = float(report["detections"]["matched_fraction"])
    cls_err = float(report["max_abs_error"]["cls_prob"])
    if matched < bound["matched"] or not cls_err <= bound["cls_prob"]:
        raise CheckFailed(f"{what}: {_parity_line(report)} (need ≥ {bound['matched']:.0%} matched and "
                          f"class-probability error ≤ {bound['cls_prob']:g})",
                          "a wrong kernel, plugin or provider: compare `frcnn-trt benchmark` backends on one image")


def _parity_line(report: dict[str, Any]) -> str:
    d = report["detections"]
    return (f"{d['matched']}/{d['reference']} detections matched, "
            f"class-probability error {float(report['max_abs_error']['cls_prob']):.2e}")


# name, title, function — in running order
CHECKS: list[tuple[str, str, Callable[[Context], str]]] = [
    ("train", "torch train step", check_train_step),
    ("detect", "torch detect", check_detect),
    ("export", "ONNX export + parity", check_export),
    ("kernel", "RoIPool kernel", check_kernel),
    ("onnxruntime", "ONNX Runtime provider", check_onnxruntime),
    ("tensorrt_fp32", "TensorRT FP32", check_tensorrt_fp32),
    ("tensorrt_fp16", "TensorRT FP16", check_tensorrt_fp16),
    ("torchrun", "torchrun (2 processes)", check_torchrun),
]
