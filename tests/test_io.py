"""Atomic writes keep the umask's permissions: checkpoints, exports and caches are readable by other users."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from frcnn_trt.io import atomic_write_bytes, atomic_write_json, atomic_write_text, current_umask


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing(umask022: None) -> None:
    assert current_umask() == 0o022
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int, expected: int) -> None:
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_text(tmp_path / "b.txt", "x")
        atomic_write_json(tmp_path / "c.json", {"x": 1})
    finally:
        os.umask(old)
    for name in ("a.bin", "b.txt", "c.json"):
        assert _mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]  # no temporary left


def test_checkpoint_export_and_caches_are_0644(tmp_path: Path, umask022: None, synth_dir: Path) -> None:
    from frcnn_trt.data.factory import get_imdb
    from frcnn_trt.data.roidb import build_training_roidb_from_config
    from tests.helpers import tiny_cfg, tiny_export

    ckpt, export_dir = tiny_export(tmp_path / "model", parity=False)
    written = [ckpt, ckpt.with_suffix(".json"), *export_dir.rglob("*")]
    build_training_roidb_from_config(get_imdb(f"voc:{synth_dir}:trainval"), tiny_cfg(), cache_dir=tmp_path / "cache")
    caches = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert caches, "the roidb cache wrote nothing"
    files = [p for p in [*written, *caches] if p.is_file()]
    assert {p.name for p in files} >= {"export.json", "rpn.onnx", "detector.onnx", ckpt.name}
    wrong = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files if _mode(p) != 0o644}
    assert not wrong, f"files not 0644 under umask 022: {wrong}"
