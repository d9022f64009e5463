"""One process of a multi-process test run (started by tests/train/test_distributed.py the way torchrun starts
workers: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment).

``python -m tests.train.dist_worker JOBS.json``: runs the jobs of the file in order through the library API
(which starts the process group from the environment, as under torchrun) and writes what a test compares
(loss traces, DDP bucket statistics, the detect summary and console output) as ``<out>/<job>.rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn_trt import config as C
from frcnn_trt import distributed
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.model.checkpoint import load_checkpoint
from frcnn_trt.train import alt_opt, end2end
from frcnn_trt.train.solver import Solver


class Interrupted(Exception):
    """Stands for a killed run (raised on every rank at the same iteration)."""


RECORD: dict[str, Any] = {}  # what the current job records
_REAL_STEP = Solver.step
_CRASH: dict[str, int | None] = {"at": None}


def _install_spies() -> None:
    """Collect every stage's losses and DDP statistics into RECORD; crash on request."""
    real_wrap = distributed.wrap_ddp

    def stage_spy(real: Any) -> Any:
        def spy(model, roidb, cfg, spec, *args, **kwargs):  # type: ignore[no-untyped-def]
            trace = RECORD.setdefault("losses", {}).setdefault(spec.name, [])
            kwargs["on_iteration"] = lambda it, values: trace.append(dict(values))
            RECORD["current"] = spec.name
            return real(model, roidb, cfg, spec, *args, **kwargs)
        return spy

    def wrap_spy(model, device):  # type: ignore[no-untyped-def]
        ddp = real_wrap(model, device)
        data = ddp._get_ddp_logging_data() if ddp is not model else {}
        trainable = [p for p in model.parameters() if p.requires_grad]
        RECORD.setdefault("ddp", {})[RECORD.get("current", "?")] = {
            "reduced_tensors": data.get("num_parameter_tensors"),
            "reduced_bytes": data.get("total_parameter_size_bytes"),
            "find_unused_parameters": data.get("find_unused_parameters"),
            "trainable_tensors": len(trainable),
            "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable)}
        return ddp

    def step(self: Solver, it: int) -> float:
        if _CRASH["at"] is not None and it == _CRASH["at"]:
            raise Interrupted(f"interrupted at iteration {it}")
        return _REAL_STEP(self, it)

    for m in (end2end, alt_opt):
        m.train_stage = stage_spy(m.train_stage)  # type: ignore[attr-defined]
    distributed.wrap_ddp = wrap_spy  # type: ignore[assignment]
    Solver.step = step  # type: ignore[method-assign]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    RECORD.clear()
    _CRASH["at"] = job.get("crash_at")
    kind = job["kind"]
    cfg = C.from_dict(job["cfg"]) if "cfg" in job else None
    imdb = get_imdb(job["imdb"]) if "imdb" in job else None
    try:
        if kind == "end2end":
            end2end.train_end2end(cfg, imdb, job["out"], device="cpu", resume=job.get("resume", False))
        elif kind == "alt_opt":
            alt_opt.train_alt_opt(cfg, imdb, job["out"], backend="torch", device="cpu")
        elif kind == "rpn_generate":
            from frcnn_trt.train.rpn_generate import rpn_generate

            rpn_generate(job["model"], imdb, cfg, job["out"], backend="torch", device="cpu",
                         batch_size=job.get("batch_size", 1), resume=False)
        elif kind == "test_net":
            from frcnn_trt.inference import test_net

            model, _ = load_checkpoint(job["model"])
            res = test_net(model, imdb, model.cfg, job["out"], batch_size=job.get("batch_size", 1))
            RECORD["evaluated"] = res.result is not None
        elif kind == "detect":
            import io

            from rich.console import Console

            from frcnn_trt.detect import run_detect

            con = Console(file=io.StringIO(), width=200, highlight=False, soft_wrap=True)
            summary = run_detect(job["source"], checkpoint=job["model"], backend="torch", device="cpu",
                                 project=job["project"], coco_json=job.get("coco_json"), conf_thresh=0.2,
                                 batch_size=job.get("batch_size", 1), console=con)
            RECORD["summary"] = summary.to_dict()
            RECORD["printed"] = con.file.getvalue()
        elif kind == "collectives":
            rank = distributed.get_rank()
            RECORD["json"] = distributed.all_gather_json({"rank": rank})
            RECORD["broadcast"] = distributed.broadcast_json(f"from rank {rank}")
            blobs = distributed.all_gather_bytes(bytes(range(rank * 7 + 3)), chunk_bytes=4)
            RECORD["bytes"] = [list(b) for b in blobs]
            arrays = distributed.all_gather_arrays({"x": np.arange(rank + 1, dtype=np.float32),
                                                    "empty": np.zeros((0, 4), np.float32)})
            RECORD["arrays"] = [[a["x"].tolist(), list(a["empty"].shape)] for a in arrays]
            RECORD["mean"] = distributed.all_reduce_mean([rank, 10.0 * rank])
            RECORD["shard"] = distributed.shard(list(range(7)), chunk=2)
            distributed.barrier()
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    except Interrupted as exc:
        RECORD["interrupted"] = str(exc)
    RECORD.pop("current", None)
    return dict(RECORD)


def main(jobs_file: str) -> None:
    torch.set_num_threads(1)
    jobs = json.loads(Path(jobs_file).read_text())
    _install_spies()
    distributed.init_distributed("cpu")  # what resolve_device does under torchrun
    rank = distributed.get_rank()
    for job in jobs:
        record = run_job(job)
        Path(job["record"]).with_suffix(f".rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
