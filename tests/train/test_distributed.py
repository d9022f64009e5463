"""Several processes (gloo on CPU, started as torchrun starts them) against the equivalent single process.

The rule under test (frcnn_trt.distributed): W processes with ITER_SIZE I equal one process with
ITER_SIZE W·I -- same losses, same weights (up to floating-point summation order); sharded rpn_generate and
test_net write the files one process writes; a run resumes from a snapshot taken with another world size.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from frcnn_trt import config as C
from frcnn_trt import distributed
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.inference import test_net as run_test_net
from frcnn_trt.model.checkpoint import load_checkpoint, load_tensors, read_info
from frcnn_trt.train import alt_opt, end2end
from frcnn_trt.train.rpn_generate import load_proposals, rpn_generate
from frcnn_trt.train.solver import Solver
from tests.helpers import tiny_cfg

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
ITER_SIZE = 2  # per process in the end2end runs (gradient accumulation under DDP's no_sync)
ITERS = 3
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _e2e_cfg(iter_size: int, snapshot: int = 0) -> C.Config:
    return tiny_cfg(SOLVER={"MAX_ITERS": ITERS, "STEPSIZE": 2, "ITER_SIZE": iter_size, "DISPLAY": 100},
                    TRAIN={"IMS_PER_BATCH": 1, "SNAPSHOT_ITERS": snapshot})


def _alt_cfg(iter_size: int) -> C.Config:
    cfg = tiny_cfg(SOLVER={"DISPLAY": 100, "ITER_SIZE": iter_size}, TRAIN={"SNAPSHOT_ITERS": 0, "BG_THRESH_LO": 0.0},
                   ALT_OPT={"BASE_LRS": [0.01, 0.01, 0.01, 0.01]})
    return alt_opt.with_iters(cfg, (2, 1, 2, 1))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(jobs: list[dict[str, Any]], tmp: Path, world: int = WORLD, timeout: float = 300) -> None:
    """Run ``jobs`` in ``world`` processes with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, ...)."""
    jobs_file = tmp / f"jobs_{len(list(tmp.glob('jobs_*')))}.json"
    jobs_file.write_text(json.dumps(jobs))
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        log = open(tmp / f"worker{rank}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen([sys.executable, "-m", "tests.train.dist_worker", str(jobs_file)], cwd=ROOT,
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for rank, (p, log) in enumerate(procs):
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            rc = -9
        log.close()
        if rc != 0:
            failed.append(f"rank {rank} exited {rc}:\n{(tmp / f'worker{rank}.log').read_text()[-4000:]}")
    assert not failed, "\n".join(failed)


def _job(kind: str, name: str, tmp: Path, **kw: Any) -> dict[str, Any]:
    cfg = kw.pop("cfg", None)
    job = {"kind": kind, "record": str(tmp / f"{name}.json"), **kw}
    if cfg is not None:
        job["cfg"] = C.to_dict(cfg)
    return job


def _record(tmp: Path, name: str, rank: int = 0) -> dict[str, Any]:
    return json.loads((tmp / f"{name}.rank{rank}.json").read_text())


def _spy_losses(module: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, float]]]:
    seen: dict[str, list[dict[str, float]]] = {}
    real = module.train_stage

    def spy(model, roidb, cfg, spec, *args, **kwargs):  # type: ignore[no-untyped-def]
        trace = seen.setdefault(spec.name, [])
        kwargs["on_iteration"] = lambda it, values: trace.append(dict(values))
        return real(model, roidb, cfg, spec, *args, **kwargs)

    monkeypatch.setattr(module, "train_stage", spy)
    return seen


def _assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_tensors(a), load_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], **TOL, msg=k)


def _assert_same_losses(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    assert len(a) == len(b) and a
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), f"iteration {i + 1}: {k}"


@pytest.fixture(scope="module")
def runs(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The W-process runs (one launch of WORLD processes) and their single-process equivalents."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run with one thread each: same kernels, same summation order
    tmp = tmp_path_factory.mktemp("dist")
    imdb_name = f"synth:{synth_dir}:trainval"
    imdb = get_imdb(imdb_name)
    mp = pytest.MonkeyPatch()
    try:
        # a single-process run (ITER_SIZE W·I) cut at iteration 2, for the W processes to resume
        real_step = Solver.step

        def crash(self: Solver, it: int) -> float:
            if it == 2:
                raise KeyboardInterrupt
            return real_step(self, it)

        mp.setattr(Solver, "step", crash)
        with pytest.raises(KeyboardInterrupt):
            end2end.train_end2end(_e2e_cfg(WORLD * ITER_SIZE, snapshot=2), imdb, tmp / "cut1", device="cpu")
        mp.setattr(Solver, "step", real_step)

        e2e = tmp / "e2e_w2"
        final_w2 = e2e / "end2end_final.safetensors"
        jobs = [
            _job("collectives", "collectives", tmp),
            _job("end2end", "e2e_w2", tmp, cfg=_e2e_cfg(ITER_SIZE), imdb=imdb_name, out=str(e2e)),
            _job("end2end", "cut2", tmp, cfg=_e2e_cfg(ITER_SIZE, snapshot=2), imdb=imdb_name, out=str(tmp / "cut2"),
                 crash_at=2),
            _job("end2end", "resume1", tmp, cfg=_e2e_cfg(ITER_SIZE, snapshot=2), imdb=imdb_name,
                 out=str(tmp / "cut1"), resume=True),
            _job("rpn_generate", "props_w2", tmp, cfg=_e2e_cfg(1), imdb=imdb_name, model=str(final_w2),
                 out=str(tmp / "props_w2.npz"), batch_size=2),
            _job("test_net", "test_w2", tmp, imdb=imdb_name, model=str(final_w2), out=str(tmp / "test_w2"),
                 batch_size=2),
            _job("alt_opt", "alt_w2", tmp, cfg=_alt_cfg(1), imdb=imdb_name, out=str(tmp / "alt_w2")),
        ]
        launch(jobs, tmp)

        # the single-process equivalents
        e2e_losses = _spy_losses(end2end, mp)
        final_w1 = end2end.train_end2end(_e2e_cfg(WORLD * ITER_SIZE), imdb, tmp / "e2e_w1", device="cpu")
        e2e_trace = e2e_losses.pop("end2end")
        resumed2 = end2end.train_end2end(_e2e_cfg(WORLD * ITER_SIZE, snapshot=2), imdb, tmp / "cut2", device="cpu",
                                         resume=True)
        props_w1, _ = rpn_generate(final_w2, imdb, _e2e_cfg(1), tmp / "props_w1.npz", backend="torch", device="cpu",
                                   batch_size=2, resume=False)
        model, _ = load_checkpoint(final_w2)
        run_test_net(model, imdb, model.cfg, tmp / "test_w1", batch_size=2)
        alt_losses = _spy_losses(alt_opt, mp)
        alt_w1 = alt_opt.train_alt_opt(_alt_cfg(WORLD), imdb, tmp / "alt_w1", backend="torch", device="cpu")
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return {"tmp": tmp, "final_w1": final_w1, "final_w2": final_w2, "e2e_losses": e2e_trace,
            "resumed2": resumed2, "props_w1": props_w1, "alt_w1": alt_w1, "alt_losses": alt_losses}


def test_end2end_matches_single_process_with_iter_size_w_times_i(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    rec = [_record(tmp, "e2e_w2", r) for r in range(WORLD)]
    # every rank sees the losses averaged over all ranks, equal to one process's ITER_SIZE W·I average
    assert rec[0]["losses"]["end2end"] == rec[1]["losses"]["end2end"]
    _assert_same_losses(rec[0]["losses"]["end2end"], runs["e2e_losses"])
    _assert_same_weights(runs["final_w2"], runs["final_w1"])
    # the output folder holds what one process writes: the final checkpoint, the resolved config, the metrics
    # file and its curves (rank 0 only)
    assert sorted(p.name for p in (tmp / "e2e_w2").iterdir() if p.is_file()) == [
        "end2end_config.yaml", "end2end_curves.png", "end2end_final.json", "end2end_final.safetensors",
        "end2end_metrics.jsonl"]
    # DDP all-reduces exactly the trainable parameters
    ddp = rec[0]["ddp"]["end2end"]
    assert ddp["reduced_tensors"] == ddp["trainable_tensors"] and ddp["reduced_bytes"] == ddp["trainable_bytes"]
    assert ddp["find_unused_parameters"] == 0


def test_alt_opt_matches_single_process(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    rec = _record(tmp, "alt_w2")
    assert list(rec["losses"]) == [s[0] for s in alt_opt.TRAIN_STAGES]
    for stage, trace in rec["losses"].items():
        _assert_same_losses(trace, runs["alt_losses"][stage])
    _assert_same_weights(tmp / "alt_w2" / "tiny_faster_rcnn_final.safetensors", runs["alt_w1"].final)
    # frozen groups stay out of DDP: stage 2 reduces only the RPN head, then only fc + predictor
    for stage, ddp in rec["ddp"].items():
        assert ddp["reduced_tensors"] == ddp["trainable_tensors"], stage
        assert ddp["reduced_bytes"] == ddp["trainable_bytes"], stage
    assert rec["ddp"]["stage2_rpn"]["reduced_tensors"] < rec["ddp"]["stage1_rpn"]["reduced_tensors"]
    # the proposals of the W-process run are those of the single-process run
    for tag in ("stage1_proposals", "stage2_proposals"):
        a = load_proposals(tmp / "alt_w2" / tag / "proposals.npz")
        b = load_proposals(runs["alt_w1"].proposals[tag])
        assert a.image_ids == b.image_ids
        for i in a.image_ids:
            np.testing.assert_allclose(a.boxes[i], b.boxes[i], rtol=1e-5, atol=1e-3)


def test_sharded_rpn_generate_writes_the_single_process_file(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    a, b = load_proposals(tmp / "props_w2.npz"), load_proposals(runs["props_w1"])
    assert a.image_ids == b.image_ids and len(a.image_ids) == 12
    for i in a.image_ids:
        assert len(a.boxes[i]) > 0
        np.testing.assert_array_equal(a.boxes[i], b.boxes[i])
        np.testing.assert_array_equal(a.scores[i], b.scores[i])
    sa, sb = a.meta.pop("stats"), b.meta.pop("stats")
    assert a.meta == b.meta
    assert (sa["processes"], sb["processes"], sa["images"]) == (WORLD, 1, 12)


def test_sharded_test_net_writes_the_single_process_files(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    a, b = tmp / "test_w2", tmp / "test_w1"
    assert [_record(tmp, "test_w2", r)["evaluated"] for r in range(WORLD)] == [True, False]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert Path("predictions.json") in files and Path("eval.json") in files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_resume_with_another_world_size(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    # W processes (ITER_SIZE I), interrupted at iteration 2, resumed by one process with ITER_SIZE W·I
    assert _record(tmp, "cut2")["interrupted"]
    assert read_info(runs["resumed2"]).iteration == ITERS
    _assert_same_weights(runs["resumed2"], runs["final_w1"])
    # one process (ITER_SIZE W·I), interrupted at iteration 2, resumed by W processes (ITER_SIZE I)
    rec = _record(tmp, "resume1")
    assert len(rec["losses"]["end2end"]) == ITERS - 2
    _assert_same_losses(rec["losses"]["end2end"], runs["e2e_losses"][2:])
    _assert_same_weights(tmp / "cut1" / "end2end_final.safetensors", runs["final_w1"])


def test_collectives(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    rec = [_record(tmp, "collectives", r) for r in range(WORLD)]
    for r in range(WORLD):
        assert rec[r]["json"] == [{"rank": 0}, {"rank": 1}]
        assert rec[r]["broadcast"] == "from rank 0"
        assert rec[r]["bytes"] == [list(range(3)), list(range(10))]  # uneven sizes, several 4-byte chunks
        assert rec[r]["arrays"] == [[[0.0], [0, 4]], [[0.0, 1.0], [0, 4]]]
        assert rec[r]["mean"] == [0.5, 5.0]
    assert [rec[r]["shard"] for r in range(WORLD)] == [[0, 1, 4, 5], [2, 3, 6]]


def test_sharding_helpers() -> None:
    items = list(range(11))
    parts = [distributed.shard(items, r, 3, chunk=2) for r in range(3)]
    assert parts == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10]]
    assert distributed.unshard(parts, chunk=2) == items
    assert distributed.shard(items) == items  # no process group: everything
    assert distributed.shard_indices(2, 2, 3) == []
    with pytest.raises(ValueError, match="rank 3"):
        distributed.shard(items, 3, 3)
    with pytest.raises(ValueError, match="returned 1 items"):
        distributed.unshard([[0], [1, 2]], chunk=2)
    assert distributed.get_world_size() == 1 and distributed.is_main_process()
    assert distributed.all_gather_arrays({"a": np.arange(3)})[0]["a"].tolist() == [0, 1, 2]
    assert distributed.all_reduce_mean([1.0, 2.0]) == [1.0, 2.0]
    # the seed of a batch depends on (seed, batch number, stream) only
    assert distributed.batch_seed(3, 7) == distributed.batch_seed(3, 7) != distributed.batch_seed(3, 8)
    assert distributed.batch_seed(3, 7) != distributed.batch_seed(3, 7, distributed.DROPOUT_STREAM)
    sampler = distributed.ShardedBatchSampler([[0], [1], [2], [3], [4]], 2, 1)
    assert list(sampler) == [[1], [3]] and len(sampler) == 2
    assert distributed.broadcast_json({"a": 1}) == {"a": 1} and distributed.all_gather_json(2) == [2]


def test_torchrun_cli_end2end(synth_dir: Path, tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m frcnn_trt train end2end``: DDP on gloo, rank 0 alone prints and writes."""
    cfg_file = tmp_path / "tiny.yml"
    cfg_file.write_text(C.dump(_e2e_cfg(1)))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "frcnn_trt", "train", "end2end", "--imdb", f"synth:{synth_dir}:trainval", "--net", "tiny",
           "--iters", "2", "--cfg", str(cfg_file), "--output", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.count("final model") == 1  # rank 1 prints nothing
    assert f"{WORLD} processes × IMS_PER_BATCH 1 × ITER_SIZE 1 = {WORLD} images per iteration" in r.stderr
    assert f"equals one process with IMS_PER_BATCH 1, ITER_SIZE {WORLD}" in r.stderr
    assert "backend gloo" in r.stderr
    rank1 = [line for line in r.stderr.splitlines() if "[rank 1]" in line]
    assert rank1 and all(" W [rank 1] " in line for line in rank1)  # other ranks log warnings only
    assert read_info(out / "end2end_final.safetensors").iteration == 2
