"""The alt-opt schedule on a real short run: the stage table, proposals flowing between stages, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from frcnn_trt import config as C
from frcnn_trt.data.factory import get_imdb
from frcnn_trt.errors import ConfigError
from frcnn_trt.model.checkpoint import load_tensors
from frcnn_trt.train import alt_opt
from frcnn_trt.train.rpn_generate import load_proposals
from frcnn_trt.train.solver import Solver
from tests.helpers import tiny_cfg

GROUPS = ("conv", "rpn", "fc", "predictor")


def _cfg() -> C.Config:
    cfg = tiny_cfg(SOLVER={"DISPLAY": 10}, TRAIN={"SNAPSHOT_ITERS": 1, "BG_THRESH_LO": 0.0},
                   ALT_OPT={"BASE_LRS": [0.01, 0.01, 0.01, 0.01]})
    return alt_opt.with_iters(cfg, (2, 2, 2, 2))


def _by_group(model: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {g: {n: p.detach().clone() for n, p in params} for g, params in model.parameter_groups().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


@pytest.fixture(scope="module")
def recorded(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted alt-opt run with every stage's model recorded before and after training."""
    imdb = get_imdb(f"synth:{synth_dir}:trainval")
    out = tmp_path_factory.mktemp("altopt") / "full"
    seen: dict[str, Any] = {}
    real = alt_opt.train_stage

    def spy(model, roidb, cfg, spec, *args, **kwargs):  # type: ignore[no-untyped-def]
        before = _by_group(model)
        path = real(model, roidb, cfg, spec, *args, **kwargs)
        cache = kwargs["feature_cache"]
        seen[spec.name] = {"before": before, "after": _by_group(model), "roidb": list(roidb), "cfg": cfg,
                           "spec": spec, "cache": cache, "cached": len(cache),
                           "lookups": cache.stats.hits + cache.stats.misses, "whole": cache.stats.uncached_batches,
                           "hits": cache.stats.hits}
        return path

    mp = pytest.MonkeyPatch()
    mp.setattr(alt_opt, "train_stage", spy)
    try:
        result = alt_opt.train_alt_opt(_cfg(), imdb, out, backend="torch", device="cpu")
    finally:
        mp.undo()
    return {"stages": seen, "result": result, "imdb": imdb, "out": out}


def test_stage_table(recorded: dict[str, Any]) -> None:
    s = recorded["stages"]
    assert list(s) == ["stage1_rpn", "stage1_fast_rcnn", "stage2_rpn", "stage2_fast_rcnn"]
    trains = {"stage1_rpn": {"conv", "rpn"}, "stage1_fast_rcnn": {"conv", "fc", "predictor"},
              "stage2_rpn": {"rpn"}, "stage2_fast_rcnn": {"fc", "predictor"}}
    for name, groups in trains.items():
        for g in GROUPS:
            before, after = s[name]["before"][g], s[name]["after"][g]
            if g in groups:
                assert _changed(before, after), f"{name}: {g} should train"
            else:
                assert _same(before, after), f"{name}: {g} should stay frozen"
    # images per batch: 1 for RPN stages, 2 for Fast R-CNN stages; BG_THRESH_LO 0.0 carried through
    assert [s[n]["cfg"].TRAIN.IMS_PER_BATCH for n in s] == [1, 2, 1, 2]
    assert s["stage1_fast_rcnn"]["cfg"].TRAIN.BG_THRESH_LO == 0.0 and not s["stage1_fast_rcnn"]["cfg"].TRAIN.HAS_RPN


def test_stage2_stages_share_one_feature_cache(recorded: dict[str, Any]) -> None:
    """The conv is frozen in stage 2 only: both stage-2 stages use one cache of per-image features, which the
    stage-1 stages (whose conv trains) leave alone; it is emptied once alt-opt is done."""
    s = recorded["stages"]
    assert len({id(s[n]["cache"]) for n in s}) == 1
    assert s["stage1_rpn"]["cached"] == s["stage1_fast_rcnn"]["cached"] == 0
    # stage-2 RPN: 2 iterations × 1 image, both cached; stage-2 Fast R-CNN: 2 × 2 images, where a pair of mixed
    # sizes is computed whole (TRAIN.FEATURE_CACHE_UNPADDED off) and the others are looked up
    assert s["stage2_rpn"]["cached"] == s["stage2_rpn"]["lookups"] == 2
    frcn = s["stage2_fast_rcnn"]
    assert frcn["lookups"] + 2 * frcn["whole"] == 4 and frcn["cached"] == 2 + frcn["lookups"] - frcn["hits"]
    assert len(s["stage2_fast_rcnn"]["cache"]) == 0


def test_where_each_stage_starts(recorded: dict[str, Any]) -> None:
    s = recorded["stages"]
    # stage-1 Fast R-CNN starts from the "ImageNet" init again (here: the same seeded random init), not the RPN
    assert _same(s["stage1_fast_rcnn"]["before"]["conv"], s["stage1_rpn"]["before"]["conv"])
    assert not _same(s["stage1_fast_rcnn"]["before"]["conv"], s["stage1_rpn"]["after"]["conv"])
    # stage-2 RPN starts from the stage-1 Fast R-CNN model, whose RPN head is the never-trained random init
    for g in ("conv", "fc"):
        assert _same(s["stage2_rpn"]["before"][g], s["stage1_fast_rcnn"]["after"][g])
    assert _same(s["stage2_rpn"]["before"]["rpn"], s["stage1_fast_rcnn"]["before"]["rpn"])
    # stage-2 Fast R-CNN starts from the stage-2 RPN model with cls_score / bbox_pred re-initialised
    for g in ("conv", "rpn", "fc"):
        assert _same(s["stage2_fast_rcnn"]["before"][g], s["stage2_rpn"]["after"][g])
    assert not _same(s["stage2_fast_rcnn"]["before"]["predictor"], s["stage2_rpn"]["after"]["predictor"])


def test_final_model_is_stage2_fast_rcnn(recorded: dict[str, Any]) -> None:
    res = recorded["result"]
    final, frcn2 = load_tensors(res.final), load_tensors(res.stage_checkpoints["stage2_fast_rcnn"])
    assert final.keys() == frcn2.keys() and all(torch.equal(final[k], frcn2[k]) for k in final)
    rpn2 = load_tensors(res.stage_checkpoints["stage2_rpn"])
    for k in final:
        if k.startswith(("rpn.", "backbone.body.")):
            assert torch.equal(final[k], rpn2[k]), k


def test_proposals_of_a_stage_feed_the_next(recorded: dict[str, Any]) -> None:
    res, s, imdb = recorded["result"], recorded["stages"], recorded["imdb"]
    props = load_proposals(res.proposals["stage1_proposals"])
    assert props.meta["settings"]["pre_nms_top_n"] == -1 and props.meta["settings"]["post_nms_top_n"] == 2000
    assert props.image_ids == [a.image_id for a in imdb.annotations()]
    roidb = s["stage1_fast_rcnn"]["roidb"]
    entry = next(e for e in roidb if not e.flipped and len(props.boxes[e.image_id]) > 0)
    g = entry.num_gt
    np.testing.assert_allclose(entry.boxes[g:], props.boxes[entry.image_id])
    flipped = next(e for e in roidb if e.flipped and e.image_id == entry.image_id)
    w = entry.width
    np.testing.assert_allclose(flipped.boxes[g:, 0], w - props.boxes[entry.image_id][:, 2] - 1)
    # the stage-2 roidb is built from the stage-2 RPN's proposals
    props2 = load_proposals(res.proposals["stage2_proposals"])
    assert props2.meta["model_sha256"] != props.meta["model_sha256"]
    entry2 = next(e for e in s["stage2_fast_rcnn"]["roidb"] if e.image_id == entry.image_id and not e.flipped)
    np.testing.assert_allclose(entry2.boxes[entry2.num_gt:], props2.boxes[entry.image_id])


@pytest.mark.parametrize("crash", [("stage1_fast_rcnn", 1), ("stage2_rpn", 0)], ids=["mid-stage", "boundary"])
def test_resume_gives_the_same_final_weights(recorded: dict[str, Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, crash: tuple[str, int]) -> None:
    imdb = recorded["imdb"]
    stage, at = crash
    real_step = Solver.step
    current: dict[str, str] = {}
    real_train = alt_opt.train_stage

    def track(model, roidb, cfg, spec, *args, **kwargs):  # type: ignore[no-untyped-def]
        current["stage"] = spec.name
        return real_train(model, roidb, cfg, spec, *args, **kwargs)

    def crashing(self: Solver, iteration: int) -> float:
        if current.get("stage") == stage and iteration == at:
            raise KeyboardInterrupt
        return real_step(self, iteration)

    monkeypatch.setattr(alt_opt, "train_stage", track)
    monkeypatch.setattr(Solver, "step", crashing)
    with pytest.raises(KeyboardInterrupt):
        alt_opt.train_alt_opt(_cfg(), imdb, tmp_path, backend="torch", device="cpu")
    monkeypatch.setattr(Solver, "step", real_step)
    res = alt_opt.train_alt_opt(_cfg(), imdb, tmp_path, backend="torch", device="cpu", resume=True)
    a, b = load_tensors(recorded["result"].final), load_tensors(res.final)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_iters_option() -> None:
    assert alt_opt.parse_iters("80000,40000,80000,40000") == (80000, 40000, 80000, 40000)
    cfg = alt_opt.with_iters(C.Config(), (800, 400, 800, 400))
    assert cfg.ALT_OPT.STEPSIZES == (600, 300, 600, 300)
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,0"):
        with pytest.raises(ConfigError, match="--iters"):
            alt_opt.parse_iters(bad)


def test_rpn_generate_threads_write_the_same_file(recorded: dict[str, Any], tmp_path: Path) -> None:
    from types import SimpleNamespace

    from frcnn_trt.engines.runner import default_threads as propose_threads
    from frcnn_trt.train.rpn_generate import rpn_generate

    res, imdb = recorded["result"], recorded["imdb"]
    model = res.stage_checkpoints["stage2_rpn"]
    files = {}
    for n in (1, 3):
        path, stats = rpn_generate(model, imdb, _cfg(), tmp_path / f"p{n}.npz", backend="torch", device="cpu",
                                   resume=False, threads=n)
        assert stats["threads"] == n
        files[n] = load_proposals(path)
    a, b = files[1], files[3]
    assert a.image_ids == b.image_ids
    assert all(np.array_equal(a.boxes[i], b.boxes[i]) and np.array_equal(a.scores[i], b.scores[i]) for i in a.image_ids)

    def det(name: str, device: str) -> Any:
        return SimpleNamespace(backend=SimpleNamespace(name=name, device=torch.device(device),
                                                       concurrent_calls=name in ("torch", "onnxruntime")))

    assert propose_threads(det("tensorrt", "cuda")) == 1 and propose_threads(det("torch", "cuda")) == 1
    assert 1 <= propose_threads(det("onnxruntime", "cpu")) <= 4 and propose_threads(det("tensorrt", "cuda"), 2) == 2
