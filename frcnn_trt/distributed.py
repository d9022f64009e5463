"""Several processes, one training run: torchrun + DistributedDataParallel, and sharded dataset passes.

Glossary: ``W`` processes (world size), ``r`` this process's rank, ``B`` images per batch
(``TRAIN.IMS_PER_BATCH``), ``I`` batches per process and iteration (``SOLVER.ITER_SIZE``), ``g`` the global
batch number (position in the one batch stream of :class:`~frcnn_trt.data.loader.AspectGroupedBatchSampler`).

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` starts the process group from those variables -- NCCL when the device is a GPU
(one GPU per local rank, ``cuda:LOCAL_RANK``), gloo on CPU -- and does nothing when they are absent, so a
plain single-process run is unchanged. Only rank 0 writes files and logs below WARNING.

Training (:func:`frcnn_trt.train.loop.train_stage`). One iteration consumes ``W·I`` consecutive batches of
the global stream; global batch ``g`` goes to rank ``g mod W`` (:func:`shard_loader`: the ranks never share
a batch, nothing is dropped), and its random draws (anchor / RoI sampling generator, dropout) are seeded
from ``(RNG_SEED, g)`` (:func:`batch_seed`), not from the rank. DDP averages the gradients over ranks and
every rank divides its loss by ``I``, so the update is the mean over ``W·I`` batches -- exactly what one
process does with ``ITER_SIZE = W·I``. Hence the **equivalence rule**: a ``W``-process run with
``IMS_PER_BATCH B`` and ``ITER_SIZE I`` equals (up to floating-point summation order) the single-process run
with ``IMS_PER_BATCH B`` and ``ITER_SIZE W·I`` -- same batches, same samples, same losses, same weights.
(``IMS_PER_BATCH W·B`` would *not* be equivalent: the RPN and Fast R-CNN losses are means over the anchors /
RoIs of the whole batch, RoIs per image are ``BATCH_SIZE / IMS_PER_BATCH``, and the blob padding changes.)
The learning rate is the configured one unless ``SOLVER.SCALE_LR_WITH_WORLD_SIZE`` multiplies it by ``W``
(linear scaling); both are logged. Solver states count global iterations and consumed global batches,
so a run can resume with another world size (keep ``W·I`` to stay equivalent). (The sampler's own
``num_replicas`` grouping is not used: it skips each pass's incomplete last group of ``W`` batches, which
would break both the equivalence and a resume with another ``W`` at every pass boundary.) DDP holds only
the parameters a stage trains, so alt-opt's frozen parts are never all-reduced and no parameter goes
unused (``find_unused_parameters`` stays off).

Several machines: every machine must see the dataset and the output folder at the same path (a shared
filesystem): rank 0 writes checkpoints, proposals and solver states, and every rank reads them at stage
boundaries (after a barrier) and on resume.

Dataset passes (``rpn_generate``, ``test_net``, detect): :func:`shard` gives each rank every ``W``-th chunk of
``chunk`` consecutive items (a chunk = one inference batch, so batches are the same as in one process),
:func:`all_gather_arrays` collects the per-rank results (npz bytes over the process group, no pickle) and
:func:`unshard` restores the original order, so rank 0 writes the file a single process would write.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from frcnn_trt.errors import DeviceError, TrainingError
from frcnn_trt.log import LOGGER_NAME, get_logger

__all__ = [
    "DEFAULT_TIMEOUT",
    "ShardedBatchSampler",
    "all_gather_arrays",
    "all_gather_bytes",
    "all_gather_json",
    "all_reduce_mean",
    "barrier",
    "batch_seed",
    "broadcast_json",
    "device_for_rank",
    "env_world_size",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "resolve_device",
    "setup_device",
    "shard",
    "shard_indices",
    "shard_loader",
    "unshard",
    "wrap_ddp",
]

T = TypeVar("T")

logger = get_logger("distributed")

#: how long a collective waits for the slowest rank (rank 0 alone writes checkpoints, exports and builds
#: engines while the others wait at a barrier)
DEFAULT_TIMEOUT = timedelta(minutes=30)

#: seed streams of :func:`batch_seed`
SAMPLING_STREAM = 0x5A3D1E
DROPOUT_STREAM = 0xD80F


# --------------------------------------------------------------------------------------------------
# Process group.


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when absent)."""
    return _env_int("WORLD_SIZE", 1)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise TrainingError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (``RANK`` before the group starts; 0 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def get_world_size() -> int:
    """Processes in the running group (1 when none is running)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """Rank 0: the one process that writes files, logs and progress."""
    return get_rank() == 0


def device_for_rank(device: torch.device) -> torch.device:
    """Under torchrun with several processes, a CUDA device without an index is ``cuda:LOCAL_RANK``."""
    if device.type != "cuda" or device.index is not None or env_world_size() <= 1:
        return device
    local = _env_int("LOCAL_RANK", 0)
    count = torch.cuda.device_count()
    if local >= count:
        raise TrainingError(f"LOCAL_RANK {local} but only {count} CUDA device(s) are visible: start at most "
                            f"{count} processes per machine (torchrun --nproc-per-node {count})")
    return torch.device("cuda", local)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``None`` / ``""`` / ``"auto"`` → CUDA when torch sees a GPU, else CPU; ``cpu``, ``cuda``, ``cuda:1`` as given.

    Under torchrun with several processes a CUDA device without an index is this process's ``cuda:LOCAL_RANK``.
    No side effects: joining the process group is :func:`setup_device` / :func:`init_distributed`.
    A CUDA device where torch sees none, or a name torch does not know, is a :class:`DeviceError`.
    """
    if device is None or (isinstance(device, str) and device in ("", "auto")):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise DeviceError(f"invalid device {device!r}: {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} requested but torch {torch.__version__} sees no CUDA GPU here")
    return device_for_rank(dev)


def setup_device(device: str | torch.device | None = "auto") -> torch.device:
    """:func:`resolve_device`, then join torchrun's process group on it (nothing in a single process).

    What every command that may run under torchrun calls once, first.
    """
    dev = resolve_device(device)
    init_distributed(dev)
    return dev


class _RankPrefix(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_rank_prefixed", False):
            record.msg = f"[rank {self.rank}] {record.msg}"
            record._rank_prefixed = True  # type: ignore[attr-defined]
        return True


def init_distributed(device: torch.device | str | None = None, *, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Start the process group from torchrun's environment; returns whether one is running.

    Idempotent. Without ``WORLD_SIZE`` > 1 in the environment nothing happens (single process). The
    backend is NCCL for a CUDA ``device`` (which becomes the current device) and gloo otherwise. Ranks
    other than 0 log warnings and errors only, prefixed with their rank.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = env_world_size()
    if world <= 1:
        return False
    if not dist.is_available():
        raise TrainingError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise TrainingError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        dev = device_for_rank(dev)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
    extra: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, timeout=timeout, **extra)
    atexit.register(_destroy)
    rank = dist.get_rank()
    if rank != 0:
        pkg = logging.getLogger(LOGGER_NAME)
        pkg.setLevel(logging.WARNING)
        for handler in pkg.handlers:  # a logger's own filters do not see its children's records
            handler.addFilter(_RankPrefix(rank))
    logger.info("distributed: %d processes, backend %s, this is rank %d (local rank %s) on %s; rendezvous %s:%s",
                world, backend, rank, os.environ.get("LOCAL_RANK", "?"), dev, os.environ.get("MASTER_ADDR"),
                os.environ.get("MASTER_PORT"))
    return True


def _destroy() -> None:
    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


# --------------------------------------------------------------------------------------------------
# Collectives on plain data.


def all_reduce_mean(values: Sequence[float]) -> list[float]:
    """The mean of ``values`` over ranks, element-wise (the values themselves in a single process)."""
    if not is_distributed() or not values:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()


def all_gather_bytes(data: bytes, *, chunk_bytes: int = 1 << 28) -> list[bytes]:
    """Every rank's ``data``, indexed by rank. Sent in chunks of ``chunk_bytes`` (bounded GPU memory)."""
    if not is_distributed():
        return [bytes(data)]
    world, dev = dist.get_world_size(), _comm_device()
    size = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size)
    sizes = [int(s.item()) for s in sizes_t]
    mine = np.frombuffer(data, dtype=np.uint8)
    parts = [bytearray() for _ in range(world)]
    for off in range(0, max(sizes), chunk_bytes):
        n = min(chunk_bytes, max(sizes) - off)
        send = torch.zeros(n, dtype=torch.uint8, device=dev)
        piece = mine[off:off + n]
        if piece.size:
            send[:piece.size] = torch.from_numpy(piece.copy()).to(dev)
        recv = [torch.empty(n, dtype=torch.uint8, device=dev) for _ in range(world)]
        dist.all_gather(recv, send)
        for r in range(world):
            keep = max(0, min(n, sizes[r] - off))
            if keep:
                parts[r] += recv[r][:keep].cpu().numpy().tobytes()
    return [bytes(p) for p in parts]


def all_gather_arrays(arrays: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Every rank's named numpy arrays, indexed by rank (npz bytes on the wire; object arrays refused)."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise TypeError(f"all_gather_arrays: array {k!r} has dtype object (not sent: no pickle)")
    buf = io.BytesIO()
    payload: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    np.savez(buf, **payload)
    out = []
    for blob in all_gather_bytes(buf.getvalue()):
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            out.append({k: z[k] for k in z.files})
    return out


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's JSON-serialisable ``obj`` (file names, error messages, timings), indexed by rank."""
    return [json.loads(b) for b in all_gather_bytes(json.dumps(obj).encode("utf-8"))]


def broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-serialisable ``obj`` on every rank (e.g. the run folder rank 0 chose)."""
    if not is_distributed():
        return obj
    data = json.dumps(obj).encode("utf-8") if dist.get_rank() == 0 else b""
    return json.loads(all_gather_bytes(data)[0])


# --------------------------------------------------------------------------------------------------
# Sharding a dataset pass.


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    r = get_rank() if rank is None else int(rank)
    w = get_world_size() if world_size is None else int(world_size)
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"need 0 <= rank < world_size, got rank {r}, world_size {w}")
    return r, w


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None, *, chunk: int = 1) -> list[int]:
    """Indices ``0..n-1`` of this rank: chunks of ``chunk`` consecutive indices, chunk ``c`` to rank ``c mod W``.

    ``rank`` / ``world_size`` default to the running group's (0 / 1 without one). With ``chunk`` = the
    inference batch size, every rank forms exactly the batches one process would.
    """
    r, w = _rank_world(rank, world_size)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out: list[int] = []
    for start in range(r * chunk, n, w * chunk):
        out.extend(range(start, min(start + chunk, n)))
    return out


def shard(items: Sequence[T], rank: int | None = None, world_size: int | None = None, *, chunk: int = 1) -> list[T]:
    """This rank's items (see :func:`shard_indices`), in their original order."""
    return [items[i] for i in shard_indices(len(items), rank, world_size, chunk=chunk)]


def unshard(parts: Sequence[Sequence[T]], *, chunk: int = 1) -> list[T]:
    """Undo :func:`shard`: ``parts[r]`` is rank r's list; returns all items in the original order."""
    world = len(parts)
    n = sum(len(p) for p in parts)
    out: list[T] = [None] * n  # type: ignore[list-item]
    for r, part in enumerate(parts):
        idx = shard_indices(n, r, world, chunk=chunk)
        if len(idx) != len(part):
            raise ValueError(f"rank {r} returned {len(part)} items, its shard of {n} has {len(idx)}")
        for i, item in zip(idx, part, strict=True):
            out[i] = item
    return out


# --------------------------------------------------------------------------------------------------
# Training data and model.


def batch_seed(seed: int, index: int, stream: int = SAMPLING_STREAM) -> int:
    """A 63-bit seed for global batch ``index`` of a run seeded with ``seed`` (one value per ``stream``)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream), int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ShardedBatchSampler:
    """Every ``num_replicas``-th batch of ``batch_sampler`` from position ``rank``: batch ``i`` → rank ``i mod W``."""

    def __init__(self, batch_sampler: Any, num_replicas: int, rank: int) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank {rank}, num_replicas {num_replicas}")
        self.batch_sampler = batch_sampler
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.batch_sampler):
            if i % self.num_replicas == self.rank:
                yield batch

    def __len__(self) -> int:
        n = len(self.batch_sampler)
        return max(0, (n - self.rank + self.num_replicas - 1) // self.num_replicas)


def shard_loader(loader: DataLoader, num_replicas: int, rank: int) -> DataLoader:
    """The same DataLoader (dataset, collate, workers) yielding only this rank's batches of ``loader``.

    ``loader`` is the one-process loader over the global batch stream (``num_replicas=1``); this rank
    loads (in its workers) only batches ``rank, rank + W, ...`` of it.
    """
    if num_replicas == 1:
        return loader
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {"prefetch_factor": loader.prefetch_factor, "worker_init_fn": loader.worker_init_fn,
                 "persistent_workers": False}
    return DataLoader(
        loader.dataset,
        batch_sampler=ShardedBatchSampler(loader.batch_sampler, num_replicas, rank),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
        **extra,
    )


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel over its trainable parameters (call after ``set_trainable``).

    Frozen parameters (``requires_grad`` False) are not in DDP's buckets, so they are never all-reduced,
    and ``find_unused_parameters`` stays off: every trainable parameter of a stage takes part in its loss
    (alt-opt freezes the parts a stage does not use). Buffers are not re-broadcast every forward (they are
    the same on every rank: normalisation constants, frozen batch-norm statistics).
    """
    from torch.nn.parallel import DistributedDataParallel

    if not is_distributed():
        return model
    trainable = [p for p in model.parameters() if p.requires_grad]
    # no buffer broadcast before every forward (newer torch renames the option; both still sync at init)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    no_sync: dict[str, Any] = {key: False}
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False,
        **no_sync,
    )
    logger.info("DDP over %d processes: all-reducing %d trainable parameter tensors (%.2f M values); %d frozen "
                "tensors are not reduced", dist.get_world_size(), len(trainable),
                sum(p.numel() for p in trainable) / 1e6,
                sum(1 for p in model.parameters() if not p.requires_grad))
    return ddp
