"""The training loop shared by end2end training and every alt-opt stage (py-faster-rcnn's ``SolverWrapper``).

One call trains one model for one stage: chosen parameters train (the rest are frozen), SGD with Caffe's
settings (:mod:`frcnn_trt.train.solver`), ``iter_size`` accumulation, periodic log lines, snapshots every
``SNAPSHOT_ITERS`` and at the end (safetensors + JSON, atomic), and an exact resume from the newest solver
state in the output folder. A NaN/inf loss stops the run naming the stage, the iteration and every loss.

Under torchrun the same call runs in every process with DistributedDataParallel: one iteration takes
``processes × ITER_SIZE`` batches of the one global batch stream, and equals the single-process run with
``ITER_SIZE = processes × ITER_SIZE`` (:mod:`frcnn_trt.distributed` explains why). Every batch's random
draws (anchor / RoI sampling, dropout) are seeded from ``(RNG_SEED, global batch number)``, so they do not
depend on the number of processes, and a run resumes exactly from a snapshot taken with another count.
"""

from __future__ import annotations

import contextlib
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
from frcnn_trt import distributed
from frcnn_trt.data.loader import make_train_loader_from_config
from frcnn_trt.errors import TrainingError
from frcnn_trt.log import IterationProgress, get_logger
from frcnn_trt.model.checkpoint import (
    CheckpointInfo,
    load_solver_state,
    save_checkpoint,
    save_solver_state,
)
from frcnn_trt.train.feature_cache import FeatureCache, body_is_cacheable
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
    feature_cache: FeatureCache | None = None,
) -> Path:
    """Train ``model`` on ``roidb`` for ``spec``; returns the final checkpoint ``<name>_final.safetensors``.

    ``cfg`` is the stage's own config (IMS_PER_BATCH etc. already set). With ``resume``, the newest solver
    state of ``output_dir`` is restored and training continues from its iteration with the same result as
    an uninterrupted run; a finished stage (its final checkpoint exists) returns at once.

    Under torchrun every process calls this; the model trains in DistributedDataParallel, one iteration
    takes ``W·ITER_SIZE`` batches of the global stream (equivalent to one process with ``ITER_SIZE W·I``,
    see :mod:`frcnn_trt.distributed`), rank 0 alone writes files, and all ranks leave together.
    ``on_iteration(iteration, losses)`` gets the losses averaged over all ranks, on every rank.

    ``feature_cache``: where the body is frozen (:func:`~frcnn_trt.train.feature_cache.body_is_cacheable`), its
    per-image features are kept there and reused (alt-opt passes one cache to both stage-2 stages); ignored
    when the body trains. Without one, a stage with a frozen body makes its own (``TRAIN.FEATURE_CACHE_MB``).
    """
    out = Path(output_dir)
    distributed.init_distributed(device)
    world, rank = distributed.get_world_size(), distributed.get_rank()
    main = rank == 0
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{spec.name}_final.safetensors"
    info_base: dict[str, Any] = dict(net=cfg.MODEL.NET, class_names=list(class_names), stage=spec.name,
                     config=C.to_dict(cfg), extra=dict(extra_info or {}))
    if resume and final.exists() and final.with_suffix(".json").exists():
        logger.info("%s: already finished (%s), not retrained", spec.name, final)
        return final
    if main:
        C.write_resolved(cfg, out, f"{spec.name}_config.yaml")

    model.to(device).train()
    named = set_trainable(model, spec.trainable)
    body: nn.Module = model.backbone.body  # type: ignore[union-attr, assignment]
    cache: FeatureCache | None = feature_cache
    if cache is None:
        cache = FeatureCache(int(cfg.TRAIN.FEATURE_CACHE_MB), bool(cfg.TRAIN.FEATURE_CACHE_UNPADDED))
    if cache.enabled and body_is_cacheable(body):
        cache.bind(body, cfg.PIXEL_MEANS)
    else:
        cache = None
    params_by_name = dict(named)
    names_by_id = {id(p): n for n, p in named}
    iter_size = max(1, int(cfg.SOLVER.ITER_SIZE))
    ims_per_batch = int(cfg.TRAIN.IMS_PER_BATCH)
    per_iter = world * iter_size  # global batches per iteration
    lr_scale = world if cfg.SOLVER.SCALE_LR_WITH_WORLD_SIZE else 1
    base_lr = spec.base_lr * lr_scale
    solver = Solver.from_config(named, cfg.SOLVER, base_lr=base_lr, stepsize=spec.stepsize)
    generator = torch.Generator().manual_seed(cfg.RNG_SEED)
    torch.manual_seed(cfg.RNG_SEED)

    start = consumed = 0
    state_path = latest_solver_state(out) if resume else None
    if state_path is not None:
        weights, momentum, rng, meta = load_solver_state(state_path)
        model.load_state_dict(weights)
        solver.load_momentum_state(momentum, params_by_name)
        _set_rng_state(generator, rng)
        start = int(meta["iteration"])
        saved_per_iter = int(meta.get("batches_per_iteration", per_iter))
        consumed = int(meta.get("batches", start * saved_per_iter))
        logger.info("%s: resumed from %s at iteration %d (%d batches consumed)", spec.name, state_path.name,
                    start, consumed)
        if saved_per_iter != per_iter or int(meta.get("ims_per_batch", ims_per_batch)) != ims_per_batch:
            logger.warning("%s: the snapshot was taken with %d batches of %d images per iteration, this run takes "
                           "%d of %d (%d processes × ITER_SIZE %d): training continues, but not as the uninterrupted "
                           "run would; keep processes × ITER_SIZE and IMS_PER_BATCH to resume exactly", spec.name,
                           saved_per_iter, int(meta.get("ims_per_batch", ims_per_batch)), per_iter, ims_per_batch,
                           world, iter_size)
        saved_lr = meta.get("base_lr")
        if saved_lr is not None and not math.isclose(float(saved_lr), base_lr):
            logger.warning("%s: base lr %.6g differs from the snapshot's %.6g (SOLVER.SCALE_LR_WITH_WORLD_SIZE with "
                           "another world size?)", spec.name, base_lr, float(saved_lr))
    _log_batch(spec, world, ims_per_batch, iter_size, spec.base_lr, base_lr, bool(cfg.SOLVER.SCALE_LR_WITH_WORLD_SIZE))

    # The loader walks the one global batch stream from batch `consumed`; this rank loads batches rank, rank+W, ...
    loader = make_train_loader_from_config(
        roidb, cfg, max_iters=consumed + (spec.max_iters - start) * per_iter, start_iter=consumed,
        num_workers=cfg.TRAIN.NUM_WORKERS if num_workers is None else num_workers,
        pin_memory=device.type == "cuda")
    batches = iter(distributed.shard_loader(loader, world, rank))
    net = distributed.wrap_ddp(model, device) if world > 1 else model
    display = max(1, int(cfg.SOLVER.DISPLAY))
    window: deque[dict[str, float]] = deque(maxlen=100)  # Caffe's average_loss 100
    amp = bool(cfg.AMP) and device.type == "cuda"
    t_start = time.perf_counter()
    t_data = t_iter = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with IterationProgress(spec.label or spec.name, spec.max_iters, start, enabled=main) as bar:
        for it in range(start, spec.max_iters):
            t0 = time.perf_counter()
            values: dict[str, float] = {}
            data_time = 0.0
            for j in range(iter_size):
                g = consumed + (it - start) * per_iter + j * world + rank  # this micro-batch's global batch number
                td = time.perf_counter()
                batch = next(batches).to(device, non_blocking=True)
                data_time += time.perf_counter() - td
                # the random draws of batch g do not depend on which rank (or accumulation step) runs it
                generator.manual_seed(distributed.batch_seed(cfg.RNG_SEED, g))
                torch.manual_seed(distributed.batch_seed(cfg.RNG_SEED, g, distributed.DROPOUT_STREAM))
                sync = j == iter_size - 1 or world == 1
                with contextlib.nullcontext() if sync else net.no_sync():  # type: ignore[operator]
                    with torch.autocast(device.type, enabled=amp):
                        feats = None if cache is None else cache.features(
                            body, batch.images, batch.im_info, batch.paths, batch.flipped)
                        losses = net(batch, stage=spec.mode, generator=generator, features=feats)
                    total = sum(losses.values())
                    (total / iter_size).backward()
                for k, v in losses.items():
                    values[k] = values.get(k, 0.0) + float(v.detach()) / iter_size
            if world > 1:
                values = dict(zip(values, distributed.all_reduce_mean(list(values.values())), strict=True))
            if not all(math.isfinite(v) for v in values.values()):
                raise TrainingError(f"{spec.name}: non-finite loss at iteration {it + 1}: "
                                    + ", ".join(f"{k}={v:.6g}" for k, v in values.items())
                                    + " — lower the learning rate or check the annotations")
            lr = solver.step(it)
            values["total_loss"] = sum(v for k, v in values.items() if k != "total_loss")
            window.append(values)
            t_data += data_time
            t_iter += time.perf_counter() - t0
            done = it + 1
            bar.update(done, values["total_loss"])
            if on_iteration is not None:
                on_iteration(done, values)
            if done % display == 0 or done == spec.max_iters:
                n_done = done - start
                s_iter = (time.perf_counter() - t_start) / max(n_done, 1)
                avg = {k: sum(w[k] for w in window) / len(window) for k in window[-1]}
                mem = (f", max mem {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
                       if device.type == "cuda" else "")
                logger.info("%s%s iter %d/%d, eta %s, %s, lr %.3g, %.3f s/iter (data %.3f), %.1f img/s%s",
                            f"[{spec.label}] " if spec.label else "", spec.name, done, spec.max_iters,
                            _format_eta(s_iter * (spec.max_iters - done)),
                            ", ".join(f"{k} {v:.4f}" for k, v in avg.items()), lr, s_iter, t_data / max(n_done, 1),
                            per_iter * ims_per_batch / max(s_iter, 1e-9), mem)
            snap = int(cfg.TRAIN.SNAPSHOT_ITERS)
            if main and snap > 0 and done % snap == 0 and done < spec.max_iters:
                meta = {"iteration": done, "stage": spec.name, "batches": consumed + (done - start) * per_iter,
                        "batches_per_iteration": per_iter, "ims_per_batch": ims_per_batch, "world_size": world,
                        "iter_size": iter_size, "base_lr": base_lr}
                _snapshot(model, out, spec, meta, info_base, solver, names_by_id, generator)

    del net, batches
    if cache is not None:
        logger.info("%s: feature cache: %s", spec.name, cache.stats.summary(cache))
    if main:
        path = save_checkpoint(final, model, CheckpointInfo(iteration=spec.max_iters, **info_base))
        for old in out.glob(f"{spec.name}_iter_*{SOLVERSTATE_SUFFIX}"):
            old.unlink(missing_ok=True)
            old.with_name(old.name.replace(".safetensors", ".json")).unlink(missing_ok=True)
        logger.info("%s: wrote %s", spec.name, path)
    distributed.barrier()  # the next stage (every rank) reads what rank 0 just wrote
    return final


def _log_batch(spec: StageSpec, world: int, ims_per_batch: int, iter_size: int, config_lr: float, base_lr: float,
               scaled: bool) -> None:
    """The effective batch and learning rate, and the single-process run this one equals."""
    images = world * iter_size * ims_per_batch
    if world == 1:
        logger.info("%s: %d image(s) per iteration (IMS_PER_BATCH %d × ITER_SIZE %d), base lr %.6g", spec.name,
                    images, ims_per_batch, iter_size, base_lr)
        return
    how = (f"= {config_lr:.6g} × {world} processes, SOLVER.SCALE_LR_WITH_WORLD_SIZE" if scaled
           else f"as configured; SOLVER.SCALE_LR_WITH_WORLD_SIZE True would scale it ×{world}")
    logger.info("%s: %d processes × IMS_PER_BATCH %d × ITER_SIZE %d = %d images per iteration (global batch); "
                "base lr %.6g (%s); equals one process with IMS_PER_BATCH %d, ITER_SIZE %d", spec.name, world,
                ims_per_batch, iter_size, images, base_lr, how, ims_per_batch, world * iter_size)


def _snapshot(model: nn.Module, out: Path, spec: StageSpec, meta: dict[str, Any], info_base: dict[str, Any],
              solver: Solver, names_by_id: dict[int, str], generator: torch.Generator) -> None:
    iteration = int(meta["iteration"])
    prefix = out / f"{spec.name}_iter_{iteration}"
    save_checkpoint(prefix.with_suffix(".safetensors"), model, CheckpointInfo(iteration=iteration, **info_base))
    state = out / f"{spec.name}_iter_{iteration}{SOLVERSTATE_SUFFIX}"
    save_solver_state(state, model, solver.momentum_state(names_by_id), _rng_state(generator), meta)
    for old in out.glob(f"{spec.name}_iter_*{SOLVERSTATE_SUFFIX}"):
        if old != state:
            old.unlink(missing_ok=True)
            old.with_name(old.name.replace(".safetensors", ".json")).unlink(missing_ok=True)
    logger.info("%s: snapshot %s", spec.name, prefix.with_suffix(".safetensors").name)
