"""The image check at roidb build time: every fault class a skip with its reason, EXIF sizes, budget, cache."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_trt.data import image_check, images
from frcnn_trt.data.image_check import ImageRecord, check_images, image_cache_file, probe_image
from frcnn_trt.data.images import read_header, read_image
from frcnn_trt.data.imdb import ImageAnnotation
from frcnn_trt.data.roidb import build_training_roidb
from frcnn_trt.errors import ConfigError, DatasetError, ImageError


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _jpeg(path: Path, w: int = 40, h: int = 30, orientation: int | None = None) -> Path:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    exif = img.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)
    return path


def _float_tiff(path: Path, nan: bool) -> Path:
    arr = np.full((8, 10), 100.0, dtype=np.float32)
    if nan:
        arr[3, 4] = np.nan
    Image.fromarray(arr, mode="F").save(path, format="TIFF")
    return path


@pytest.fixture()
def corpus(tmp_path: Path) -> dict[str, Path]:
    """One file per fault class, plus good images."""
    d = tmp_path / "img"
    d.mkdir()
    good = _jpeg(d / "good.jpg")
    full = good.read_bytes()
    (d / "empty.jpg").write_bytes(b"")
    (d / "cut_header.jpg").write_bytes(full[:20])
    (d / "cut_data.jpg").write_bytes(full[: len(full) // 2])
    (d / "text.jpg").write_text("this is not an image\n")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (d / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (d / "big.png").write_bytes(png_claiming(9000, 9000))
    os.mkfifo(d / "fifo.jpg")
    return {
        "good": good,
        "nan": _float_tiff(d / "nan.tif", nan=True),
        "float_ok": _float_tiff(d / "float_ok.tif", nan=False),
        "rotated": _jpeg(d / "rotated.jpg", 40, 30, orientation=6),
        **{p.stem: p for p in d.iterdir() if p.stem not in ("good", "nan", "float_ok", "rotated")},
    }


def _records(corpus: dict[str, Path], **sizes: tuple[int, int]) -> list[ImageRecord]:
    return [ImageRecord(name, path, *sizes.get(name, (0, 0))) for name, path in sorted(corpus.items())]


def test_header_mode_skips_every_unreadable_file_and_keeps_the_good(corpus: dict[str, Path]) -> None:
    records = _records(corpus)
    report = check_images(records, mode="header")
    reasons = {s.image_id: s.reason for s in report.skipped}
    assert set(reasons) == {"empty", "cut_header", "text", "corrupt", "bomb", "big", "fifo"}
    assert "empty (0 bytes)" in reasons["empty"]
    assert "not an image" in reasons["text"] and "not an image" in reasons["corrupt"]
    assert "FIFO" in reasons["fifo"]
    assert "too large" in reasons["bomb"]
    assert "81.0 megapixels, over the decoded-pixel budget of 64.0" in reasons["big"]
    sizes = dict(zip([r.image_id for r in records], report.sizes, strict=True))
    assert sizes["good"] == (40, 30) and sizes["cut_data"] == (40, 30) and sizes["nan"] == (10, 8)
    assert all(str(s).startswith(f"skipped: {s.file}: ") for s in report.skipped)
    assert report.skipped[0].issue().kind == "bad_image"


def test_full_mode_also_catches_truncated_data_and_nan_pixels(corpus: dict[str, Path]) -> None:
    report = check_images(_records(corpus), mode="full")
    reasons = {s.image_id: s.reason for s in report.skipped}
    assert "truncated or corrupt" in reasons["cut_data"]
    assert "NaN/inf" in reasons["nan"]
    assert "float_ok" not in reasons and "good" not in reasons and "rotated" not in reasons


def test_pixel_budget_is_configurable(corpus: dict[str, Path]) -> None:
    recs = [ImageRecord("good", corpus["good"])]
    assert check_images(recs, max_pixels=1199).sizes == [None]
    assert check_images(recs, max_pixels=1200).sizes == [(40, 30)]
    with pytest.raises(ConfigError):
        check_images(recs, mode="thorough")


def test_annotation_size_mismatch_and_exif_displayed_size(corpus: dict[str, Path]) -> None:
    recs = [
        ImageRecord("same", corpus["good"], 40, 30),
        ImageRecord("wrong", corpus["good"], 41, 30),
        ImageRecord("stored", corpus["rotated"], 40, 30),  # py-faster-rcnn's convention: the stored pixels
        ImageRecord("displayed", corpus["rotated"], 30, 40),  # the annotator saw the rotated image
        ImageRecord("swapped_no_exif", corpus["good"], 30, 40),
    ]
    report = check_images(recs)
    assert report.sizes == [(40, 30), None, (40, 30), (30, 40), None]
    assert "40x30 but its annotation says 41x30" in report.skipped[0].reason
    # read_image agrees with the check: stored orientation, or transposed as displayed
    stored = read_image(corpus["rotated"], expect_size=(40, 30))
    shown = read_image(corpus["rotated"], expect_size=(30, 40))
    assert stored.shape == (30, 40, 3) and shown.shape == (40, 30, 3)
    expected = np.asarray(Image.open(corpus["rotated"]).transpose(Image.Transpose.ROTATE_270))[:, :, ::-1]
    np.testing.assert_array_equal(shown, expected)
    with pytest.raises(ImageError, match="annotation says 30x40"):
        read_image(corpus["good"], expect_size=(30, 40))
    assert read_header(corpus["rotated"]).orientation == 6


def test_read_image_budget_refuses_before_decoding(corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(*_: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(images, "_decode", no_decode)
    with pytest.raises(ImageError, match=r"big\.png: image is 9000x9000 .* over the decoded-pixel budget"):
        read_image(corpus["big"])
    with pytest.raises(ImageError, match=r"bomb\.png: image too large"):
        read_image(corpus["bomb"], max_pixels=None)
    with pytest.raises(ImageError, match="regular file, this is a FIFO"):
        read_image(corpus["fifo"])


def test_cache_answers_unchanged_files_and_rechecks_a_changed_one(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = image_cache_file(tmp_path / "cache", "x:y")
    (tmp_path / "cache").mkdir()
    opened: list[Path] = []
    real = image_check.read_header

    def counting(path: Path) -> images.ImageHeader:
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(image_check, "read_header", counting)
    records = _records(corpus)
    first = check_images(records, cache_file=cache)
    assert first.opened == len(records) and cache.exists()
    opened.clear()
    second = check_images(records, cache_file=cache)
    # every regular file is answered by the cache; the FIFO is never cached (nor opened: refused by its stat)
    assert second.opened == 1 and opened == [corpus["fifo"]]
    assert second.signature() == first.signature()
    corpus["good"].write_bytes(b"")  # the file changes: checked again, now skipped
    opened.clear()
    third = check_images(records, cache_file=cache)
    assert corpus["good"] in opened and third.opened == 2
    assert "good" in {s.image_id for s in third.skipped} and third.signature() != first.signature()
    # a full check needs decodes the header cache cannot answer
    assert check_images(records, cache_file=cache, mode="full").opened > 2
    cache.write_text('{"format": "frcnn_trt.image_check", "version": 1, "files": {"a": [1, 2]}}')
    assert check_images(records, cache_file=cache).opened == len(records)  # malformed rows ignored
    cache.write_text("[" * 100_000)
    assert check_images(records, cache_file=cache).opened == len(records)  # an unreadable cache is not fatal


class _Imdb:
    name = "fake_images"
    num_classes = 2

    def __init__(self, anns: list[ImageAnnotation]) -> None:
        self.anns = anns
        self.calls = 0

    def annotations(self) -> list[ImageAnnotation]:
        self.calls += 1
        return self.anns

    def fingerprint(self) -> str:
        return "v1"


def _ann(image_id: str, path: Path, w: int, h: int) -> ImageAnnotation:
    return ImageAnnotation(image_id, path, w, h, np.array([[1, 1, 6, 6]], dtype=np.float32),
                           np.array([1], dtype=np.int64))


def test_build_training_roidb_skips_bad_images_and_keeps_the_rest(corpus: dict[str, Path], tmp_path: Path) -> None:
    anns = [_ann("good", corpus["good"], 40, 30), _ann("text", corpus["text"], 40, 30),
            _ann("wrong", corpus["good"], 50, 30), _ann("rot", corpus["rotated"], 30, 40),
            _ann("nosize", corpus["float_ok"], 0, 0)]
    imdb = _Imdb(anns)
    res = build_training_roidb(imdb, use_flipped=True, bbox_reg=False, cache_dir=tmp_path / "cache")
    assert sorted({e.image_id for e in res.entries}) == ["good", "nosize", "rot"]
    assert {(e.image_id, e.width, e.height) for e in res.entries} >= {("rot", 30, 40), ("nosize", 10, 8)}
    skipped = {r[0]: r[2] for r in res.removed}
    assert skipped["text"].startswith(f"{corpus['text']}: not an image")
    assert "annotation says 50x30" in skipped["wrong"]
    # a second run: the roidb and the image checks come from the cache, nothing is opened or parsed
    again = build_training_roidb(imdb, use_flipped=True, bbox_reg=False, cache_dir=tmp_path / "cache")
    assert again.from_cache and imdb.calls == 1
    # an image that goes bad after the cache was written: found by the (stat-keyed) check, the roidb rebuilt
    corpus["rotated"].write_bytes(corpus["rotated"].read_bytes()[:10])
    rebuilt = build_training_roidb(imdb, use_flipped=True, bbox_reg=False, cache_dir=tmp_path / "cache")
    assert not rebuilt.from_cache and imdb.calls == 2
    assert sorted({e.image_id for e in rebuilt.entries}) == ["good", "nosize"]
    with pytest.raises(DatasetError, match=r"no usable training images.*not an image"):
        build_training_roidb(_Imdb([_ann("text", corpus["text"], 40, 30)]), bbox_reg=False)


def test_probe_never_raises_for_a_bad_file(tmp_path: Path) -> None:
    for data in (b"", b"\xff\xd8\xff", b"GIF89a" + b"\xff" * 30, b"BM" + b"\0" * 60, b"II*\0" + b"\xff" * 40):
        p = tmp_path / "x.bin"
        p.write_bytes(data)
        facts = probe_image(p, "full", 1 << 20)
        assert facts.error and not facts.full, data
    assert probe_image(tmp_path / "missing.jpg", "header", 10).error.endswith("not found")
    buf = io.BytesIO()
    Image.new("RGB", (3, 2)).save(buf, format="PNG")
    (tmp_path / "ok.png").write_bytes(buf.getvalue())
    assert probe_image(tmp_path / "ok.png", "full", 100).full
