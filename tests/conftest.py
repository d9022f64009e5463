"""Fixtures shared across the suite: a small synthetic dataset and a tiny-net config (nothing downloaded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from frcnn_trt import config as C


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 small synthetic images (12 trainval, 4 test), made once per session."""
    from frcnn_trt.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synth") / "shapes"
    make_synthetic_dataset(out, num_images=16, image_size=(160, 120), seed=1)
    return out


def tiny_cfg(**sections: object) -> C.Config:
    """The tiny CPU net at a small scale, end2end settings; ``sections`` override on top."""
    cfg = C.load(C.builtin("faster_rcnn_end2end"))
    cfg = C.override(
        cfg,
        MODEL={"NET": "tiny", "ANCHOR_SCALES": [2, 4, 8]},
        TRAIN={"SCALES": [112], "MAX_SIZE": 160, "RPN_MIN_SIZE": 4, "SNAPSHOT_ITERS": 0, "NUM_WORKERS": 0,
               "RPN_PRE_NMS_TOP_N": 600, "RPN_POST_NMS_TOP_N": 100, "BATCH_SIZE": 32, "RPN_BATCHSIZE": 64},
        TEST={"SCALES": [112], "MAX_SIZE": 160, "RPN_MIN_SIZE": 4, "RPN_PRE_NMS_TOP_N": 300, "RPN_POST_NMS_TOP_N": 50},
        SOLVER={"BASE_LR": 0.005, "STEPSIZE": 1000, "MAX_ITERS": 4, "DISPLAY": 2},
        DEVICE="cpu",
    )
    return C.override(cfg, **sections) if sections else cfg


@pytest.fixture
def tiny_config() -> C.Config:
    return tiny_cfg()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's small ops on one thread: on 2 shared cores OpenMP barriers cost more than they save."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random-init checkpoint and its export, shared across modules (built once per session)."""
    from frcnn_trt.export.testing import tiny_export

    return tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny")
