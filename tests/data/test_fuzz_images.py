"""Fuzzing the image readers: any bytes as an image file end in a valid array or an ImageError naming the file --
never another exception, never a hang, never a large allocation (the pixel budget is checked before decoding)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from frcnn_trt.data.image_check import ImageRecord, check_images, probe_image
from frcnn_trt.data.images import read_header, read_image
from frcnn_trt.errors import ImageError

BUDGET = 1 << 20  # one megapixel: a fuzzed header claiming more is refused before any decode
SECONDS = 2.0  # per input, all readers together (measured well under 0.1 s)


def _seeds() -> list[bytes]:
    """Small valid files of every format a dataset holds, to mutate."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    out = []
    for fmt, img, extra in (
        ("PNG", rgb, {}),
        ("JPEG", rgb, {"quality": 80}),
        ("GIF", rgb.convert("P"), {}),
        ("BMP", rgb, {}),
        ("TIFF", rgb, {}),
        ("TIFF", Image.fromarray(rng.random((6, 7)).astype(np.float32) * 255, mode="F"), {}),
        ("PNG", Image.fromarray(rng.integers(0, 65535, (5, 6), dtype=np.uint16)), {}),
        ("WEBP", rgb, {"quality": 80}),
    ):
        buf = io.BytesIO()
        exif = img.getexif()
        exif[0x0112] = 6
        img.save(buf, format=fmt, **({**extra, "exif": exif} if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else extra))
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_images")


def check_all_readers(data: bytes, folder: Path) -> None:
    """Every image reader on ``data``: a valid result or an ImageError naming the file, within ``SECONDS``."""
    path = folder / "fuzz.img"
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        header = read_header(path)
        assert header.width > 0 and header.height > 0 and 1 <= header.orientation <= 8
    except ImageError as exc:
        assert str(path) in str(exc)
    try:
        im = read_image(path, max_pixels=BUDGET)
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 and im.flags.c_contiguous
        assert im.shape[0] * im.shape[1] <= BUDGET
    except ImageError as exc:
        assert str(path) in str(exc)
    facts = probe_image(path, "full", BUDGET)
    assert bool(facts.error) != (facts.header is not None and (facts.full or facts.header.pixels > BUDGET))
    report = check_images([ImageRecord("x", path, 16, 12), ImageRecord("y", path)], mode="full", max_pixels=BUDGET)
    assert len(report.sizes) == 2
    assert time.perf_counter() - t0 < SECONDS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes(fuzz_dir: Path, data: bytes) -> None:
    check_all_readers(data, fuzz_dir)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255), st.sampled_from(["set", "insert", "delete"])),
                   min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_mutated_valid_images(fuzz_dir: Path, seed: int, edits: list[tuple[float, int, str]], cut: float | None
                              ) -> None:
    data = bytearray(SEEDS[seed])
    for where, value, op in edits:
        i = min(int(where * len(data)), len(data) - 1)
        if op == "set":
            data[i] = value
        elif op == "insert":
            data.insert(i, value)
        elif len(data) > 1:
            del data[i]
    if cut is not None:
        data = data[: int(cut * len(data))]
    check_all_readers(bytes(data), fuzz_dir)


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_every_seed_reads(fuzz_dir: Path, index: int) -> None:
    path = fuzz_dir / f"seed{index}.img"
    path.write_bytes(SEEDS[index])
    assert read_image(path).shape[2] == 3
    assert not probe_image(path, "full", BUDGET).error
