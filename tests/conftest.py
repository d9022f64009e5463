"""Fixtures shared across the suite: a small synthetic dataset and a tiny-net config (nothing downloaded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from frcnn_trt import config as C
from tests.helpers import tiny_cfg


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 small synthetic images (12 trainval, 4 test), made once per session."""
    from frcnn_trt.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synth") / "shapes"
    make_synthetic_dataset(out, num_images=16, image_size=(160, 120), seed=1)
    return out


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
    from tests.helpers import tiny_export

    return tiny_export(tmp_path_factory.getbasetemp() / "frcnn_tiny")
