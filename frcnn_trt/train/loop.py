"""The training loop shared by end2end training and every alt-opt stage (py-faster-rcnn's ``SolverWrapper``).

One call trains one model for one stage: chosen parameters train (the rest are frozen), SGD with Caffe's
settings (:mod:`frcnn_trt.train.solver`), ``iter_size`` accumulation, periodic log lines, snapshots every
``SNAPSHOT_ITERS`` and at the end (safetensors + JSON, atomic), and an exact resume from the newest solver
state in the output folder. A NaN/inf loss stops the run naming the stage, the iteration and every loss.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frcnn_trt import config as C
from frcnn_trt.data.loader import make_train_loader_from_config
from frcnn_trt.errors import TrainingError
from frcnn_trt.log import get_logger
from frcnn_trt.train.checkpoint import (
    CheckpointInfo,
    load_solver_state,
    save_checkpoint,
    save_solver_state,
)
from frcnn_trt.train.solver import Solver

logger = get_logger("train")

SOLVERSTATE_SUFFIX = ".solverstate.safetensors"


@dataclass
class StageSpec:
    """What one training run (or alt-opt stage) does."""

    name: str  # e.g. "end2end" or "stage1_rpn"
    mode: str  # "end2end" | "rpn" | "fast_rcnn" (FasterRCNN.forward's stage)
    max_iters: int
    base_lr: float
    stepsize: int
    trainable: Sequence[str]  # parameter groups of FasterRCNN.parameter_groups()
    label: str = ""  # shown in progress lines, e.g. "Stage 3/6 · stage 1 Fast R-CNN"


def resolve_device(spec: str = "auto") -> torch.device:
    if spec in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {spec!r} requested but CUDA is not available (torch {torch.__version__})")
    return dev


def set_trainable(model: nn.Module, groups: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """``requires_grad`` on exactly the parameters of ``groups``; returns them (named)."""
    all_groups = model.parameter_groups()  # type: ignore[operator]
    unknown = set(groups) - set(all_groups)
    if unknown:
        raise TrainingError(f"unknown parameter groups {sorted(unknown)}; known: {sorted(all_groups)}")
    chosen: list[tuple[str, nn.Parameter]] = []
    for gname, params in all_groups.items():
        for name, p in params:
            p.requires_grad_(gname in groups)
            if gname in groups:
                chosen.append((name, p))
    return chosen


def latest_solver_state(output_dir: Path) -> Path | None:
    states = sorted(output_dir.glob(f"*_iter_*{SOLVERSTATE_SUFFIX}"),
                    key=lambda p: int(p.name.split("_iter_")[1].split(".")[0]))
    return states[-1] if states else None


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"sampling": generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(generator: torch.Generator, state: dict[str, torch.Tensor]) -> None:
    generator.set_state(state["sampling"])
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def train_stage(
    model: nn.Module,
    roidb: Sequence[Any],
    cfg: C.Config,
    spec: StageSpec,
    output_dir: str | Path,
    *,
    class_names: Sequence[str],
    device: torch.device,
    resume: bool = False,
    num_workers: int | None = None,
    extra_info: dict[str, Any] | None = None,
    on_iteration: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train ``model`` on ``roidb`` for ``spec``; returns the final checkpoint ``<name>_final.safetensors``.

    ``cfg`` is the stage's own config (IMS_PER_BATCH etc. already set). With ``resume``, the newest solver
    state of ``output_dir`` is restored and training continues from its iteration with the same result as
    an uninterrupted run; a finished stage (its final checkpoint exists) returns at once.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{spec.name}_final.safetensors"
    info_base = dict(net=cfg.MODEL.NET, class_names=list(class_names), stage=spec.name,
                     config=C.to_dict(cfg), extra=dict(extra_info or {}))
    if resume and final.exists() and final.with_suffix(".json").exists():
        logger.info("%s: already finished (%s), not retrained", spec.name, final)
        return final
    C.write_resolved(cfg, out, f"{spec.name}_config.yaml")

    model.to(device).train()
    named = set_trainable(model, spec.trainable)
    params_by_name = dict(named)
    names_by_id = {id(p): n for n, p in named}
    solver = Solver.from_config(named, cfg.SOLVER, base_lr=spec.base_lr, stepsize=spec.stepsize)
    generator = torch.Generator().manual_seed(cfg.RNG_SEED)
    torch.manual_seed(cfg.RNG_SEED)

    start = 0
    state_path = latest_solver_state(out) if resume else None
    if state_path is not None:
        weights, momentum, rng, meta = load_solver_state(state_path)
        model.load_state_dict(weights)
        solver.load_momentum_state(momentum, params_by_name)
        _set_rng_state(generator, rng)
        start = int(meta["iteration"])
        logger.info("%s: resumed from %s at iteration %d", spec.name, state_path.name, start)

    iter_size = max(1, int(cfg.SOLVER.ITER_SIZE))
    loader = make_train_loader_from_config(
        roidb, cfg, max_iters=spec.max_iters * iter_size, start_iter=start * iter_size,
        num_workers=cfg.TRAIN.NUM_WORKERS if num_workers is None else num_workers,
        pin_memory=device.type == "cuda")
    batches = iter(loader)
    display = max(1, int(cfg.SOLVER.DISPLAY))
    window: deque[dict[str, float]] = deque(maxlen=100)  # Caffe's average_loss 100
    amp = bool(cfg.AMP) and device.type == "cuda"
    t_start = time.perf_counter()
    t_data = t_iter = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    for it in range(start, spec.max_iters):
        t0 = time.perf_counter()
        values: dict[str, float] = {}
        data_time = 0.0
        for _ in range(iter_size):
            td = time.perf_counter()
            batch = next(batches).to(device, non_blocking=True)
            data_time += time.perf_counter() - td
            with torch.autocast(device.type, enabled=amp):
                losses = model(batch, stage=spec.mode, generator=generator)
            total = sum(losses.values())
            detached = {k: float(v.detach()) for k, v in losses.items()}
            if not all(math.isfinite(v) for v in detached.values()):
                raise TrainingError(f"{spec.name}: non-finite loss at iteration {it + 1}: "
                                    + ", ".join(f"{k}={v:.6g}" for k, v in detached.items())
                                    + " — lower the learning rate or check the annotations")
            (total / iter_size).backward()
            for k, v in detached.items():
                values[k] = values.get(k, 0.0) + v / iter_size
        lr = solver.step(it)
        values["total_loss"] = sum(v for k, v in values.items() if k != "total_loss")
        window.append(values)
        t_data += data_time
        t_iter += time.perf_counter() - t0
        done = it + 1
        if on_iteration is not None:
            on_iteration(done, values)
        if done % display == 0 or done == spec.max_iters:
            n_done = done - start
            s_iter = (time.perf_counter() - t_start) / max(n_done, 1)
            avg = {k: sum(w[k] for w in window) / len(window) for k in window[-1]}
            mem = (f", max mem {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
                   if device.type == "cuda" else "")
            logger.info("%s%s iter %d/%d, eta %s, %s, lr %.3g, %.3f s/iter (data %.3f)%s",
                        f"[{spec.label}] " if spec.label else "", spec.name, done, spec.max_iters,
                        _format_eta(s_iter * (spec.max_iters - done)),
                        ", ".join(f"{k} {v:.4f}" for k, v in avg.items()), lr, s_iter, t_data / max(n_done, 1),
                        mem)
        snap = int(cfg.TRAIN.SNAPSHOT_ITERS)
        if snap > 0 and done % snap == 0 and done < spec.max_iters:
            _snapshot(model, out, spec, done, info_base, solver, names_by_id, generator)

    path = save_checkpoint(final, model, CheckpointInfo(iteration=spec.max_iters, **info_base))
    for old in out.glob(f"{spec.name}_iter_*{SOLVERSTATE_SUFFIX}"):
        old.unlink(missing_ok=True)
        old.with_name(old.name.replace(".safetensors", ".json")).unlink(missing_ok=True)
    logger.info("%s: wrote %s", spec.name, path)
    return path


def _snapshot(model: nn.Module, out: Path, spec: StageSpec, iteration: int, info_base: dict[str, Any],
              solver: Solver, names_by_id: dict[int, str], generator: torch.Generator) -> None:
    prefix = out / f"{spec.name}_iter_{iteration}"
    save_checkpoint(prefix.with_suffix(".safetensors"), model, CheckpointInfo(iteration=iteration, **info_base))
    state = out / f"{spec.name}_iter_{iteration}{SOLVERSTATE_SUFFIX}"
    save_solver_state(state, model, solver.momentum_state(names_by_id), _rng_state(generator),
                      {"iteration": iteration, "stage": spec.name})
    for old in out.glob(f"{spec.name}_iter_*{SOLVERSTATE_SUFFIX}"):
        if old != state:
            old.unlink(missing_ok=True)
            old.with_name(old.name.replace(".safetensors", ".json")).unlink(missing_ok=True)
    logger.info("%s: snapshot %s", spec.name, prefix.with_suffix(".safetensors").name)
