"""The training loop shared by end2end training and every alt-opt stage (py-faster-rcnn's ``SolverWrapper``).

One call trains one model for one stage: chosen parameters train (the rest are frozen), SGD with Caffe's
settings (:mod:`frcnn_trt.train.solver`), ``iter_size`` accumulation, periodic log lines, snapshots every
``SNAPSHOT_ITERS`` and at the end (safetensors + JSON, atomic), and an exact resume from the newest solver
state in the output folder. A NaN/inf loss stops the run naming the stage, the iteration and every loss. Every
iteration's losses, learning rate and speed go to ``<stage>_metrics.jsonl`` and the curves drawn from them are
redrawn at each snapshot and at the end (:mod:`frcnn_trt.train.metrics`); they only watch, the numbers trained
are the same without them.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from frcnn_trt import config as C
from frcnn_trt import distributed
from frcnn_trt.data.loader import make_train_loader_from_config
from frcnn_trt.data.roidb_chain import RoidbEntry
from frcnn_trt.errors import TrainingError
from frcnn_trt.log import IterationProgress, get_logger
from frcnn_trt.model.checkpoint import (
    CheckpointInfo,
    load_solver_state,
    save_checkpoint,
    save_solver_state,
)
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.train.feature_cache import FeatureCache, body_is_cacheable
from frcnn_trt.train.metrics import METRICS_SUFFIX, MetricsLog, draw_stage, metrics_log, redraw
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


def set_trainable(model: FasterRCNN, groups: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """``requires_grad`` on exactly the parameters of ``groups``; returns them (named)."""
    all_groups = model.parameter_groups()
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
    """The newest ``*_iter_N`` solver state in ``output_dir`` (by N), or None."""
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


def _remove_solver_states(out: Path, stage: str, keep: Path | None = None) -> None:
    for old in out.glob(f"{stage}_iter_*{SOLVERSTATE_SUFFIX}"):
        if old != keep:
            old.unlink(missing_ok=True)
            old.with_name(old.name.replace(".safetensors", ".json")).unlink(missing_ok=True)


def _feature_cache(body: nn.Module, cfg: C.Config, given: FeatureCache | None) -> FeatureCache | None:
    """The cache for a frozen body's features (``given``, else one of ``TRAIN.FEATURE_CACHE_MB``), bound to
    ``body``; None when the body trains or the budget is 0."""
    cache = given if given is not None else FeatureCache(int(cfg.TRAIN.FEATURE_CACHE_MB),
                                                         bool(cfg.TRAIN.FEATURE_CACHE_UNPADDED))
    if cache.enabled and body_is_cacheable(body):
        cache.bind(body, cfg.PIXEL_MEANS)
        return cache
    return None


def _check_finite(stage: str, it: int, values: dict[str, float]) -> None:
    if not all(math.isfinite(v) for v in values.values()):
        raise TrainingError(f"{stage}: non-finite loss at iteration {it + 1}: "
                            + ", ".join(f"{k}={v:.6g}" for k, v in values.items())
                            + " — lower the learning rate or check the annotations")


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def train_stage(
    model: FasterRCNN,
    roidb: Sequence[RoidbEntry],
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
    curves: Callable[[], object] | None = None,
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

    ``curves`` draws the run's training curves (rank 0, at each snapshot and at the end); default: this stage's
    ``<name>_curves.png`` from its ``<name>_metrics.jsonl``.
    """
    out = Path(output_dir)
    distributed.init_distributed(device)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{spec.name}_final.safetensors"
    if resume and final.exists() and final.with_suffix(".json").exists():
        logger.info("%s: already finished (%s), not retrained", spec.name, final)
        return final
    run = StageRun(model, cfg, spec, out, class_names=class_names, device=device, extra_info=extra_info,
                   feature_cache=feature_cache)
    if resume:
        run.resume()
    run.log_batch()
    run.open_batches(roidb, cfg.TRAIN.NUM_WORKERS if num_workers is None else num_workers)
    with run.open_metrics(curves), IterationProgress(spec.label or spec.name, spec.max_iters, run.start,
                                                     enabled=run.main) as bar:
        for it in range(run.start, spec.max_iters):
            values, lr = run.step(it)
            bar.update(it + 1, values["total_loss"])
            if on_iteration is not None:
                on_iteration(it + 1, values)
            run.after_step(it + 1, values, lr)
    run.finish(final)
    return final


class StageRun:
    """One :func:`train_stage` call: its state, and the steps the loop is made of.

    Building it readies the model (trainable groups, feature cache), the solver and the seeded generator;
    :meth:`resume` restores a solver state; :meth:`open_batches` starts the loader; :meth:`step` runs one
    iteration; :meth:`after_step` logs and snapshots; :meth:`finish` writes the final checkpoint.
    """

    def __init__(self, model: FasterRCNN, cfg: C.Config, spec: StageSpec, out: Path, *, class_names: Sequence[str],
                 device: torch.device, extra_info: dict[str, Any] | None = None,
                 feature_cache: FeatureCache | None = None) -> None:
        self.model, self.cfg, self.spec, self.out, self.device = model, cfg, spec, out, device
        self.world, self.rank = distributed.get_world_size(), distributed.get_rank()
        self.main = self.rank == 0
        self.info_base: dict[str, Any] = dict(net=cfg.MODEL.NET, class_names=list(class_names), stage=spec.name,
                                              config=C.to_dict(cfg), extra=dict(extra_info or {}))
        if self.main:
            C.write_resolved(cfg, out, f"{spec.name}_config.yaml")
        model.to(device).train()
        named = set_trainable(model, spec.trainable)
        self.body: nn.Module = model.backbone.body
        self.cache = _feature_cache(self.body, cfg, feature_cache)
        self.params_by_name = dict(named)
        self.names_by_id = {id(p): n for n, p in named}
        self.iter_size = max(1, int(cfg.SOLVER.ITER_SIZE))
        self.ims_per_batch = int(cfg.TRAIN.IMS_PER_BATCH)
        self.per_iter = self.world * self.iter_size  # global batches per iteration
        self.base_lr = spec.base_lr * (self.world if cfg.SOLVER.SCALE_LR_WITH_WORLD_SIZE else 1)
        self.solver = Solver.from_config(named, cfg.SOLVER, base_lr=self.base_lr, stepsize=spec.stepsize)
        self.generator = torch.Generator().manual_seed(cfg.RNG_SEED)
        torch.manual_seed(cfg.RNG_SEED)
        self.amp = bool(cfg.AMP) and device.type == "cuda"
        self.start = 0  # the first iteration this call runs
        self.consumed = 0  # global batches consumed before it
        self.window: deque[dict[str, float]] = deque(maxlen=100)  # Caffe's average_loss 100
        self.t_data = 0.0
        self.t_start = time.perf_counter()
        self.metrics: MetricsLog | None = None  # rank 0, while open_metrics is open
        self.curves: Callable[[], object] = self.draw_curves

    # ------------------------------------------------------------------------------------------ set-up

    def resume(self) -> None:
        """Restore the newest solver state of the output folder (weights, momentum, RNG, position), if any."""
        state_path = latest_solver_state(self.out)
        if state_path is None:
            return
        weights, momentum, rng, meta = load_solver_state(state_path)
        self.model.load_state_dict(weights)
        self.solver.load_momentum_state(momentum, self.params_by_name)
        _set_rng_state(self.generator, rng)
        self.start = int(meta["iteration"])
        saved_per_iter = int(meta.get("batches_per_iteration", self.per_iter))
        self.consumed = int(meta.get("batches", self.start * saved_per_iter))
        logger.info("%s: resumed from %s at iteration %d (%d batches consumed)", self.spec.name, state_path.name,
                    self.start, self.consumed)
        self._warn_if_inexact(meta, saved_per_iter)

    def _warn_if_inexact(self, meta: dict[str, Any], saved_per_iter: int) -> None:
        name, per_iter, ims = self.spec.name, self.per_iter, self.ims_per_batch
        saved_ims = int(meta.get("ims_per_batch", ims))
        if saved_per_iter != per_iter or saved_ims != ims:
            logger.warning("%s: the snapshot was taken with %d batches of %d images per iteration, this run takes "
                           "%d of %d (%d processes × ITER_SIZE %d): training continues, but not as the uninterrupted "
                           "run would; keep processes × ITER_SIZE and IMS_PER_BATCH to resume exactly", name,
                           saved_per_iter, saved_ims, per_iter, ims, self.world, self.iter_size)
        saved_lr = meta.get("base_lr")
        if saved_lr is not None and not math.isclose(float(saved_lr), self.base_lr):
            logger.warning("%s: base lr %.6g differs from the snapshot's %.6g (SOLVER.SCALE_LR_WITH_WORLD_SIZE with "
                           "another world size?)", name, self.base_lr, float(saved_lr))

    def log_batch(self) -> None:
        """The effective batch and learning rate, and the single-process run this one equals."""
        _log_batch(self.spec, self.world, self.ims_per_batch, self.iter_size, self.spec.base_lr, self.base_lr,
                   bool(self.cfg.SOLVER.SCALE_LR_WITH_WORLD_SIZE))

    def open_batches(self, roidb: Sequence[RoidbEntry], num_workers: int) -> None:
        """Start the loader at batch ``consumed`` of the one global batch stream (this rank loads batches rank,
        rank + W, ...) and wrap the model for DistributedDataParallel under torchrun."""
        loader = make_train_loader_from_config(
            roidb, self.cfg, max_iters=self.consumed + (self.spec.max_iters - self.start) * self.per_iter,
            start_iter=self.consumed, num_workers=num_workers, pin_memory=self.device.type == "cuda")
        self.batches = iter(distributed.shard_loader(loader, self.world, self.rank))
        self.net: nn.Module = distributed.wrap_ddp(self.model, self.device) if self.world > 1 else self.model
        self.t_start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def open_metrics(self, curves: Callable[[], object] | None) -> Iterator[None]:
        """``<stage>_metrics.jsonl`` (rank 0), continued from iteration ``start``; closed, and the curves drawn, at
        the end of the block."""
        self.curves = curves or self.draw_curves
        path = self.out / f"{self.spec.name}{METRICS_SUFFIX}"
        with metrics_log(self.main, path, self.spec.name, start=self.start,
                         images_per_iter=self.per_iter * self.ims_per_batch, draw=lambda: self.curves()) as log:
            self.metrics = log
            try:
                yield
            finally:
                self.metrics = None

    def draw_curves(self) -> None:
        """This stage's ``<name>_curves.png`` from its metrics file."""
        draw_stage(self.out, self.spec.name, f"training curves · {self.spec.label or self.spec.name}")

    # ------------------------------------------------------------------------------------------ one iteration

    def step(self, it: int) -> tuple[dict[str, float], float]:
        """Iteration ``it``: ``ITER_SIZE`` micro-batches, their losses averaged (over all ranks too), one solver
        update. Returns the losses (with ``total_loss``) and the learning rate used."""
        if self.metrics is not None:
            self.metrics.start_iteration()
        values: dict[str, float] = {}
        for j in range(self.iter_size):
            for k, v in self._micro_batch(it, j).items():
                values[k] = values.get(k, 0.0) + float(v.detach()) / self.iter_size
        if self.world > 1:
            values = dict(zip(values, distributed.all_reduce_mean(list(values.values())), strict=True))
        _check_finite(self.spec.name, it, values)
        lr = self.solver.step(it)
        values["total_loss"] = sum(v for k, v in values.items() if k != "total_loss")
        return values, lr

    def _micro_batch(self, it: int, j: int) -> dict[str, torch.Tensor]:
        """Forward and backward of micro-batch ``j`` of iteration ``it``; gradients are synchronised across
        ranks on the last one only."""
        g = self.consumed + (it - self.start) * self.per_iter + j * self.world + self.rank  # its global batch number
        td = time.perf_counter()
        batch = next(self.batches).to(self.device, non_blocking=True)
        self.t_data += time.perf_counter() - td
        # the random draws of batch g do not depend on which rank (or accumulation step) runs it
        self.generator.manual_seed(distributed.batch_seed(self.cfg.RNG_SEED, g))
        torch.manual_seed(distributed.batch_seed(self.cfg.RNG_SEED, g, distributed.DROPOUT_STREAM))
        sync = j == self.iter_size - 1 or self.world == 1
        with contextlib.nullcontext() if sync else self.net.no_sync():  # type: ignore[operator]
            with torch.autocast(self.device.type, enabled=self.amp):
                feats = None if self.cache is None else self.cache.features(
                    self.body, batch.images, batch.im_info, batch.paths, batch.flipped)
                losses: dict[str, torch.Tensor] = self.net(batch, stage=self.spec.mode, generator=self.generator,
                                                           features=feats)
            total = cast(torch.Tensor, sum(losses.values()))
            (total / self.iter_size).backward()
        return losses

    # ------------------------------------------------------------------------------------------ after a step

    def after_step(self, done: int, values: dict[str, float], lr: float) -> None:
        """Every ``SOLVER.DISPLAY`` iterations (and the last) a log line; every ``TRAIN.SNAPSHOT_ITERS`` a snapshot."""
        self.window.append(values)
        if self.metrics is not None:
            self.metrics.append(done, values, lr)
        if done % max(1, int(self.cfg.SOLVER.DISPLAY)) == 0 or done == self.spec.max_iters:
            self._log(done, lr)
        snap = int(self.cfg.TRAIN.SNAPSHOT_ITERS)
        if self.main and snap > 0 and done % snap == 0 and done < self.spec.max_iters:
            self._snapshot(done)

    def _log(self, done: int, lr: float) -> None:
        spec = self.spec
        n_done = done - self.start
        s_iter = (time.perf_counter() - self.t_start) / max(n_done, 1)
        avg = {k: sum(w[k] for w in self.window) / len(self.window) for k in self.window[-1]}
        mem = (f", max mem {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f} MiB"
               if self.device.type == "cuda" else "")
        logger.info("%s%s iter %d/%d, eta %s, %s, lr %.3g, %.3f s/iter (data %.3f), %.1f img/s%s",
                    f"[{spec.label}] " if spec.label else "", spec.name, done, spec.max_iters,
                    _format_eta(s_iter * (spec.max_iters - done)),
                    ", ".join(f"{k} {v:.4f}" for k, v in avg.items()), lr, s_iter, self.t_data / max(n_done, 1),
                    self.per_iter * self.ims_per_batch / max(s_iter, 1e-9), mem)

    def _snapshot(self, done: int) -> None:
        """Checkpoint + solver state (weights, momentum, RNG, position) at iteration ``done``; older states go."""
        spec = self.spec
        meta = {"iteration": done, "stage": spec.name, "batches": self.consumed + (done - self.start) * self.per_iter,
                "batches_per_iteration": self.per_iter, "ims_per_batch": self.ims_per_batch,
                "world_size": self.world, "iter_size": self.iter_size, "base_lr": self.base_lr}
        prefix = self.out / f"{spec.name}_iter_{done}"
        if self.metrics is not None:
            self.metrics.sync()  # the rows up to here are on disk before the state a resume starts from
        save_checkpoint(prefix.with_suffix(".safetensors"), self.model,
                        CheckpointInfo(iteration=done, **self.info_base))
        state = self.out / f"{spec.name}_iter_{done}{SOLVERSTATE_SUFFIX}"
        save_solver_state(state, self.model, self.solver.momentum_state(self.names_by_id),
                          _rng_state(self.generator), meta)
        _remove_solver_states(self.out, spec.name, keep=state)
        logger.info("%s: snapshot %s", spec.name, prefix.with_suffix(".safetensors").name)
        redraw(self.curves, f"{spec.name}'s training curves")

    # ------------------------------------------------------------------------------------------ the end

    def finish(self, final: Path) -> None:
        """Stop the loader, write the final checkpoint (rank 0) and drop the solver states; all ranks leave
        together (the next stage, on every rank, reads what rank 0 wrote)."""
        del self.net, self.batches
        if self.cache is not None:
            logger.info("%s: feature cache: %s", self.spec.name, self.cache.stats.summary(self.cache))
        if self.main:
            path = save_checkpoint(final, self.model, CheckpointInfo(iteration=self.spec.max_iters, **self.info_base))
            _remove_solver_states(self.out, self.spec.name)
            logger.info("%s: wrote %s", self.spec.name, path)
        distributed.barrier()


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
